package stack_test

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/stack"
)

// TestTCPKeepaliveEndsConnectionToRestartedPeer: a connection that only
// waits for data, whose peer is killed and restarted (same outer and
// inner addresses, no connection state), ends with an error once the
// keepalive probes are answered with a reset, on the dialing side and on
// the accepting side alike. Without keepalive it would wait forever.
func TestTCPKeepaliveEndsConnectionToRestartedPeer(t *testing.T) {
	for _, side := range []string{"dialed", "accepted"} {
		t.Run(side, func(t *testing.T) {
			pa, pb := freeUDPPort(t, "127.0.0.1"), freeUDPPort(t, "127.0.0.1")
			ta := stack.Tunnel{Name: "to-b", Local: pa, Remote: pb, Addresses: []netip.Prefix{addrA}}
			tb := stack.Tunnel{Name: "to-a", Local: pb, Remote: pa, Addresses: []netip.Prefix{addrB}}
			a, err := stack.New(stack.Config{Tunnels: []stack.Tunnel{ta}, TCP: stack.TCPOptions{Keepalive: time.Second}})
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			b, err := stack.New(stack.Config{Tunnels: []stack.Tunnel{tb}})
			if err != nil {
				t.Fatal(err)
			}
			// A's end of the connection, which has keepalive.
			var c net.Conn
			if side == "dialed" {
				ln, err := b.Listen("tcp", "10.99.0.2:7000")
				if err != nil {
					t.Fatal(err)
				}
				go func() {
					if c, err := ln.Accept(); err == nil {
						defer c.Close()
						io.Copy(io.Discard, c)
					}
				}()
				if c, err = a.Dial("tcp", "10.99.0.2:7000"); err != nil {
					t.Fatal(err)
				}
			} else {
				ln, err := a.Listen("tcp", "10.99.0.1:7000")
				if err != nil {
					t.Fatal(err)
				}
				defer ln.Close()
				bc, err := b.Dial("tcp", "10.99.0.1:7000")
				if err != nil {
					t.Fatal(err)
				}
				defer bc.Close()
				if c, err = ln.Accept(); err != nil {
					t.Fatal(err)
				}
			}
			defer c.Close()
			// Kill B and start it again without the connection.
			b.Close()
			b2, err := stack.New(stack.Config{Tunnels: []stack.Tunnel{tb}})
			if err != nil {
				t.Fatal(err)
			}
			defer b2.Close()
			// Idle 1 s, then probes every second: the first is answered
			// with a reset. 30 s is a safety net, not a measurement.
			c.SetReadDeadline(time.Now().Add(30 * time.Second))
			_, err = c.Read(make([]byte, 1))
			var ne net.Error
			if err == nil || errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("Read on a connection to a restarted peer = %v, want a reset before the deadline", err)
			}
			t.Logf("Read = %v", err)
		})
	}
}
