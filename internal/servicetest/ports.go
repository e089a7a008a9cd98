package servicetest

import (
	"fmt"
	"net"
	"os"
	"sync/atomic"
	"testing"
)

// FreePort returns a port on 127.0.0.1 that is free for both TCP and UDP
// and that no other call in this process has returned, for a process or
// tunnel that must know its peer's port before either binds.
//
// Ports the kernel hands out for port 0 (and for every outgoing
// connection) come from the ephemeral range, 32768-60999 by default: one
// freed here could be taken by another test's connection before the
// process under test binds it, and two calls in a row can get the same
// one. Ports below that range are handed out only from here, each once
// per test binary, and checked free.
func FreePort(t testing.TB) int {
	t.Helper()
	for range 2000 {
		port := int(portBase + nextPort.Add(1)%8000)
		if bindable(port) {
			return port
		}
	}
	t.Fatal("servicetest: no free port below the ephemeral range")
	return 0
}

// portBase spreads the ports of concurrent test binaries (one per package
// run) over 20000-32000, below the ephemeral range.
var (
	portBase = uint32(20000 + os.Getpid()%100*40)
	nextPort atomic.Uint32
)

// bindable reports whether 127.0.0.1:port can be bound for TCP and UDP.
func bindable(port int) bool {
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	ln, err := net.Listen("tcp4", addr)
	if err != nil {
		return false
	}
	defer ln.Close()
	pc, err := net.ListenPacket("udp4", addr)
	if err != nil {
		return false
	}
	pc.Close()
	return true
}
