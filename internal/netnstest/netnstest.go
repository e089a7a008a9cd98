//go:build linux

// Package netnstest gives tests throwaway Linux network namespaces, so that
// privileged tests (TUN devices, veth pairs, routes, raw sockets, kernel
// programs such as ping and curl) never touch the host's own network.
//
// # Usage
//
//	func TestX(t *testing.T) {
//		netnstest.Privileged(t)
//		ns := netnstest.New(t)
//		ns.Run(t, "ip", "link", "set", "lo", "up")
//		err := ns.Do(func() error {
//			// Sockets, devices and netlink sockets made here belong to ns.
//			return nil
//		})
//		if err != nil {
//			t.Fatal(err)
//		}
//		out := ns.Run(t, "ping", "-c", "1", "127.0.0.1")
//		_ = out
//	}
//
// A namespace is made with `ip netns add` (Debian package iproute2) and
// deleted by t.Cleanup, also when the test fails. Register what must be
// torn down inside the namespace (devices, stacks) after calling New, so
// that it is cleaned up first.
package netnstest

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"unicode/utf8"

	"golang.org/x/sys/unix"
)

// EnvPrivileged is the environment variable that CI sets to "1": then the
// tests that Privileged or Program would skip fail instead.
const EnvPrivileged = "IPIPSTACK_PRIVILEGED"

// netnsDir is where `ip netns add` mounts named namespaces (iproute2's
// NETNS_RUN_DIR).
const netnsDir = "/var/run/netns"

func required() bool { return os.Getenv(EnvPrivileged) == "1" }

// Privileged skips the test unless it runs as root; with
// IPIPSTACK_PRIVILEGED=1 it fails it instead.
func Privileged(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if required() {
		t.Fatalf("netnstest: %s=1 but the test does not run as root (euid %d)", EnvPrivileged, os.Geteuid())
	}
	t.Skipf("netnstest: needs root (network namespaces); set %s=1 to make this a failure", EnvPrivileged)
}

// Program returns the path of the named program. When it is not installed
// the test is skipped, or fails with IPIPSTACK_PRIVILEGED=1; pkg names the
// Debian package that provides it, for the message.
func Program(t testing.TB, name, pkg string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err == nil {
		return path
	}
	if required() {
		t.Fatalf("netnstest: %s is not installed (Debian package %s) and %s=1", name, pkg, EnvPrivileged)
	}
	t.Skipf("netnstest: %s is not installed (Debian package %s)", name, pkg)
	return ""
}

// NS is a network namespace made for one test. Its methods may be called
// from any goroutine; Run only from the test's.
type NS struct {
	name string
	ip   string // path of the ip program
	fd   int    // the namespace, for setns(2)
}

var seq atomic.Uint64

// New makes a network namespace with a name unique to this process and
// registers its deletion with t.Cleanup. The namespace starts with only a
// loopback device, down.
func New(t testing.TB) *NS {
	t.Helper()
	ip := Program(t, "ip", "iproute2")
	name := fmt.Sprintf("ipipstack-test-%d-%d", os.Getpid(), seq.Add(1))
	if out, err := exec.Command(ip, "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("netnstest: ip netns add %s: %v: %s", name, err, bytes.TrimSpace(out))
	}
	t.Cleanup(func() {
		if out, err := exec.Command(ip, "netns", "delete", name).CombinedOutput(); err != nil {
			t.Errorf("netnstest: ip netns delete %s: %v: %s", name, err, bytes.TrimSpace(out))
		}
	})
	fd, err := unix.Open(netnsDir+"/"+name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("netnstest: open namespace %s: %v", name, err)
	}
	t.Cleanup(func() { unix.Close(fd) }) // runs before the deletion above
	return &NS{name: name, ip: ip, fd: fd}
}

// Name returns the namespace's name, as `ip netns` knows it.
func (ns *NS) Name() string { return ns.name }

// Command returns a command that runs cmd inside the namespace
// (`ip netns exec NAME cmd...`), for callers that expect it to fail or
// want its exit status.
func (ns *NS) Command(cmd ...string) *exec.Cmd {
	return exec.Command(ns.ip, append([]string{"netns", "exec", ns.name}, cmd...)...)
}

// Run runs cmd inside the namespace and returns its standard output. The
// test fails if cmd cannot start or exits with an error; the message
// carries cmd's standard error.
func (ns *NS) Run(t testing.TB, cmd ...string) string {
	t.Helper()
	c := ns.Command(cmd...)
	var stderr bytes.Buffer
	c.Stderr = &stderr
	out, err := c.Output()
	if err != nil {
		t.Fatalf("netnstest: in %s: %s: %v\nstdout: %s\nstderr: %s", ns.name, strings.Join(cmd, " "),
			err, clip(out), clip(stderr.Bytes()))
	}
	return string(out)
}

// clip shortens a command's output for an error message: its last 2 KiB,
// quoted if it is not text.
func clip(b []byte) string {
	const max = 2 << 10
	b = bytes.TrimSpace(b)
	prefix := ""
	if len(b) > max {
		b, prefix = b[len(b)-max:], fmt.Sprintf("[%d bytes cut] ", len(b)-max)
	}
	if !utf8.Valid(b) {
		return prefix + strconv.Quote(string(b))
	}
	return prefix + string(b)
}

// Do runs fn on a goroutine locked to an OS thread that setns(2) has moved
// into the namespace, waits for it and returns its error. Sockets, TUN
// devices and netlink sockets that fn creates belong to the namespace and
// stay there; goroutines that fn starts run in the test's own namespace,
// which is fine for using descriptors fn made. Afterwards the thread is
// moved back, or discarded if that fails.
//
// fn runs on another goroutine, so it must not call t.FailNow (t.Fatal);
// a panic in fn is raised again in the caller.
func (ns *NS) Do(fn func() error) error {
	type result struct {
		err      error
		panicked bool
		value    any
	}
	done := make(chan result, 1)
	go func() {
		// The thread is unlocked only once it is back in its namespace;
		// a goroutine that exits locked takes its thread with it.
		runtime.LockOSThread()
		r := result{err: errors.New("netnstest: fn called runtime.Goexit (t.FailNow?) inside Do")}
		defer func() { done <- r }()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			r.err = fmt.Errorf("netnstest: open own namespace: %w", err)
			return
		}
		defer unix.Close(orig)
		if err := unix.Setns(ns.fd, unix.CLONE_NEWNET); err != nil {
			r.err = fmt.Errorf("netnstest: setns %s: %w", ns.name, err)
			return
		}
		defer func() {
			if unix.Setns(orig, unix.CLONE_NEWNET) == nil {
				runtime.UnlockOSThread()
			}
		}()
		defer func() {
			if v := recover(); v != nil {
				r = result{panicked: true, value: v}
			}
		}()
		r.err = fn()
	}()
	r := <-done
	if r.panicked {
		panic(r.value)
	}
	return r.err
}
