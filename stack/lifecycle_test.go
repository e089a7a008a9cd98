package stack_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/endpoint"
	"github.com/ipipstack/ipipstack/endpoint/encap"
	"github.com/ipipstack/ipipstack/stack"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
)

// closeCounter is a transport that counts its Close calls.
type closeCounter struct {
	endpoint.Transport
	closes atomic.Int32
}

func (c *closeCounter) Close() error {
	c.closes.Add(1)
	return c.Transport.Close()
}

// TestNewClosesConnsOnError checks that New, when it fails, closes every
// caller-supplied Conn exactly once, whichever step failed: the stack owns
// them from New on.
func TestNewClosesConnsOnError(t *testing.T) {
	tests := []struct {
		name string
		edit func(*stack.Config)
		text string
	}{
		{"bad TCP option", func(c *stack.Config) { c.TCP.CongestionControl = "bbr" }, "want reno or cubic"},
		{"bad UDP buffer", func(c *stack.Config) { c.UDPReceiveBuffer = 100 }, "UDP receive buffer"},
		{"first has no name", func(c *stack.Config) { c.Tunnels[0].Name = "" }, "no name"},
		{"second has no name", func(c *stack.Config) { c.Tunnels[1].Name = "" }, "no name"},
		{"duplicate name", func(c *stack.Config) { c.Tunnels[1].Name = c.Tunnels[0].Name }, "defined twice"},
		{"first addTunnel fails", func(c *stack.Config) { c.Tunnels[0].MTU = 40 }, "MTU 40"},
		{"second addTunnel fails", func(c *stack.Config) { c.Tunnels[1].MTU = 40 }, "MTU 40"},
		{"last addTunnel fails", func(c *stack.Config) { c.Tunnels[2].MTU = 40 }, "MTU 40"},
		{"bad address", func(c *stack.Config) { c.Tunnels[1].Addresses = []netip.Prefix{{}} }, "invalid address"},
		{"bad route", func(c *stack.Config) {
			c.Routes = []stack.Route{{Prefix: netip.MustParsePrefix("10.5.0.0/16"), Tunnel: "nope"}}
		}, "no such tunnel"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var cfg stack.Config
			var conns []*closeCounter
			for i, name := range []string{"t0", "t1", "t2"} {
				a, _ := pipeTunnels(name, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 80, byte(i), 1}), 24),
					"unused", netip.MustParsePrefix("10.80.99.1/24"))
				cc := &closeCounter{Transport: a.Conn}
				a.Conn = cc
				conns = append(conns, cc)
				cfg.Tunnels = append(cfg.Tunnels, a)
			}
			tt.edit(&cfg)
			s, err := stack.New(cfg)
			if err == nil {
				s.Close()
				t.Fatal("New succeeded")
			}
			if !strings.Contains(err.Error(), tt.text) {
				t.Errorf("New = %q, want it to say %q", err, tt.text)
			}
			for i, cc := range conns {
				if n := cc.closes.Load(); n != 1 {
					t.Errorf("tunnel %d: Conn closed %d times, want 1", i, n)
				}
			}
		})
	}
}

// stuckTransport is a transport whose writes block until it is closed: a
// link that never drains.
type stuckTransport struct {
	endpoint.Transport
	once    sync.Once
	release chan struct{}
}

func newStuckTransport(tr endpoint.Transport) *stuckTransport {
	return &stuckTransport{Transport: tr, release: make(chan struct{})}
}

func (s *stuckTransport) WriteBatch(msgs []endpoint.Message) (int, error) {
	<-s.release
	return 0, endpoint.ErrClosed
}

func (s *stuckTransport) Close() error {
	s.once.Do(func() { close(s.release) })
	return s.Transport.Close()
}

// blockedWriter starts a goroutine writing datagrams on c until a write
// fails, waits until its writes stop going through (the send buffer is
// full), and returns the channel that gets the failing write's error.
func blockedWriter(t *testing.T, c net.Conn) <-chan error {
	t.Helper()
	var writes atomic.Int64
	errc := make(chan error, 1)
	go func() {
		msg := make([]byte, 1200)
		for {
			if _, err := c.Write(msg); err != nil {
				errc <- err
				return
			}
			writes.Add(1)
		}
	}()
	last := int64(-1)
	waitFor(t, "the writer to block", func() bool {
		time.Sleep(100 * time.Millisecond)
		n := writes.Load()
		blocked := n == last
		last = n
		return blocked
	})
	return errc
}

// TestUDPWriteDeadlineWakesBlockedWriter checks the net.Conn contract for
// a writer blocked on a full send buffer: a deadline set in the past
// unblocks it with a timeout, and Close with net.ErrClosed.
func TestUDPWriteDeadlineWakesBlockedWriter(t *testing.T) {
	a, _ := pipeTunnels("stuck", netip.MustParsePrefix("10.81.0.1/24"), "peer", netip.MustParsePrefix("10.81.0.2/24"))
	stuck := newStuckTransport(a.Conn)
	a.Conn = stuck
	s := newStack(t, stack.Config{Tunnels: []stack.Tunnel{a}})
	t.Cleanup(func() { stuck.Close() }) // before s.Close
	c, err := s.Dial("udp4", "10.81.0.2:9")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	errc := blockedWriter(t, c)
	c.SetWriteDeadline(time.Now())
	select {
	case err := <-errc:
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("blocked Write after SetWriteDeadline(now) = %v, want an i/o timeout", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("blocked Write still blocked 5 s after SetWriteDeadline(now)")
	}

	c.SetWriteDeadline(time.Time{})
	errc = blockedWriter(t, c)
	c.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("blocked Write after Close = %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("blocked Write still blocked 5 s after Close")
	}
	if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Write after Close = %v, want net.ErrClosed", err)
	}
}

// TestCloseUnderTraffic closes pairs of stacks while TCP and UDP flow both
// ways, UDP datagrams travel as fragments, pings are answered and the
// tunnel MTU drops under TCP so that the endpoints send ICMP
// Fragmentation Needed into their stacks. Run under -race, it catches
// Close racing the queue goroutines' WritePackets (held fragments), the
// ICMP goroutines and Attach; afterwards no goroutine may be left.
func TestCloseUnderTraffic(t *testing.T) {
	rounds := 20
	if testing.Short() {
		rounds = 5
	}
	before := runtime.NumGoroutine()
	var tooBig uint64
	for round := range rounds {
		tooBig += closeUnderTraffic(t, round)
	}
	if tooBig == 0 {
		t.Error("no packet was too big for the narrowed tunnels: the ICMP path went untested")
	}
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		buf := make([]byte, 1<<20)
		t.Errorf("%d goroutines before, %d after %d rounds:\n%s", before, n, rounds, buf[:runtime.Stack(buf, true)])
	}
}

// closeUnderTraffic runs one round and returns how many packets the
// tunnels dropped as too big before they closed.
func closeUnderTraffic(t *testing.T, round int) (tooBig uint64) {
	addrA, addrB := netip.MustParsePrefix("10.82.0.1/24"), netip.MustParsePrefix("10.82.0.2/24")
	ta, tb := pipeTunnels("to-b", addrA, "to-a", addrB)
	sa, err := stack.New(stack.Config{Tunnels: []stack.Tunnel{ta}})
	if err != nil {
		t.Fatal(err)
	}
	sb, err := stack.New(stack.Config{Tunnels: []stack.Tunnel{tb}})
	if err != nil {
		sa.Close()
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	// Every goroutine below ends when its stack closes.
	serve := func(s *stack.Stack, self netip.Addr) {
		ln, err := s.Listen("tcp", netip.AddrPortFrom(self, 7000).String())
		if err != nil {
			t.Error(err)
			return
		}
		pc, err := s.ListenPacket("udp4", netip.AddrPortFrom(self, 7001).String())
		if err != nil {
			t.Error(err)
			return
		}
		wg.Add(2)
		go func() {
			defer wg.Done()
			defer ln.Close()
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					defer c.Close()
					io.Copy(io.Discard, c)
				}()
			}
		}()
		go func() {
			defer wg.Done()
			defer pc.Close()
			buf := make([]byte, 1<<16)
			for {
				if _, _, err := pc.ReadFrom(buf); err != nil {
					return
				}
			}
		}()
	}
	var sent atomic.Int64
	send := func(s *stack.Stack, peer netip.Addr) {
		wg.Add(3)
		go func() { // TCP
			defer wg.Done()
			c, err := s.Dial("tcp", netip.AddrPortFrom(peer, 7000).String())
			if err != nil {
				return // closed before it connected
			}
			defer c.Close()
			buf := make([]byte, 64<<10)
			for {
				n, err := c.Write(buf)
				sent.Add(int64(n))
				if err != nil {
					return
				}
			}
		}()
		go func() { // UDP, 4000-byte datagrams: three fragments each
			defer wg.Done()
			c, err := s.Dial("udp4", netip.AddrPortFrom(peer, 7001).String())
			if err != nil {
				return
			}
			defer c.Close()
			buf := make([]byte, 4000)
			for {
				n, err := c.Write(buf)
				sent.Add(int64(n))
				if err != nil {
					return
				}
			}
		}()
		go func() { // ICMP echo
			defer wg.Done()
			for {
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				_, err := s.Ping(ctx, peer)
				cancel()
				if errors.Is(err, net.ErrClosed) {
					return
				}
			}
		}()
	}
	serve(sa, addrA.Addr())
	serve(sb, addrB.Addr())
	send(sa, addrB.Addr())
	send(sb, addrA.Addr())
	waitFor(t, "traffic", func() bool { return sent.Load() > 1<<20 })
	// Narrower tunnels: TCP's segments no longer fit, and the endpoints
	// answer them with Fragmentation Needed on goroutines of their own.
	sa.Endpoint("to-b").SetMTU(1000)
	sb.Endpoint("to-a").SetMTU(1000)
	time.Sleep(time.Duration(round%4) * 5 * time.Millisecond)
	for _, s := range []*stack.Stack{sa, sb} {
		tooBig += s.Stats()[0].Drops[encap.TooBig]
	}
	var closers sync.WaitGroup
	for _, s := range []*stack.Stack{sa, sb} {
		closers.Add(1)
		go func() {
			defer closers.Done()
			s.Close()
		}()
	}
	closers.Wait()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		buf := make([]byte, 1<<20)
		t.Fatalf("round %d: traffic goroutines still running 30 s after Close:\n%s", round, buf[:runtime.Stack(buf, true)])
	}
	return tooBig
}

// TestRemoveLink removes a link added with AddLink while TCP flows through
// a tunnel and UDP is routed into the link: afterwards neither the stack's
// route table nor gVisor's names it, its NIC is gone, the name can be
// added again, and the tunnel's transfer arrives intact.
func TestRemoveLink(t *testing.T) {
	for _, forwarding := range []bool{false, true} {
		t.Run(fmt.Sprintf("forwarding=%v", forwarding), func(t *testing.T) {
			ta, tb := pipeTunnels("to-b", netip.MustParsePrefix("10.84.0.1/24"), "to-a", netip.MustParsePrefix("10.84.0.2/24"))
			sa := newStack(t, stack.Config{Tunnels: []stack.Tunnel{ta}, Forwarding: forwarding})
			sb := newStack(t, stack.Config{Tunnels: []stack.Tunnel{tb}, Forwarding: forwarding})
			lanAddr, lanRoute := netip.MustParsePrefix("10.84.1.1/24"), netip.MustParsePrefix("10.84.2.0/24")
			addLAN := func() *channel.Endpoint {
				t.Helper()
				ch := channel.New(64, 1500, "")
				if err := sa.AddLink("lan", ch, []netip.Prefix{lanAddr}, []netip.Prefix{lanRoute}); err != nil {
					t.Fatal(err)
				}
				return ch
			}
			ch := addLAN()
			if err := sa.AddLink("lan", channel.New(1, 1500, ""), nil, nil); !errors.Is(err, stack.ErrLinkExists) {
				t.Errorf("AddLink of a second %q = %v, want ErrLinkExists", "lan", err)
			}
			if err := sa.AddRoute(stack.Route{Prefix: netip.MustParsePrefix("10.84.3.0/24"), Tunnel: "lan", Metric: 5}); err != nil {
				t.Fatal(err)
			}
			lanNIC := nicOf(sa, "lan")
			if lanNIC == 0 {
				t.Fatal("no NIC named lan after AddLink")
			}

			// Traffic: UDP into the link, and a TCP transfer through the
			// tunnel while the link goes.
			stop := make(chan struct{})
			udpDone := make(chan struct{})
			var intoLink atomic.Int64 // packets the link got
			go func() {
				defer close(udpDone)
				for {
					select {
					case <-stop:
						return
					default:
					}
					if c, err := sa.Dial("udp4", "10.84.2.9:9"); err == nil {
						c.Write([]byte("into the link"))
						c.Close()
					}
					for pkt := ch.Read(); pkt != nil; pkt = ch.Read() {
						intoLink.Add(1)
						pkt.DecRef()
					}
				}
			}()
			removed := make(chan error, 1)
			go func() {
				for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
					if intoLink.Load() > 0 {
						break
					}
				}
				removed <- sa.RemoveLink("lan")
				close(stop)
			}()
			transfer(t, sa, sb, "10.84.0.2:7100", 2<<20) // checks the SHA-256 of what arrived
			if err := <-removed; err != nil {
				t.Fatalf("RemoveLink: %v", err)
			}
			<-udpDone
			if intoLink.Load() == 0 {
				t.Fatal("no packet went into the link")
			}

			for _, r := range sa.Routes() {
				if r.Tunnel == "lan" {
					t.Errorf("route %v left after RemoveLink", r)
				}
			}
			for _, r := range sa.GVisor().GetRouteTable() {
				if r.NIC == lanNIC {
					t.Errorf("gVisor route %v left after RemoveLink", r)
				}
			}
			if nicOf(sa, "lan") != 0 {
				t.Error("NIC lan left after RemoveLink")
			}
			if err := sa.RemoveLink("lan"); !errors.Is(err, stack.ErrUnknownTunnel) {
				t.Errorf("second RemoveLink = %v, want ErrUnknownTunnel", err)
			}
			if err := sa.RemoveLink("to-b"); !errors.Is(err, stack.ErrUnknownTunnel) {
				t.Errorf("RemoveLink of a tunnel = %v, want ErrUnknownTunnel", err)
			}
			if _, err := sa.Dial("udp4", "10.84.2.9:9"); err == nil {
				t.Error("Dial through the removed link succeeded")
			}

			addLAN()
			want := []stack.Route{
				{Prefix: netip.MustParsePrefix("10.84.0.0/24"), Tunnel: "to-b"},
				{Prefix: lanAddr.Masked(), Tunnel: "lan"},
				{Prefix: lanRoute, Tunnel: "lan"},
			}
			if got := sa.Routes(); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("Routes after AddLink again = %v, want %v", got, want)
			}
			if nicOf(sa, "lan") == 0 {
				t.Error("no NIC named lan after AddLink again")
			}
			transfer(t, sa, sb, "10.84.0.2:7101", 1<<20)
		})
	}
}

// nicOf returns the gVisor NIC named name, or 0.
func nicOf(s *stack.Stack, name string) tcpip.NICID {
	for id, info := range s.GVisor().NICInfo() {
		if info.Name == name {
			return id
		}
	}
	return 0
}

// TestQueueDropsCounted fills a tunnel NIC's queue in front of a link that
// never drains, from more UDP sockets than the queue holds the send buffers
// of: the datagrams the queue drops show in the tunnel's QueueDrops, as
// many as gVisor's own counter of the NIC says.
func TestQueueDropsCounted(t *testing.T) {
	a, _ := pipeTunnels("stuck", netip.MustParsePrefix("10.85.0.1/24"), "peer", netip.MustParsePrefix("10.85.0.2/24"))
	stuck := newStuckTransport(a.Conn)
	a.Conn = stuck
	s := newStack(t, stack.Config{Tunnels: []stack.Tunnel{a}})
	t.Cleanup(func() { stuck.Close() }) // before s.Close

	const conns, perConn = 8, 1000 // 8000 datagrams for a queue of 4096
	var wg sync.WaitGroup
	var written atomic.Int64
	for i := range conns {
		c, err := s.Dial("udp4", fmt.Sprintf("10.85.0.2:%d", 9000+i))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetWriteDeadline(time.Now().Add(2 * time.Second)) // a socket whose send buffer fills gives up
		wg.Add(1)
		go func() {
			defer wg.Done()
			msg := make([]byte, 64)
			for range perConn {
				if _, err := c.Write(msg); err != nil {
					return
				}
				written.Add(1)
			}
		}()
	}
	wg.Wait()
	st := tunnelStats(t, s, "stuck")
	gv := s.GVisor().Stats().NICs.TxPacketsDroppedNoBufferSpace.Value()
	t.Logf("%d datagrams written, %d dropped at the queue", written.Load(), st.QueueDrops)
	if st.QueueDrops == 0 || st.QueueDrops != gv {
		t.Errorf("QueueDrops = %d, want gVisor's count for the NIC, %d, and > 0", st.QueueDrops, gv)
	}
	// The queue holds 4096 and the stuck write one batch (at most 47,
	// fifo.BatchSize); every other datagram written was dropped.
	if min := uint64(written.Load()) - 4096 - 47; written.Load() > 4096+47 && st.QueueDrops < min {
		t.Errorf("QueueDrops = %d of %d datagrams written, want at least %d", st.QueueDrops, written.Load(), min)
	}
}

// TestIdleTunnelGoroutines brings up 50 idle tunnels and checks that
// each starts at most one goroutine (its endpoint's receive loop, until
// tunnels share sockets): the queue in front of a NIC runs a goroutine
// only while it holds packets, also after traffic has passed.
func TestIdleTunnelGoroutines(t *testing.T) {
	const n = 50
	var tuns []stack.Tunnel
	for i := range n {
		a, _ := pipeTunnels(fmt.Sprintf("t%d", i), netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 77, byte(i), 1}), 24),
			"peer", netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 77, byte(i), 2}), 24))
		tuns = append(tuns, a)
	}
	g0 := runtime.NumGoroutine()
	s := newStack(t, stack.Config{Tunnels: tuns})
	check := func(when string) {
		t.Helper()
		// Goroutines that just finished their work may take a moment to
		// return.
		got := 0
		for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if got = runtime.NumGoroutine() - g0; got <= n+4 {
				return
			}
		}
		t.Errorf("%s: %d idle tunnels run %d goroutines, want at most %d", when, n, got, n+4)
	}
	check("after New")
	for i := range n {
		sendUDP(t, s, netip.AddrFrom4([4]byte{10, 77, byte(i), 2}))
	}
	quiesce(t, s)
	check("after traffic")
}
