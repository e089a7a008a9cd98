package stack_test

import (
	"errors"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/endpoint/endpointtest"
	"github.com/ipipstack/ipipstack/stack"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/waiter"
)

var pipePort atomic.Uint32

// pipeTunnels returns the two ends of a tunnel joined by an in-memory pipe:
// a is named aName and has address aAddr, b likewise.
func pipeTunnels(aName string, aAddr netip.Prefix, bName string, bAddr netip.Prefix) (a, b stack.Tunnel) {
	n := uint16(pipePort.Add(2))
	oa := netip.AddrPortFrom(netip.MustParseAddr("198.51.100.1"), n)
	ob := netip.AddrPortFrom(netip.MustParseAddr("198.51.100.2"), n+1)
	ta, tb := endpointtest.Pipe(oa, ob, 0)
	a = stack.Tunnel{Name: aName, Local: oa, Remote: ob, Addresses: []netip.Prefix{aAddr}, Conn: ta}
	b = stack.Tunnel{Name: bName, Local: ob, Remote: oa, Addresses: []netip.Prefix{bAddr}, Conn: tb}
	return a, b
}

// waitFor polls cond for up to 5 s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// quiesce waits until s's tunnels have sent nothing for 50 ms.
func quiesce(t testing.TB, s *stack.Stack) {
	t.Helper()
	total := func() (n uint64) {
		for _, st := range s.Stats() {
			n += st.TxPackets
		}
		return n
	}
	last := total()
	waitFor(t, "the tunnels to fall silent", func() bool {
		time.Sleep(50 * time.Millisecond)
		n := total()
		quiet := n == last
		last = n
		return quiet
	})
}

func newStack(t testing.TB, cfg stack.Config) *stack.Stack {
	t.Helper()
	s, err := stack.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// tunnelStats returns the counters of the named tunnel.
func tunnelStats(t testing.TB, s *stack.Stack, name string) stack.TunnelStats {
	t.Helper()
	for _, st := range s.Stats() {
		if st.Name == name {
			return st
		}
	}
	t.Fatalf("no tunnel %q", name)
	return stack.TunnelStats{}
}

// sendUDP sends one small datagram from s to dst:9 on a fresh socket, so
// that the route is looked up anew.
func sendUDP(t testing.TB, s *stack.Stack, dst netip.Addr) {
	t.Helper()
	c, err := s.Dial("udp", netip.AddrPortFrom(dst, 9).String())
	if err != nil {
		t.Fatalf("dial %v: %v", dst, err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("which way?")); err != nil {
		t.Fatalf("write to %v: %v", dst, err)
	}
}

// hub is a stack with four tunnels, A to D, each to a peer stack of its own.
type hub struct {
	s     *stack.Stack
	names []string
	peers map[string]*stack.Stack
}

func newHub(t *testing.T, routes []stack.Route) *hub {
	h := &hub{names: []string{"A", "B", "C", "D"}, peers: map[string]*stack.Stack{}}
	var tuns []stack.Tunnel
	for i, name := range h.names {
		base := netip.AddrFrom4([4]byte{10, 255, 0, byte(4 * i)})
		mine := netip.PrefixFrom(base.Next(), 30)
		theirs := netip.PrefixFrom(base.Next().Next(), 30)
		a, b := pipeTunnels(name, mine, "hub", theirs)
		tuns = append(tuns, a)
		h.peers[name] = newStack(t, stack.Config{Tunnels: []stack.Tunnel{b}})
	}
	h.s = newStack(t, stack.Config{Tunnels: tuns, Routes: routes})
	return h
}

// via sends to dst and returns the tunnel that carried the datagram, after
// checking that exactly one tunnel sent it and its peer received it.
func (h *hub) via(t *testing.T, dst netip.Addr) string {
	t.Helper()
	tx := map[string]uint64{}
	rx := map[string]uint64{}
	for _, n := range h.names {
		tx[n] = tunnelStats(t, h.s, n).TxPackets
		rx[n] = h.peers[n].Stats()[0].RxPackets
	}
	sendUDP(t, h.s, dst)
	// The NIC's queue sends asynchronously.
	var now map[string]uint64
	waitFor(t, "a tunnel to send", func() bool {
		now = map[string]uint64{}
		moved := false
		for _, n := range h.names {
			now[n] = tunnelStats(t, h.s, n).TxPackets
			moved = moved || now[n] != tx[n]
		}
		return moved
	})
	got := ""
	for _, n := range h.names {
		dtx := now[n] - tx[n]
		if dtx == 0 {
			continue
		}
		if dtx != 1 || got != "" {
			t.Fatalf("to %v: tunnel %s sent %d packets (and %q sent before)", dst, n, dtx, got)
		}
		got = n
		waitFor(t, "peer "+n+" to receive", func() bool { return h.peers[n].Stats()[0].RxPackets > rx[n] })
	}
	return got
}

func TestRouteLongestPrefixAndMetric(t *testing.T) {
	mp := netip.MustParsePrefix
	// Config.Routes: the /16 via D with the higher metric comes first, so
	// that insertion order would pick it if metrics were ignored.
	h := newHub(t, []stack.Route{
		{Prefix: mp("10.0.0.0/8"), Tunnel: "A"},
		{Prefix: mp("10.1.0.0/16"), Tunnel: "D", Metric: 100},
		{Prefix: mp("10.1.0.0/16"), Tunnel: "B", Metric: 10},
		{Prefix: mp("0.0.0.0/0"), Tunnel: "D"},
	})
	if err := h.s.AddRoute(stack.Route{Prefix: mp("10.1.2.3/32"), Tunnel: "C"}); err != nil {
		t.Fatal(err)
	}
	check := func(step string, want map[string]string) {
		t.Helper()
		for dst, tun := range want {
			if got := h.via(t, netip.MustParseAddr(dst)); got != tun {
				t.Errorf("%s: %s went via %q, want %q", step, dst, got, tun)
			}
		}
	}
	check("all routes", map[string]string{
		"10.2.0.1":    "A",
		"10.1.9.9":    "B",
		"10.1.2.3":    "C",
		"10.1.2.4":    "B",
		"192.0.2.1":   "D",
		"10.255.0.6":  "B", // on-link /30 beats 10.0.0.0/8
		"10.255.0.14": "D",
	})
	if err := h.s.RemoveRoute(stack.Route{Prefix: mp("10.1.2.3/32"), Tunnel: "C"}); err != nil {
		t.Fatal(err)
	}
	check("without the /32", map[string]string{"10.1.2.3": "B", "10.1.9.9": "B"})
	if err := h.s.RemoveRoute(stack.Route{Prefix: mp("10.1.0.0/16"), Tunnel: "B", Metric: 10}); err != nil {
		t.Fatal(err)
	}
	check("without the /16 via B", map[string]string{"10.1.2.3": "D", "10.1.9.9": "D"})
	if err := h.s.RemoveRoute(stack.Route{Prefix: mp("10.1.0.0/16"), Tunnel: "D", Metric: 100}); err != nil {
		t.Fatal(err)
	}
	check("without the /16s", map[string]string{"10.1.2.3": "A", "10.1.9.9": "A", "192.0.2.1": "D"})
	if err := h.s.RemoveRoute(stack.Route{Prefix: mp("0.0.0.0/0"), Tunnel: "D"}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.s.Dial("udp", "192.0.2.1:9"); err == nil || !strings.Contains(err.Error(), "network is unreachable") {
		t.Errorf("dial with no default route = %v, want network is unreachable", err)
	}
}

func TestRoutesList(t *testing.T) {
	mp := netip.MustParsePrefix
	h := newHub(t, nil)
	for _, r := range []stack.Route{
		{Prefix: mp("0.0.0.0/0"), Tunnel: "D"},
		{Prefix: mp("10.1.0.0/16"), Tunnel: "D", Metric: 5},
		{Prefix: mp("10.1.0.0/16"), Tunnel: "B", Metric: 1},
		{Prefix: mp("fd00::/8"), Tunnel: "C"},
	} {
		if err := h.s.AddRoute(r); err != nil {
			t.Fatal(err)
		}
	}
	want := []stack.Route{
		{Prefix: mp("10.255.0.0/30"), Tunnel: "A"},
		{Prefix: mp("10.255.0.4/30"), Tunnel: "B"},
		{Prefix: mp("10.255.0.8/30"), Tunnel: "C"},
		{Prefix: mp("10.255.0.12/30"), Tunnel: "D"},
		{Prefix: mp("10.1.0.0/16"), Tunnel: "B", Metric: 1},
		{Prefix: mp("10.1.0.0/16"), Tunnel: "D", Metric: 5},
		{Prefix: mp("fd00::/8"), Tunnel: "C"},
		{Prefix: mp("0.0.0.0/0"), Tunnel: "D"},
	}
	if got := h.s.Routes(); !slices.Equal(got, want) {
		t.Errorf("Routes() =\n%v\nwant\n%v", got, want)
	}
}

func TestRouteErrors(t *testing.T) {
	mp := netip.MustParsePrefix
	h := newHub(t, []stack.Route{{Prefix: mp("10.1.0.0/16"), Tunnel: "B"}})
	tests := []struct {
		name   string
		remove bool
		r      stack.Route
		want   error
		text   string
	}{
		{"unknown tunnel", false, stack.Route{Prefix: mp("10.2.0.0/16"), Tunnel: "E"}, stack.ErrUnknownTunnel, "no such tunnel"},
		{"invalid prefix", false, stack.Route{Tunnel: "A"}, nil, "invalid prefix"},
		{"host bits", false, stack.Route{Prefix: mp("10.1.2.3/16"), Tunnel: "A"}, nil, "host bits set (want 10.1.0.0/16)"},
		{"mapped", false, stack.Route{Prefix: mp("::ffff:10.0.0.0/104"), Tunnel: "A"}, nil, "not a plain"},
		{"duplicate", false, stack.Route{Prefix: mp("10.1.0.0/16"), Tunnel: "B"}, stack.ErrRouteExists, "route exists"},
		{"missing", true, stack.Route{Prefix: mp("10.1.0.0/16"), Tunnel: "A"}, stack.ErrRouteNotFound, "no such route"},
		{"other metric", true, stack.Route{Prefix: mp("10.1.0.0/16"), Tunnel: "B", Metric: 1}, stack.ErrRouteNotFound, "no such route"},
		{"remove unknown tunnel", true, stack.Route{Prefix: mp("10.1.0.0/16"), Tunnel: "E"}, stack.ErrUnknownTunnel, "no such tunnel"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			op, verb := h.s.AddRoute, "AddRoute"
			if tt.remove {
				op, verb = h.s.RemoveRoute, "RemoveRoute"
			}
			err := op(tt.r)
			if err == nil || !strings.Contains(err.Error(), tt.text) || (tt.want != nil && !errors.Is(err, tt.want)) {
				t.Errorf("%s(%v) = %v, want an error saying %q", verb, tt.r, err, tt.text)
			}
		})
	}
	_, err := stack.New(stack.Config{Tunnels: []stack.Tunnel{{Name: "t", Local: netip.MustParseAddrPort("127.0.0.1:0"),
		Remote: netip.MustParseAddrPort("127.0.0.1:9"), Addresses: []netip.Prefix{addrA}}},
		Routes: []stack.Route{{Prefix: mp("10.0.0.0/8"), Tunnel: "u"}}})
	if !errors.Is(err, stack.ErrUnknownTunnel) {
		t.Errorf("New with a route via an unknown tunnel = %v, want ErrUnknownTunnel", err)
	}
	if got := len(h.s.Routes()); got != 5 {
		t.Errorf("%d routes after failed changes, want 5", got)
	}
}

// TestRouteChangesUnderTraffic changes routes while datagrams flow, for
// the race detector.
func TestRouteChangesUnderTraffic(t *testing.T) {
	mp := netip.MustParsePrefix
	h := newHub(t, []stack.Route{{Prefix: mp("10.0.0.0/8"), Tunnel: "A"}})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		pc, err := h.s.ListenPacket("udp4", ":0")
		if err != nil {
			t.Error(err)
			return
		}
		defer pc.Close()
		dst := net.UDPAddrFromAddrPort(netip.MustParseAddrPort("10.1.2.3:9"))
		for {
			select {
			case <-stop:
				return
			default:
			}
			pc.WriteTo([]byte("x"), dst)
		}
	}()
	for i := 0; i < 200; i++ {
		r := stack.Route{Prefix: mp("10.1.0.0/16"), Tunnel: h.names[i%4], Metric: i % 3}
		if err := h.s.AddRoute(r); err != nil {
			t.Fatal(err)
		}
		h.s.Routes()
		if err := h.s.RemoveRoute(r); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	quiesce(t, h.s)
	if got := h.via(t, netip.MustParseAddr("10.1.2.3")); got != "A" {
		t.Errorf("after the churn 10.1.2.3 went via %q, want A", got)
	}
}

// gvEndpoint opens a gVisor socket of the transport protocol trans on s,
// of dst's family; the caller closes it.
func gvEndpoint(t testing.TB, s *stack.Stack, trans tcpip.TransportProtocolNumber, dst netip.Addr) tcpip.Endpoint {
	t.Helper()
	proto := ipv4.ProtocolNumber
	if dst.Is6() {
		proto = ipv6.ProtocolNumber
	}
	var wq waiter.Queue
	ep, terr := s.GVisor().NewEndpoint(trans, proto, &wq)
	if terr != nil {
		t.Fatal(terr)
	}
	return ep
}

// TestRouteChangeCostIndependentOfTableSize checks that adding and
// removing one route does work for that route only: it allocates as much
// with 2,000 other routes in the table as with 100. Rebuilding the whole
// table (and gVisor's list, one element per route) on each change made
// 10,000 routes take minutes to add.
func TestRouteChangeCostIndependentOfTableSize(t *testing.T) {
	h := newHub(t, nil)
	added := 0
	fill := func(n int) {
		for ; added < n; added++ {
			p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 1, byte(added >> 8), byte(added)}), 32)
			if err := h.s.AddRoute(stack.Route{Prefix: p, Tunnel: h.names[added%4]}); err != nil {
				t.Fatal(err)
			}
		}
	}
	r := stack.Route{Prefix: netip.MustParsePrefix("10.2.0.0/16"), Tunnel: "C", Metric: 3}
	change := func() {
		if err := h.s.AddRoute(r); err != nil {
			t.Fatal(err)
		}
		if err := h.s.RemoveRoute(r); err != nil {
			t.Fatal(err)
		}
	}
	fill(100)
	small := testing.AllocsPerRun(20, change)
	fill(2000)
	large := testing.AllocsPerRun(20, change)
	if large > small+2 {
		t.Errorf("AddRoute+RemoveRoute allocates %v times with 2,000 routes, %v with 100; want the same", large, small)
	}
}

// TestRouteGVisorTableFollowsChanges makes random route changes and
// checks after each that gVisor's table holds, for each prefix of the
// stack's table, one route: through the tunnel of the prefix's lowest
// metric, first added among equals; and that Routes lists the table in
// matching order.
func TestRouteGVisorTableFollowsChanges(t *testing.T) {
	mp := netip.MustParsePrefix
	h := newHub(t, nil)
	prefixes := []netip.Prefix{mp("0.0.0.0/0"), mp("10.0.0.0/8"), mp("10.1.0.0/16"), mp("10.2.0.0/16"),
		mp("10.1.2.0/24"), mp("10.1.2.3/32"), mp("fd00::/8"), mp("fd00:1::/32")}
	onLink := len(h.s.Routes())
	var want []stack.Route // the reference table, in the order added
	rng := rand.New(rand.NewPCG(14, 4))
	for step := range 600 {
		r := stack.Route{Prefix: prefixes[rng.IntN(len(prefixes))], Tunnel: h.names[rng.IntN(4)], Metric: rng.IntN(3)}
		if i := slices.Index(want, r); i >= 0 {
			if err := h.s.RemoveRoute(r); err != nil {
				t.Fatalf("step %d: RemoveRoute(%v): %v", step, r, err)
			}
			want = slices.Delete(want, i, i+1)
		} else {
			if err := h.s.AddRoute(r); err != nil {
				t.Fatalf("step %d: AddRoute(%v): %v", step, r, err)
			}
			want = append(want, r)
		}
		// The best route of each prefix: the first added of the lowest
		// metric.
		best := map[netip.Prefix]stack.Route{}
		for _, r := range want {
			if b, ok := best[r.Prefix]; !ok || r.Metric < b.Metric {
				best[r.Prefix] = r
			}
		}
		got := map[netip.Prefix][]tcpip.NICID{}
		for _, gr := range h.s.GVisor().GetRouteTable() {
			id := gr.Destination.ID()
			a, _ := netip.AddrFromSlice(id.AsSlice())
			p := netip.PrefixFrom(a, gr.Destination.Prefix())
			if slices.Contains(prefixes, p) {
				got[p] = append(got[p], gr.NIC)
			}
		}
		for p, b := range best {
			if w := nicOf(h.s, b.Tunnel); !slices.Equal(got[p], []tcpip.NICID{w}) {
				t.Fatalf("step %d: gVisor routes %v through NICs %v, want only %d (%v)", step, p, got[p], w, b)
			}
		}
		for p, nics := range got {
			if _, ok := best[p]; !ok {
				t.Fatalf("step %d: gVisor routes %v through NICs %v, want no route", step, p, nics)
			}
		}
		// Routes: longest prefix first, then lowest metric, then first
		// added; the on-link /30s come first.
		sorted := slices.Clone(want)
		slices.SortStableFunc(sorted, func(a, b stack.Route) int {
			if a.Prefix.Bits() != b.Prefix.Bits() {
				return b.Prefix.Bits() - a.Prefix.Bits()
			}
			return a.Metric - b.Metric
		})
		all := h.s.Routes()
		if len(all) != onLink+len(want) {
			t.Fatalf("step %d: %d routes, want %d", step, len(all), onLink+len(want))
		}
		var mine []stack.Route
		for _, r := range all {
			if slices.Contains(prefixes, r.Prefix) {
				mine = append(mine, r)
			}
		}
		if !slices.Equal(mine, sorted) {
			t.Fatalf("step %d: Routes() =\n%v\nwant\n%v", step, mine, sorted)
		}
	}
}
