package forward

import (
	"context"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/internal/servicetest"
	"github.com/ipipstack/ipipstack/service"
)

// listenTCP listens on a free loopback port and closes it on cleanup.
func listenTCP(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// serveTCP accepts connections on ln and runs handle on each in its own
// goroutine until cleanup, which closes ln and every accepted conn and waits.
func serveTCP(t testing.TB, ln net.Listener, handle func(net.Conn)) {
	t.Helper()
	done := make(chan struct{})
	conns := make(chan net.Conn, 64)
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			select {
			case conns <- c:
			default:
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		for {
			select {
			case c := <-conns:
				c.Close()
			default:
				return
			}
		}
	})
}

// readAllTimeout reads c until EOF, failing on a hang.
func readAllTimeout(t testing.TB, c net.Conn, d time.Duration) ([]byte, error) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(d))
	return io.ReadAll(c)
}

// familyOnly is the host network, but like the tunnel stack it refuses the
// dual-stack "tcp" and "udp" networks and wants "tcp4", "udp6" and so on.
type familyOnly struct{ service.Host }

func (n familyOnly) check(network string) error {
	if network == "tcp" || network == "udp" {
		return fmt.Errorf("familyOnly: %q needs an address family", network)
	}
	return nil
}

func (n familyOnly) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	if err := n.check(network); err != nil {
		return nil, err
	}
	return n.Host.DialContext(ctx, network, address)
}

func (n familyOnly) Listen(network, address string) (net.Listener, error) {
	if err := n.check(network); err != nil {
		return nil, err
	}
	return n.Host.Listen(network, address)
}

func (n familyOnly) ListenPacket(network, address string) (net.PacketConn, error) {
	if err := n.check(network); err != nil {
		return nil, err
	}
	return n.Host.ListenPacket(network, address)
}

// The helpers shared with the other service packages' tests.
var (
	checkNoLeaks = servicetest.CheckNoLeaks
	waitFor      = servicetest.WaitFor
	udpEcho      = servicetest.UDPEcho
)
