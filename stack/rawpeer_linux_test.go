package stack_test

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/ipipstack/ipipstack/internal/netnstest"
	"golang.org/x/sys/unix"
)

// sendIPIP sends inner as IP protocol 4 from src to dst inside ns, with
// the outer header the kernel writes.
func sendIPIP(t *testing.T, ns *netnstest.NS, src, dst netip.Addr, inner []byte) {
	t.Helper()
	err := ns.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_IPIP)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: src.As4()}); err != nil {
			return fmt.Errorf("bind %v: %w", src, err)
		}
		return unix.Sendto(fd, inner, 0, &unix.SockaddrInet4{Addr: dst.As4()})
	})
	if err != nil {
		t.Fatalf("send IPIP %v -> %v in %s: %v", src, dst, ns.Name(), err)
	}
}
