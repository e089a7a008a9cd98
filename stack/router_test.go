package stack_test

import (
	"bytes"
	"net/netip"
	"reflect"
	"runtime/debug"
	"testing"

	"github.com/ipipstack/ipipstack/stack"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
)

// chain is stacks joined in a line by in-memory tunnels: s[i] reaches
// s[i+1] over link i, whose addresses are 10.0.<i+1>.1/30 (left end) and
// 10.0.<i+1>.2/30 (right end), and fd00:0:<i+1>::1/64 and ::2/64. The
// inner stacks forward, and each tunnel routes the links beyond its peer.
type chain struct {
	s []*stack.Stack
}

// linkAddr returns the address of the left (end 0) or right (end 1) end of
// link i, IPv4 or IPv6.
func linkAddr(i, end int, v6 bool) netip.Prefix {
	if v6 {
		a := netip.AddrFrom16([16]byte{0xfd, 0, 0, 0, 0, byte(i + 1), 15: byte(end + 1)})
		return netip.PrefixFrom(a, 64)
	}
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, byte(i + 1), byte(end + 1)}), 30)
}

// newChain builds n stacks in a line; edit adjusts tunnel configs (link i,
// end 0 or 1) before the stacks start.
func newChain(t *testing.T, n int, edit func(link, end int, tun *stack.Tunnel)) *chain {
	t.Helper()
	tuns := make([][]stack.Tunnel, n)
	for i := 0; i < n-1; i++ {
		a, b := pipeTunnels("right", linkAddr(i, 0, false), "left", linkAddr(i, 1, false))
		a.Addresses = append(a.Addresses, linkAddr(i, 0, true))
		b.Addresses = append(b.Addresses, linkAddr(i, 1, true))
		// Each end routes the links beyond its peer through it.
		for j := i + 1; j < n-1; j++ {
			a.Routes = append(a.Routes, linkAddr(j, 0, false).Masked(), linkAddr(j, 0, true).Masked())
		}
		for j := 0; j < i; j++ {
			b.Routes = append(b.Routes, linkAddr(j, 0, false).Masked(), linkAddr(j, 0, true).Masked())
		}
		if edit != nil {
			edit(i, 0, &a)
			edit(i, 1, &b)
		}
		tuns[i] = append(tuns[i], a)
		tuns[i+1] = append(tuns[i+1], b)
	}
	c := &chain{}
	for i := range n {
		fwd := i > 0 && i < n-1
		c.s = append(c.s, newStack(t, stack.Config{Tunnels: tuns[i], Forwarding: fwd}))
	}
	return c
}

// addr returns the address of stack i on its right (or, for the last, left)
// link.
func (c *chain) addr(i int, v6 bool) netip.Addr {
	if i == len(c.s)-1 {
		return linkAddr(i-1, 1, v6).Addr()
	}
	return linkAddr(i, 0, v6).Addr()
}

// icmpCounters is a stack's ICMP and ICMPv6 error counters.
type icmpCounters struct {
	sentTimeExceeded, sentUnreachable, sentTooBig uint64
	rcvdTimeExceeded, rcvdUnreachable, rcvdTooBig uint64
}

func icmpStats(s *stack.Stack, v6 bool) icmpCounters {
	st := s.GVisor().Stats().ICMP
	if v6 {
		return icmpCounters{
			st.V6.PacketsSent.TimeExceeded.Value(), st.V6.PacketsSent.DstUnreachable.Value(), st.V6.PacketsSent.PacketTooBig.Value(),
			st.V6.PacketsReceived.TimeExceeded.Value(), st.V6.PacketsReceived.DstUnreachable.Value(), st.V6.PacketsReceived.PacketTooBig.Value(),
		}
	}
	return icmpCounters{
		st.V4.PacketsSent.TimeExceeded.Value(), st.V4.PacketsSent.DstUnreachable.Value(), 0,
		st.V4.PacketsReceived.TimeExceeded.Value(), st.V4.PacketsReceived.DstUnreachable.Value(), 0,
	}
}

// sendTTL sends one UDP datagram from s to dst:33434 with the given TTL
// (hop limit), the way traceroute probes.
func sendTTL(t testing.TB, s *stack.Stack, dst netip.Addr, ttl int) {
	t.Helper()
	opt := tcpip.IPv4TTLOption
	if dst.Is6() {
		opt = tcpip.IPv6HopLimitOption
	}
	ep := gvEndpoint(t, s, udp.ProtocolNumber, dst)
	defer ep.Close()
	if terr := ep.SetSockOptInt(opt, ttl); terr != nil {
		t.Fatal(terr)
	}
	to := tcpip.FullAddress{Addr: tcpip.AddrFromSlice(dst.AsSlice()), Port: 33434}
	if _, terr := ep.Write(bytes.NewReader([]byte("probe")), tcpip.WriteOptions{To: &to}); terr != nil {
		t.Fatalf("probe to %v with TTL %d: %v", dst, ttl, terr)
	}
}

// raceEnabled reports a -race build.
func raceEnabled() bool {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, st := range bi.Settings {
		if st.Key == "-race" {
			return st.Value == "true"
		}
	}
	return false
}

// TestRouterTCPTransfer sends TCP through two routers, IPv4 and IPv6.
func TestRouterTCPTransfer(t *testing.T) {
	if raceEnabled() {
		// gVisor's ipv4 forwardPacketWithRoute reads the TTL through a
		// header slice taken before DeepCopyForForwarding, which
		// copy-on-writes the header chunk and frees the one the slice
		// points into: a use-after-free the race detector reports as soon
		// as two NICs forward at once (data one way, ACKs the other).
		t.Skip("gVisor IPv4 forwarding use-after-free under concurrent forwarding; see TestRouterTTL for forwarding under -race")
	}
	c := newChain(t, 4, nil)
	for _, v6 := range []bool{false, true} {
		dst := netip.AddrPortFrom(c.addr(3, v6), 5010)
		transfer(t, c.s[0], c.s[3], dst.String(), 4<<20)
	}
	for i, s := range c.s[1:3] {
		fwd := s.GVisor().Stats().IP.Forwarding
		if fwd.Errors.Value() != 0 {
			t.Errorf("router S%d: %d forwarding errors", i+2, fwd.Errors.Value())
		}
	}
}

// icmpDelta is who sent and who received an ICMP error after one probe.
type icmpDelta struct {
	sentTE, sentUnreach, rcvdTE, rcvdUnreach []int // stack indexes
}

// probe sends one UDP datagram from S1 with the given TTL and reports
// which stacks' ICMP error counters moved.
func (c *chain) probe(t *testing.T, dst netip.Addr, ttl int) icmpDelta {
	t.Helper()
	v6 := dst.Is6()
	var before []icmpCounters
	for _, s := range c.s {
		before = append(before, icmpStats(s, v6))
	}
	sendTTL(t, c.s[0], dst, ttl)
	var d icmpDelta
	waitFor(t, "S1 to receive an ICMP error", func() bool {
		a := icmpStats(c.s[0], v6)
		return a.rcvdTimeExceeded+a.rcvdUnreachable > before[0].rcvdTimeExceeded+before[0].rcvdUnreachable
	})
	for _, s := range c.s {
		quiesce(t, s)
	}
	for i, s := range c.s {
		a, b := icmpStats(s, v6), before[i]
		if a.sentTimeExceeded != b.sentTimeExceeded {
			d.sentTE = append(d.sentTE, i)
		}
		if a.sentUnreachable != b.sentUnreachable {
			d.sentUnreach = append(d.sentUnreach, i)
		}
		if a.rcvdTimeExceeded != b.rcvdTimeExceeded {
			d.rcvdTE = append(d.rcvdTE, i)
		}
		if a.rcvdUnreachable != b.rcvdUnreachable {
			d.rcvdUnreach = append(d.rcvdUnreach, i)
		}
	}
	return d
}

// TestRouterTTL traceroutes from S1 to S4 through routers S2 and S3.
func TestRouterTTL(t *testing.T) {
	c := newChain(t, 4, nil)
	for _, v6 := range []bool{false, true} {
		dst := c.addr(3, v6)
		// hop is the stack that should answer the probe with this TTL
		// (RFC 1812 §5.3.1, RFC 4443 §3.3): a router that would
		// forward with TTL 0 discards and sends Time Exceeded, so the
		// probe with TTL k is answered by hop k. (gVisor's IPv4
		// forwarding alone forwards a TTL-1 packet with TTL 0; see
		// forward.go.)
		for ttl := 1; ttl <= 3; ttl++ {
			hop := ttl
			d := c.probe(t, dst, ttl)
			want := icmpDelta{rcvdTE: []int{0}, sentTE: []int{hop}}
			if hop == 3 {
				// The probe reached S4, whose closed port answers.
				want = icmpDelta{rcvdUnreach: []int{0}, sentUnreach: []int{3}}
			}
			if !reflect.DeepEqual(d, want) {
				t.Errorf("v6=%v TTL %d: ICMP counters moved %+v, want %+v (answer from S%d)", v6, ttl, d, want, hop+1)
			}
		}
	}
	// S2 and S3 each discarded one IPv4 probe that arrived with TTL 1.
	for i, s := range c.s[1:3] {
		if n := s.ForwardStats().TTLExpired; n != 1 {
			t.Errorf("router S%d: ForwardStats().TTLExpired = %d, want 1", i+2, n)
		}
	}
}

// TestRouterUnreachable: S1 routes 10.200.0.0/16 (fd00:200::/32) to S2,
// which has no route for it and answers Destination Unreachable.
func TestRouterUnreachable(t *testing.T) {
	c := newChain(t, 4, nil)
	for _, dst := range []string{"10.200.1.1", "fd00:200::1"} {
		a := netip.MustParseAddr(dst)
		r := stack.Route{Prefix: netip.PrefixFrom(a, 16).Masked(), Tunnel: "right"}
		if a.Is6() {
			r.Prefix = netip.PrefixFrom(a, 32).Masked()
		}
		if err := c.s[0].AddRoute(r); err != nil {
			t.Fatal(err)
		}
		d := c.probe(t, a, 64)
		want := icmpDelta{rcvdUnreach: []int{0}, sentUnreach: []int{1}}
		if !reflect.DeepEqual(d, want) {
			t.Errorf("to %v: ICMP counters moved %+v, want %+v", dst, d, want)
		}
		if n := c.s[1].GVisor().Stats().IP.Forwarding.Unrouteable.Value(); n == 0 {
			t.Errorf("to %v: S2 counted no unrouteable packet", dst)
		}
	}
}
