package stack_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/endpoint/encap"
	xfer "github.com/ipipstack/ipipstack/internal/transfer"
	"github.com/ipipstack/ipipstack/stack"
)

// pair is two stacks joined by one tunnel over real loopback UDP sockets.
type pair struct {
	a, b   *stack.Stack
	ta, tb stack.Tunnel
}

var (
	addrA  = netip.MustParsePrefix("10.99.0.1/30")
	addrB  = netip.MustParsePrefix("10.99.0.2/30")
	addrA6 = netip.MustParsePrefix("fd99::1/64")
	addrB6 = netip.MustParsePrefix("fd99::2/64")
)

// freeUDPPort returns a loopback UDP port that was free a moment ago and
// that no other call returned: the kernel can hand out a port it just
// freed again, and two tunnels given the same one would collide.
func freeUDPPort(t testing.TB, host string) netip.AddrPort {
	t.Helper()
	for {
		c, err := net.ListenPacket("udp", net.JoinHostPort(host, "0"))
		if err != nil {
			t.Fatal(err)
		}
		ap := c.LocalAddr().(*net.UDPAddr).AddrPort()
		c.Close()
		if _, dup := handedOut.LoadOrStore(ap, true); !dup {
			return ap
		}
	}
}

// handedOut holds the ports freeUDPPort returned.
var handedOut sync.Map

// newPair builds two stacks over loopback UDP (outer "127.0.0.1" or "::1");
// edit adjusts each side's tunnel (0 is a, 1 is b) before the stacks start.
func newPair(t testing.TB, outer string, edit func(side int, tun *stack.Tunnel)) *pair {
	t.Helper()
	pa, pb := freeUDPPort(t, outer), freeUDPPort(t, outer)
	ta := stack.Tunnel{Name: "to-b", Local: pa, Remote: pb, Addresses: []netip.Prefix{addrA, addrA6}}
	tb := stack.Tunnel{Name: "to-a", Local: pb, Remote: pa, Addresses: []netip.Prefix{addrB, addrB6}}
	if edit != nil {
		edit(0, &ta)
		edit(1, &tb)
	}
	a, err := stack.New(stack.Config{Tunnels: []stack.Tunnel{ta}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	b, err := stack.New(stack.Config{Tunnels: []stack.Tunnel{tb}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return &pair{a: a, b: b, ta: ta, tb: tb}
}

// transfer sends n pseudo-random bytes from one stack to a listener on the
// other over one TCP connection and checks that they arrive byte-exact.
func transfer(t testing.TB, from, to *stack.Stack, listen string, n int64) time.Duration {
	t.Helper()
	return transferMidway(t, from, to, listen, n, nil)
}

// transferMidway is transfer that, once half of the bytes are written,
// runs midway (if not nil) while the rest are written, and fails the test
// if it returns an error. It is internal/transfer's Run, given 3 minutes
// before it counts as a hang.
func transferMidway(t testing.TB, from, to *stack.Stack, listen string, n int64, midway func() error) time.Duration {
	t.Helper()
	d, err := transferErrMidway(from, to, listen, n, 3*time.Minute, midway)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// transferErrMidway runs internal/transfer's Run from one stack to a
// listener at listen on the other, within timeout; it can be called from
// any goroutine.
func transferErrMidway(from, to *stack.Stack, listen string, n int64, timeout time.Duration, midway func() error) (time.Duration, error) {
	ln, err := to.Listen("tcp", listen)
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return xfer.Run(ctx, ln, func(ctx context.Context) (net.Conn, error) {
		return from.DialContext(ctx, "tcp", ln.Addr().String())
	}, n, midway)
}

func transferSize(t testing.TB) int64 {
	if testing.Short() {
		return 4 << 20
	}
	return 64 << 20
}

func TestTCPTransferBothWays(t *testing.T) {
	p := newPair(t, "127.0.0.1", nil)
	n := transferSize(t)
	d := transfer(t, p.a, p.b, "10.99.0.2:5001", n)
	t.Logf("a->b %d MiB in %v (%.2f Gbit/s)", n>>20, d, float64(n)*8/d.Seconds()/1e9)
	d = transfer(t, p.b, p.a, "10.99.0.1:5002", n)
	t.Logf("b->a %d MiB in %v (%.2f Gbit/s)", n>>20, d, float64(n)*8/d.Seconds()/1e9)
	for _, st := range append(p.a.Stats(), p.b.Stats()...) {
		if st.DropTotal() != 0 {
			t.Errorf("%s dropped %v", st.Name, st.Drops)
		}
		if st.RxPackets < uint64(n/1500) || st.TxPackets < uint64(n/1500) {
			t.Errorf("%s counters rx %d tx %d packets, want at least %d", st.Name, st.RxPackets, st.TxPackets, n/1500)
		}
	}
}

func TestInnerIPv6OverOuterIPv4(t *testing.T) {
	p := newPair(t, "127.0.0.1", nil)
	transfer(t, p.a, p.b, "[fd99::2]:5003", 8<<20)
	if _, err := p.a.Ping(context.Background(), addrB6.Addr()); err != nil {
		t.Fatal(err)
	}
}

func TestInnerIPv4OverOuterIPv6(t *testing.T) {
	p := newPair(t, "::1", nil)
	if got := p.a.Stats()[0].MTU; got != 1452 {
		t.Errorf("UDP over IPv6 MTU = %d, want 1452", got)
	}
	transfer(t, p.a, p.b, "10.99.0.2:5004", 8<<20)
	transfer(t, p.b, p.a, "[fd99::1]:5005", 8<<20)
}

func TestUDPEcho(t *testing.T) {
	p := newPair(t, "127.0.0.1", nil)
	for _, addr := range []string{"10.99.0.2:7", "[fd99::2]:7"} {
		t.Run(addr, func(t *testing.T) {
			pc, err := p.b.ListenPacket("udp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer pc.Close()
			go func() {
				buf := make([]byte, 65536)
				for {
					n, from, err := pc.ReadFrom(buf)
					if err != nil {
						return
					}
					pc.WriteTo(buf[:n], from)
				}
			}()
			c, err := p.a.Dial("udp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			for i := 0; i < 5; i++ {
				msg := fmt.Appendf(nil, "echo %d through the tunnel", i)
				if _, err := c.Write(msg); err != nil {
					t.Fatal(err)
				}
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				buf := make([]byte, 100)
				n, err := c.Read(buf)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(buf[:n], msg) {
					t.Fatalf("echo = %q, want %q", buf[:n], msg)
				}
			}
		})
	}
}

func TestPing(t *testing.T) {
	p := newPair(t, "127.0.0.1", nil)
	for _, dst := range []netip.Addr{addrB.Addr(), addrB6.Addr()} {
		before := p.b.Stats()[0].RxPackets
		rtt, err := p.a.Ping(context.Background(), dst)
		if err != nil {
			t.Fatalf("Ping(%v): %v", dst, err)
		}
		if rtt <= 0 || rtt > 5*time.Second {
			t.Errorf("Ping(%v) rtt = %v", dst, rtt)
		}
		if p.b.Stats()[0].RxPackets == before {
			t.Errorf("Ping(%v): peer's rx counter did not move", dst)
		}
	}
}

// TestUDPFragmentation sends a 20,000-byte datagram over a 1472-byte MTU:
// the stack fragments it, each fragment is one outer datagram, and the
// peer reassembles it.
func TestUDPFragmentation(t *testing.T) {
	p := newPair(t, "127.0.0.1", nil)
	if got := p.a.Stats()[0].MTU; got != 1472 {
		t.Fatalf("UDP over IPv4 MTU = %d, want 1472", got)
	}
	for _, addr := range []string{"10.99.0.2:9", "[fd99::2]:9"} {
		pc, err := p.b.ListenPacket("udp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		c, err := p.a.Dial("udp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		msg := make([]byte, 20000)
		for i := range msg {
			msg[i] = byte(i * 7)
		}
		before := p.a.Stats()[0].TxPackets
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		pc.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 65536)
		n, _, err := pc.ReadFrom(buf)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf[:n], msg) {
			t.Fatalf("%s: received %d bytes, not the 20000 sent", addr, n)
		}
		// 20,008 bytes of UDP in fragments of at most 1448 (IPv4) or 1416
		// (IPv6) data bytes: 14 or 15 outer datagrams. The endpoint counts
		// a batch once its send returns, which can be after the datagram
		// arrived, so wait for the count.
		waitFor(t, addr+": at least 14 outer datagrams counted", func() bool {
			return p.a.Stats()[0].TxPackets-before >= 14
		})
	}
}

func TestDialErrors(t *testing.T) {
	p := newPair(t, "127.0.0.1", nil)
	ctx := context.Background()
	tests := []struct {
		name, network, addr string
		want                error
		text                string
	}{
		{"unknown network", "sctp", "10.99.0.2:80", nil, "unknown network sctp"},
		{"no route", "tcp", "192.0.2.1:80", syscall.ENETUNREACH, "network is unreachable"},
		{"no route udp", "udp", "192.0.2.1:80", syscall.ENETUNREACH, "network is unreachable"},
		{"refused", "tcp", "10.99.0.2:81", syscall.ECONNREFUSED, "connection refused"},
		{"hostname", "tcp", "example.com:80", nil, "no DNS servers configured (Config.DNS); use an IP address"},
		{"bad port", "tcp", "10.99.0.2:99999", nil, "invalid port"},
		{"family", "tcp4", "[fd99::2]:80", nil, "non-IPv4 address"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := p.a.DialContext(ctx, tt.network, tt.addr)
			if err == nil {
				c.Close()
				t.Fatal("dial succeeded")
			}
			var oe *net.OpError
			if !errors.As(err, &oe) {
				t.Errorf("error %T is not a *net.OpError", err)
			}
			if tt.want != nil && !errors.Is(err, tt.want) {
				t.Errorf("error %q is not %v", err, tt.want)
			}
			if !strings.Contains(err.Error(), tt.text) {
				t.Errorf("error %q does not say %q", err, tt.text)
			}
		})
	}
	t.Run("timeout", func(t *testing.T) {
		// 10.99.0.3 is on the link but nobody answers for it.
		ctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		_, err := p.a.DialContext(ctx, "tcp", "10.99.0.3:80")
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() || !strings.Contains(err.Error(), "i/o timeout") {
			t.Errorf("dial to a silent address: %v, want an i/o timeout", err)
		}
	})
	t.Run("canceled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(ctx)
		cancel()
		_, err := p.a.DialContext(ctx, "tcp", "10.99.0.2:80")
		if err == nil || !strings.Contains(err.Error(), "operation was canceled") {
			t.Errorf("dial with a cancelled context: %v", err)
		}
	})
	t.Run("ping no route", func(t *testing.T) {
		_, err := p.a.Ping(ctx, netip.MustParseAddr("192.0.2.1"))
		if !errors.Is(err, syscall.ENETUNREACH) {
			t.Errorf("Ping(192.0.2.1) = %v, want network is unreachable", err)
		}
	})
}

func TestListenErrors(t *testing.T) {
	p := newPair(t, "127.0.0.1", nil)
	ln, err := p.a.Listen("tcp", "10.99.0.1:80")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if _, err := p.a.Listen("tcp", "10.99.0.1:80"); !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("second Listen on 10.99.0.1:80 = %v, want address already in use", err)
	}
	if _, err := p.a.Listen("tcp", "10.99.0.9:80"); !errors.Is(err, syscall.EADDRNOTAVAIL) {
		t.Errorf("Listen on a foreign address = %v, want cannot assign requested address", err)
	}
	if _, err := p.a.Listen("udp", "10.99.0.1:80"); err == nil || !strings.Contains(err.Error(), "unknown network udp") {
		t.Errorf("Listen(udp) = %v, want unknown network", err)
	}
	pc, err := p.a.ListenPacket("udp", "10.99.0.1:53")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	if _, err := p.a.ListenPacket("udp", "10.99.0.1:53"); !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("second ListenPacket = %v, want address already in use", err)
	}
	// The outer UDP port is taken: New says so and names the tunnel.
	_, err = stack.New(stack.Config{Tunnels: []stack.Tunnel{{Name: "dup", Local: p.ta.Local, Remote: p.ta.Remote, Addresses: []netip.Prefix{addrA}}}})
	if !errors.Is(err, syscall.EADDRINUSE) || !strings.Contains(err.Error(), `"dup"`) {
		t.Errorf("New on a bound port = %v, want address already in use naming the tunnel", err)
	}
}

func TestConfigErrors(t *testing.T) {
	good := stack.Tunnel{Name: "t", Local: netip.MustParseAddrPort("127.0.0.1:0"), Remote: netip.MustParseAddrPort("127.0.0.1:9"), Addresses: []netip.Prefix{addrA}}
	tests := []struct {
		name string
		edit func(*stack.Config)
		text string
	}{
		{"no tunnels", func(c *stack.Config) { c.Tunnels = nil }, "no tunnels"},
		{"no name", func(c *stack.Config) { c.Tunnels[0].Name = "" }, "no name"},
		{"duplicate", func(c *stack.Config) { c.Tunnels = append(c.Tunnels, c.Tunnels[0]) }, "defined twice"},
		{"mtu", func(c *stack.Config) { c.Tunnels[0].MTU = 40 }, "MTU 40 outside 68..65535"},
		{"ipv6 mtu", func(c *stack.Config) {
			c.Tunnels[0].MTU = 1200
			c.Tunnels[0].Addresses = append(c.Tunnels[0].Addresses, addrA6)
		}, "below IPv6's minimum"},
		{"family", func(c *stack.Config) { c.Tunnels[0].Remote = netip.MustParseAddrPort("[::1]:9") }, "different families"},
		{"no port", func(c *stack.Config) { c.Tunnels[0].Remote = netip.MustParseAddrPort("127.0.0.1:0") }, "needs a UDP port"},
		{"congestion", func(c *stack.Config) { c.TCP.CongestionControl = "bbr" }, "want reno or cubic"},
		{"udp buffer", func(c *stack.Config) { c.UDPReceiveBuffer = 100 }, "UDP receive buffer 100 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := stack.Config{Tunnels: []stack.Tunnel{good}}
			tt.edit(&cfg)
			s, err := stack.New(cfg)
			if err == nil {
				s.Close()
				t.Fatal("New succeeded")
			}
			if !strings.Contains(err.Error(), tt.text) {
				t.Errorf("New = %q, want it to say %q", err, tt.text)
			}
		})
	}
}

// TestCloseLeavesNothing checks that Close stops every goroutine the stack
// started and frees its UDP port.
func TestCloseLeavesNothing(t *testing.T) {
	before := runtime.NumGoroutine()
	p := newPair(t, "127.0.0.1", nil)
	transfer(t, p.a, p.b, "10.99.0.2:5006", 1<<20)
	ln, err := p.b.Listen("tcp", "10.99.0.2:5007")
	if err != nil {
		t.Fatal(err)
	}
	c, err := p.a.Dial("tcp", "10.99.0.2:5007")
	if err != nil {
		t.Fatal(err)
	}
	go io.Copy(io.Discard, c) // a reader blocked in the stack when it closes
	p.a.Close()
	p.b.Close()
	if _, err := c.Write([]byte("x")); err == nil {
		t.Error("Write on a closed stack's connection succeeded")
	}
	ln.Close()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		buf := make([]byte, 1<<20)
		t.Errorf("%d goroutines before, %d after Close:\n%s", before, n, buf[:runtime.Stack(buf, true)])
	}
	for _, ap := range []netip.AddrPort{p.ta.Local, p.tb.Local} {
		c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(ap))
		if err != nil {
			t.Errorf("port %v not free after Close: %v", ap, err)
			continue
		}
		c.Close()
	}
	if _, err := p.a.Dial("tcp", "10.99.0.2:80"); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Dial after Close = %v, want net.ErrClosed", err)
	}
	_ = os.Stderr
	_ = encap.OK
}

// TestListenDualStack checks that "tcp" and "udp" with an empty host
// accept IPv4 and IPv6 both, as the net package's listeners do.
func TestListenDualStack(t *testing.T) {
	p := newPair(t, "127.0.0.1", nil)
	ln, err := p.b.Listen("tcp", ":5050")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			io.Copy(c, c)
			c.Close()
		}
	}()
	pc, err := p.b.ListenPacket("udp", ":5051")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	go func() {
		buf := make([]byte, 100)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
	for _, host := range []string{"10.99.0.2", "fd99::2"} {
		for _, network := range []string{"tcp", "udp"} {
			port := map[string]string{"tcp": "5050", "udp": "5051"}[network]
			c, err := p.a.Dial(network, net.JoinHostPort(host, port))
			if err != nil {
				t.Fatalf("%s to %s: %v", network, host, err)
			}
			c.SetDeadline(time.Now().Add(5 * time.Second))
			msg := []byte("dual " + network + " " + host)
			buf := make([]byte, len(msg))
			if _, err := c.Write(msg); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(c, buf); err != nil || !bytes.Equal(buf, msg) {
				t.Errorf("%s echo via %s = %q, %v", network, host, buf, err)
			}
			c.Close()
		}
	}
}

// TestUDPWriteDeadline checks that UDP writes honour write deadlines and
// report them as the net package does.
func TestUDPWriteDeadline(t *testing.T) {
	p := newPair(t, "127.0.0.1", nil)
	c, err := p.a.Dial("udp", "10.99.0.2:9")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("before")); err != nil {
		t.Fatal(err)
	}
	c.SetWriteDeadline(time.Now().Add(-time.Second))
	_, err = c.Write([]byte("after the deadline"))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("Write after the deadline = %v, want an i/o timeout", err)
	}
	c.SetWriteDeadline(time.Time{})
	if _, err := c.Write([]byte("again")); err != nil {
		t.Errorf("Write after clearing the deadline: %v", err)
	}
	pc, err := p.a.ListenPacket("udp4", "10.99.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	if _, err := pc.WriteTo([]byte("x"), &net.UDPAddr{IP: net.ParseIP("192.0.2.1"), Port: 9}); !errors.Is(err, syscall.ENETUNREACH) {
		t.Errorf("WriteTo an unroutable address = %v, want network is unreachable", err)
	}
}

// TestUDPBurstWaitsForReader sends a burst of datagrams to a socket nobody
// reads yet, far more than gVisor's default 212 KiB receive buffer holds:
// with the stack's default they all wait, and arrive in order once read.
func TestUDPBurstWaitsForReader(t *testing.T) {
	const n, size = 1500, 1200 // 1.8 MB of payload
	a, b := pipeTunnels("to-b", netip.MustParsePrefix("10.97.0.1/24"), "to-a", netip.MustParsePrefix("10.97.0.2/24"))
	sa := newStack(t, stack.Config{Tunnels: []stack.Tunnel{a}})
	sb := newStack(t, stack.Config{Tunnels: []stack.Tunnel{b}})
	pc, err := sb.ListenPacket("udp4", "10.97.0.2:7000")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	c, err := sa.Dial("udp4", "10.97.0.2:7000")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msg := make([]byte, size)
	udp := sb.GVisor().Stats().UDP
	for i := range n {
		binary.BigEndian.PutUint32(msg, uint32(i))
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		if i%200 == 199 {
			// Let the in-memory link (4096 datagrams) drain.
			waitFor(t, "the burst to reach B's UDP", func() bool { return udp.PacketsReceived.Value() >= uint64(i+1) })
		}
	}
	waitFor(t, "the burst to reach B's UDP", func() bool { return udp.PacketsReceived.Value() >= n })
	if e := udp.ReceiveBufferErrors.Value(); e != 0 {
		t.Fatalf("B's UDP dropped %d of %d datagrams for a full receive buffer", e, n)
	}
	buf := make([]byte, 2048)
	pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	for i := range n {
		k, _, err := pc.ReadFrom(buf)
		if err != nil {
			t.Fatalf("datagram %d: %v", i, err)
		}
		if k != size || binary.BigEndian.Uint32(buf) != uint32(i) {
			t.Fatalf("datagram %d: %d bytes, sequence %d", i, k, binary.BigEndian.Uint32(buf))
		}
	}
}

// TestUDPWriterHeldBackNotDropped writes small datagrams as fast as one
// goroutine can over a real loopback tunnel: once the socket's send buffer
// is in flight the writer must wait, not have its datagrams dropped at the
// tunnel NIC's queue (which must hold more than one send buffer's worth).
func TestUDPWriterHeldBackNotDropped(t *testing.T) {
	p := newPair(t, "127.0.0.1", nil)
	pc, err := p.b.ListenPacket("udp4", "10.99.0.2:7001")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	go func() {
		buf := make([]byte, 2048)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
		}
	}()
	c, err := p.a.Dial("udp4", "10.99.0.2:7001")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const n = 30000
	msg := make([]byte, 64)
	for range n {
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
	}
	st := p.a.GVisor().Stats()
	if d := st.NICs.TxPacketsDroppedNoBufferSpace.Value(); d != 0 {
		t.Errorf("A's NIC queue dropped %d of %d datagrams; the writer should have been held back", d, n)
	}
	if sent := st.UDP.PacketsSent.Value(); sent < n {
		t.Errorf("A's UDP sent %d of %d datagrams", sent, n)
	}
}
