//go:build linux

package netnstest_test

import (
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/ipipstack/ipipstack/internal/netnstest"
	"golang.org/x/sys/unix"
)

// nsIno returns the inode of the network namespace at path.
func nsIno(t *testing.T, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

func TestNS(t *testing.T) {
	netnstest.Privileged(t)
	ns := netnstest.New(t)
	want := nsIno(t, "/var/run/netns/"+ns.Name())
	own := nsIno(t, "/proc/self/ns/net")
	if want == own {
		t.Fatalf("namespace %s is the test's own", ns.Name())
	}

	var inside uint64
	if err := ns.Do(func() error {
		var st unix.Stat_t
		if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
			return err
		}
		inside = st.Ino
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if inside != want {
		t.Errorf("Do ran in namespace inode %d, want %d", inside, want)
	}

	// Only lo, and down, in a new namespace.
	if out := ns.Run(t, "ip", "-o", "link", "show"); strings.Count(out, "\n") != 1 || !strings.Contains(out, "lo:") {
		t.Errorf("ip link show in a new namespace = %q, want lo alone", out)
	}
	ns.Run(t, "ip", "link", "set", "lo", "up")
	if err := ns.Command("ip", "link", "show", "nonexistent0").Run(); err == nil {
		t.Errorf("Command(ip link show nonexistent0).Run() = nil, want an error")
	}

	errFn := errors.New("from fn")
	if err := ns.Do(func() error { return errFn }); err != errFn {
		t.Errorf("Do(returning %v) = %v", errFn, err)
	}
	func() {
		defer func() {
			if v := recover(); v != "boom" {
				t.Errorf("Do(panicking) raised %v, want boom", v)
			}
		}()
		ns.Do(func() error { panic("boom") })
	}()
	if got := nsIno(t, "/proc/thread-self/ns/net"); got != own {
		t.Errorf("the test's thread is in namespace inode %d after Do, want %d", got, own)
	}
}

// TestCleanupAfterGoexit checks that a test ended early still deletes its
// namespace: SkipNow ends it with runtime.Goexit exactly as FailNow does,
// without failing this test.
func TestCleanupAfterGoexit(t *testing.T) {
	netnstest.Privileged(t)
	var name string
	t.Run("ends early", func(t *testing.T) {
		name = netnstest.New(t).Name()
		t.SkipNow()
	})
	if _, err := os.Stat("/var/run/netns/" + name); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("namespace %s survives its test: %v", name, err)
	}
}
