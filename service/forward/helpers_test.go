package forward

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/service"
)

// checkNoLeaks fails t if goroutines running this module's service code
// (not test code) are still alive after a short grace period. Tests in this
// package do not run in parallel, so any such goroutine is a leak.
func checkNoLeaks(t testing.TB) {
	t.Helper()
	var leaked []string
	for range 100 {
		leaked = serviceGoroutines()
		if len(leaked) == 0 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Errorf("%d goroutines leaked:\n%s", len(leaked), strings.Join(leaked, "\n\n"))
}

func serviceGoroutines() []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var out []string
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		s := string(g)
		if strings.Contains(s, "github.com/ipipstack/ipipstack/service") && !strings.Contains(s, "_test.go") {
			out = append(out, s)
		}
	}
	return out
}

// waitFor polls cond until it holds or 5 s pass.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

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

// udpEcho runs a loopback UDP echo server until cleanup.
func udpEcho(t testing.TB) net.Addr {
	t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65535)
		for {
			n, addr, err := pc.ReadFrom(buf)
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if err != nil {
				continue
			}
			pc.WriteTo(buf[:n], addr)
		}
	}()
	t.Cleanup(func() { pc.Close(); <-done })
	return pc.LocalAddr()
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
