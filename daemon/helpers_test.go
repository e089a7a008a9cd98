package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/config"
	"github.com/ipipstack/ipipstack/internal/servicetest"
)

// freeUDPPort returns a UDP port on 127.0.0.1 that no other call returned
// (servicetest.FreePort). Tunnels need their peer's port before either is
// bound, so tests cannot use port 0 for them.
func freeUDPPort(t testing.TB) uint16 {
	t.Helper()
	return uint16(servicetest.FreePort(t))
}

// testLogger logs to the test's output and, if buf is not nil, to buf.
func testLogger(t testing.TB, buf *servicetest.LogBuffer) *slog.Logger {
	var w io.Writer = t.Output()
	if buf != nil {
		w = io.MultiWriter(w, buf)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// pair is two daemons, A and B, joined by a UDP tunnel over loopback, as
// in examples/two-peers-{a,b}.hcl but with every host listener on port 0.
type pair struct {
	a, b *Daemon
	// Host services behind B's reverse forwards.
	tcpTarget net.Listener
	udpTarget net.PacketConn
}

// pairOptions tune newPair.
type pairOptions struct {
	aTunnel    string // extra attributes for A's tunnel block
	drain      time.Duration
	serveTCP   func(net.Conn) // B's host TCP service; default echo
	logBufferA *servicetest.LogBuffer
}

// newPair starts the daemons; they are shut down by t.Cleanup unless the
// test does it first.
func newPair(t *testing.T, po pairOptions) *pair {
	t.Helper()
	pa, pb := freeUDPPort(t), freeUDPPort(t)
	p := &pair{}
	var err error
	p.tcpTarget, err = net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serve := po.serveTCP
	if serve == nil {
		serve = func(c net.Conn) { io.Copy(c, c) }
	}
	var hostWG sync.WaitGroup
	var connsMu sync.Mutex
	var conns []net.Conn
	hostWG.Go(func() {
		for {
			c, err := p.tcpTarget.Accept()
			if err != nil {
				return
			}
			connsMu.Lock()
			conns = append(conns, c)
			connsMu.Unlock()
			hostWG.Go(func() { defer c.Close(); serve(c) })
		}
	})
	p.udpTarget, err = net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hostWG.Go(func() {
		buf := make([]byte, 65536)
		for {
			n, addr, err := p.udpTarget.ReadFrom(buf)
			if err != nil {
				return
			}
			p.udpTarget.WriteTo(buf[:n], addr)
		}
	})
	t.Cleanup(func() {
		p.tcpTarget.Close()
		p.udpTarget.Close()
		connsMu.Lock()
		for _, c := range conns {
			c.Close()
		}
		connsMu.Unlock()
		hostWG.Wait()
	})

	cfgB := parse(t, fmt.Sprintf(`
tunnel "a" {
  local     = "127.0.0.1:%d"
  remote    = "127.0.0.1:%d"
  addresses = ["10.99.0.2/30", "fd99::2/64"]
}
reverse "web" {
  listen = "10.99.0.2:80"
  target = "%s"
}
reverse "echo" {
  protocol = "udp"
  listen   = "0.0.0.0:7"
  target   = "%s"
}`, pb, pa, p.tcpTarget.Addr(), p.udpTarget.LocalAddr()))
	cfgA := parse(t, fmt.Sprintf(`
status {
  listen = "127.0.0.1:1"
}
tunnel "b" {
  local     = "127.0.0.1:%d"
  remote    = "127.0.0.1:%d"
  addresses = ["10.99.0.1/30", "fd99::1/64"]
  %s
}
forward "web" {
  listen = "127.0.0.1:2"
  target = "10.99.0.2:80"
}
forward "echo" {
  protocol = "udp"
  listen   = "127.0.0.1:3"
  target   = "10.99.0.2:7"
}
socks5 "proxy" {
  listen = "127.0.0.1:4"
}`, pa, pb, po.aTunnel))
	// Port 0 everywhere on the host side: config requires a port, the
	// services accept 0.
	loop0 := netip.MustParseAddrPort("127.0.0.1:0")
	cfgA.Status.Listen = loop0
	cfgA.Forwards[0].Listen, cfgA.Forwards[1].Listen, cfgA.SOCKS5[0].Listen = loop0, loop0, loop0

	p.b = startDaemon(t, cfgB, Options{Logger: testLogger(t, nil).With("peer", "B"), DrainTimeout: po.drain})
	p.a = startDaemon(t, cfgA, Options{Logger: testLogger(t, po.logBufferA).With("peer", "A"), DrainTimeout: po.drain})
	return p
}

// startDaemon starts a daemon and shuts it down at cleanup.
func startDaemon(t *testing.T, cfg *config.Config, opts Options) *Daemon {
	t.Helper()
	d, err := Start(t.Context(), cfg, opts)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := d.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return d
}

// svcStatus returns the status of d's service of the given kind and name.
func svcStatus(t testing.TB, d *Daemon, kind, name string) ServiceStatus {
	t.Helper()
	for _, s := range d.Status().Services {
		if s.Kind == kind && s.Name == name {
			return s
		}
	}
	t.Fatalf("no %s %q in %+v", kind, name, d.Status().Services)
	return ServiceStatus{}
}

// waitFor polls cond every 10ms until it holds or timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// checkGoroutines fails t if more goroutines are running than at the
// start of the test once everything has had time to exit.
func checkGoroutines(t *testing.T) {
	t.Helper()
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() > before {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				buf = buf[:runtime.Stack(buf, true)]
				t.Errorf("%d goroutines left running, %d before the test:\n%s", runtime.NumGoroutine(), before, buf)
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

// isClosedErr reports whether err says the connection was closed under us.
func isClosedErr(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || strings.Contains(err.Error(), "reset") ||
		strings.Contains(err.Error(), "broken pipe")
}
