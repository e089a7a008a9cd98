//go:build !linux

package stack_test

import (
	"net/netip"
	"testing"

	"github.com/ipipstack/ipipstack/internal/netnstest"
)

// sendIPIP needs Linux's raw sockets; the namespace tests that call it
// skip elsewhere before they get here.
func sendIPIP(t *testing.T, ns *netnstest.NS, src, dst netip.Addr, inner []byte) {
	t.Helper()
	t.Fatal("sendIPIP needs Linux")
}
