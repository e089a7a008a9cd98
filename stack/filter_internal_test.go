package stack

import (
	"encoding/binary"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// Hand-built packets for the classifier. Checksums are left 0: the
// filter never reads them.

// pkt4 returns an IPv4 packet with the given fragment field (flags and
// offset in 8-byte units), ID and payload.
func pkt4(src, dst string, proto uint8, id, frag uint16, payload []byte) []byte {
	b := make([]byte, 20+len(payload))
	b[0] = 0x45
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	binary.BigEndian.PutUint16(b[4:], id)
	binary.BigEndian.PutUint16(b[6:], frag)
	b[8], b[9] = 64, proto
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(b[12:], s[:])
	copy(b[16:], d[:])
	copy(b[20:], payload)
	return b
}

// pkt6 returns an IPv6 packet whose first next header is next and whose
// payload (extension headers included) is payload.
func pkt6(src, dst string, next uint8, payload []byte) []byte {
	b := make([]byte, 40+len(payload))
	b[0] = 0x60
	binary.BigEndian.PutUint16(b[4:], uint16(len(payload)))
	b[6], b[7] = next, 64
	s, d := netip.MustParseAddr(src).As16(), netip.MustParseAddr(dst).As16()
	copy(b[8:], s[:])
	copy(b[24:], d[:])
	copy(b[40:], payload)
	return b
}

// l4 returns a TCP (20 bytes, flags set) or UDP (8 bytes) header.
func l4(proto uint8, sport, dport uint16, flags uint8) []byte {
	n := 8
	if proto == protoTCP {
		n = 20
	}
	b := make([]byte, n)
	binary.BigEndian.PutUint16(b, sport)
	binary.BigEndian.PutUint16(b[2:], dport)
	if proto == protoTCP {
		b[12], b[13] = 5<<4, flags
	}
	return b
}

// icmpMsg returns an ICMP header of the given type with identifier id (echo)
// followed by rest.
func icmpMsg(typ uint8, id uint16, rest []byte) []byte {
	b := make([]byte, 8+len(rest))
	b[0] = typ
	binary.BigEndian.PutUint16(b[4:], id)
	copy(b[8:], rest)
	return b
}

const (
	tcpSYN = 0x02
	tcpACK = 0x10
	tcpFIN = 0x01
)

var (
	tun4, us4, far4 = "10.0.1.1", "10.0.1.2", "10.0.2.2"
	tun6, us6       = "fd00:1::1", "fd00:1::2"
)

func key(src, dst string, proto uint8, sport, dport uint16) flowKey {
	return flowKey{netip.MustParseAddr(src), netip.MustParseAddr(dst), sport, dport, proto}
}

func TestClassify(t *testing.T) {
	hbh := []byte{protoUDP, 0, 1, 4, 0, 0, 0, 0} // hop-by-hop, PadN
	frag6 := func(next uint8, off uint16, more bool, id uint32) []byte {
		b := []byte{next, 0, 0, 0, 0, 0, 0, 0}
		fo := off << 3
		if more {
			fo |= 1
		}
		binary.BigEndian.PutUint16(b[2:], fo)
		binary.BigEndian.PutUint32(b[4:], id)
		return b
	}
	cat := func(bs ...[]byte) (out []byte) {
		for _, b := range bs {
			out = append(out, b...)
		}
		return out
	}
	for _, tc := range []struct {
		name string
		pkt  []byte
		want packetClass
		err  bool
	}{
		{name: "tcp syn", pkt: pkt4(tun4, us4, protoTCP, 7, 0, l4(protoTCP, 40000, 22, tcpSYN)),
			want: packetClass{key: key(tun4, us4, protoTCP, 40000, 22), tcpFlags: tcpSYN, hasPorts: true}},
		{name: "udp first fragment", pkt: pkt4(tun4, us4, protoUDP, 7, 0x2000, l4(protoUDP, 5000, 53, 0)),
			want: packetClass{key: key(tun4, us4, protoUDP, 5000, 53), hasPorts: true, first: true,
				frag: fragKey{netip.MustParseAddr(tun4), netip.MustParseAddr(us4), 7, protoUDP}}},
		{name: "udp later fragment", pkt: pkt4(tun4, us4, protoUDP, 7, 185, make([]byte, 16)),
			want: packetClass{key: key(tun4, us4, protoUDP, 0, 0), kind: kindFragment,
				frag: fragKey{netip.MustParseAddr(tun4), netip.MustParseAddr(us4), 7, protoUDP}}},
		{name: "tiny tcp first fragment", pkt: pkt4(tun4, us4, protoTCP, 7, 0x2000, l4(protoTCP, 1, 2, 0)[:8]), err: true},
		{name: "echo request", pkt: pkt4(tun4, us4, protoICMP, 1, 0, icmpMsg(8, 0x1234, nil)),
			want: packetClass{key: key(tun4, us4, protoICMP, 0x1234, 0x1234)}},
		{name: "port unreachable quoting our udp", pkt: pkt4(far4, us4, protoICMP, 1, 0,
			icmpMsg(3, 0, pkt4(us4, tun4, protoUDP, 9, 0, l4(protoUDP, 5353, 53, 0)))),
			want: packetClass{key: key(far4, us4, protoICMP, 0, 0), kind: kindICMPError,
				quoted: key(us4, tun4, protoUDP, 5353, 53)}},
		{name: "icmp error quoting garbage", pkt: pkt4(far4, us4, protoICMP, 1, 0, icmpMsg(3, 0, []byte{0x45})),
			want: packetClass{key: key(far4, us4, protoICMP, 0, 0), kind: kindICMPOther}},
		{name: "timestamp", pkt: pkt4(tun4, us4, protoICMP, 1, 0, icmpMsg(13, 0, nil)),
			want: packetClass{key: key(tun4, us4, protoICMP, 0, 0), kind: kindICMPOther}},
		{name: "gre", pkt: pkt4(tun4, us4, 47, 1, 0, []byte{0, 0, 8, 0}),
			want: packetClass{key: key(tun4, us4, 47, 0, 0)}},
		{name: "truncated ipv4", pkt: pkt4(tun4, us4, protoTCP, 1, 0, nil)[:19], err: true},
		{name: "ipv6 udp after hop-by-hop", pkt: pkt6(tun6, us6, 0, cat(hbh, l4(protoUDP, 1000, 2000, 0))),
			want: packetClass{key: key(tun6, us6, protoUDP, 1000, 2000), hasPorts: true}},
		{name: "ipv6 first fragment", pkt: pkt6(tun6, us6, 44, cat(frag6(protoTCP, 0, true, 99), l4(protoTCP, 1, 443, tcpSYN))),
			want: packetClass{key: key(tun6, us6, protoTCP, 1, 443), hasPorts: true, tcpFlags: tcpSYN, first: true,
				frag: fragKey{netip.MustParseAddr(tun6), netip.MustParseAddr(us6), 99, protoTCP}}},
		{name: "ipv6 later fragment", pkt: pkt6(tun6, us6, 44, cat(frag6(protoTCP, 100, false, 99), make([]byte, 8))),
			want: packetClass{key: key(tun6, us6, protoTCP, 0, 0), kind: kindFragment,
				frag: fragKey{netip.MustParseAddr(tun6), netip.MustParseAddr(us6), 99, protoTCP}}},
		{name: "ipv6 atomic fragment", pkt: pkt6(tun6, us6, 44, cat(frag6(protoUDP, 0, false, 5), l4(protoUDP, 7, 8, 0))),
			want: packetClass{key: key(tun6, us6, protoUDP, 7, 8), hasPorts: true}},
		{name: "ipv6 extension header past the end", pkt: pkt6(tun6, us6, 60, []byte{protoUDP, 4, 0, 0, 0, 0, 0, 0}), err: true},
		{name: "ipv6 echo reply", pkt: pkt6(tun6, us6, protoICMPv6, icmpMsg(129, 77, nil)),
			want: packetClass{key: key(tun6, us6, protoICMPv6, 77, 77)}},
		{name: "ipv6 packet too big quoting our tcp", pkt: pkt6(tun6, us6, protoICMPv6,
			icmpMsg(2, 0, pkt6(us6, "fd00:2::2", protoTCP, l4(protoTCP, 33000, 443, tcpACK)[:8]))),
			want: packetClass{key: key(tun6, us6, protoICMPv6, 0, 0), kind: kindICMPError,
				quoted: key(us6, "fd00:2::2", protoTCP, 33000, 443)}},
		{name: "version 5", pkt: []byte{0x50, 0, 0, 0}, err: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var c packetClass
			err := classify(tc.pkt, &c)
			if (err != nil) != tc.err {
				t.Fatalf("classify(% x) error %v, want error %v", tc.pkt, err, tc.err)
			}
			if tc.err {
				return
			}
			if diff := cmp.Diff(tc.want, c, cmp.AllowUnexported(packetClass{}, flowKey{}, fragKey{}),
				cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
				t.Errorf("classify(% x) mismatch (-want +got):\n%s", tc.pkt, diff)
			}
		})
	}
}

// fakeClock is a settable clock for the flow table.
type fakeClock struct{ ns int64 }

func (c *fakeClock) now() int64              { return c.ns }
func (c *fakeClock) advance(d time.Duration) { c.ns += int64(d) }

func newTestFilter(t testing.TB, f Filter) (*tunnelFilter, *fakeClock) {
	t.Helper()
	tf, err := newTunnelFilter(&f, "test", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	clk := &fakeClock{ns: 1}
	tf.now = clk.now
	return tf, clk
}

// TestFilterStateExpiry: replies pass while their flow lives and are
// dropped once it has been idle past its timeout.
func TestFilterStateExpiry(t *testing.T) {
	tf, clk := newTestFilter(t, Filter{})
	query := pkt4(us4, tun4, protoUDP, 1, 0, l4(protoUDP, 5353, 53, 0))
	reply := pkt4(tun4, us4, protoUDP, 2, 0, l4(protoUDP, 53, 5353, 0))
	if tf.inbound(reply) {
		t.Fatal("unsolicited reply passed")
	}
	tf.outbound(query)
	if !tf.inbound(reply) {
		t.Fatal("reply to our query dropped")
	}
	clk.advance(udpTimeout - time.Second)
	if !tf.inbound(reply) {
		t.Fatal("reply dropped before the UDP timeout")
	}
	clk.advance(udpTimeout) // idle a full timeout since the last reply
	if tf.inbound(reply) {
		t.Fatal("reply passed after the flow expired")
	}
	if got := tf.stats(); got.Denied != 2 || got.Flows != 0 {
		t.Errorf("stats = %+v, want 2 denied and no flows", got)
	}

	// TCP: 30 s until packets went both ways, then 5 minutes.
	syn := pkt4(us4, tun4, protoTCP, 3, 0, l4(protoTCP, 40000, 22, tcpSYN))
	synack := pkt4(tun4, us4, protoTCP, 4, 0, l4(protoTCP, 22, 40000, tcpSYN|tcpACK))
	ack := pkt4(tun4, us4, protoTCP, 5, 0, l4(protoTCP, 22, 40000, tcpACK))
	tf.outbound(syn)
	clk.advance(tcpTimeout + time.Second)
	if tf.inbound(synack) {
		t.Fatal("SYN-ACK passed 31 s after an unanswered SYN")
	}
	tf.outbound(syn)
	if !tf.inbound(synack) {
		t.Fatal("SYN-ACK dropped")
	}
	clk.advance(4 * time.Minute)
	if !tf.inbound(ack) {
		t.Fatal("established flow expired after 4 minutes idle")
	}
	fin := pkt4(tun4, us4, protoTCP, 6, 0, l4(protoTCP, 22, 40000, tcpFIN|tcpACK))
	if !tf.inbound(fin) {
		t.Fatal("FIN dropped")
	}
	clk.advance(tcpTimeout + time.Second)
	if tf.inbound(ack) {
		t.Fatal("flow outlived 30 s after FIN")
	}

	// ICMP echo: our request's reply passes for 30 s.
	req := pkt4(us4, tun4, protoICMP, 7, 0, icmpMsg(8, 42, nil))
	rep := pkt4(tun4, us4, protoICMP, 8, 0, icmpMsg(0, 42, nil))
	tf.outbound(req)
	if !tf.inbound(rep) {
		t.Fatal("echo reply dropped")
	}
	if tf.inbound(pkt4(tun4, us4, protoICMP, 8, 0, icmpMsg(0, 43, nil))) {
		t.Fatal("echo reply with another identifier passed")
	}
	clk.advance(icmpTimeout + time.Second)
	if tf.inbound(rep) {
		t.Fatal("echo reply passed after 31 s")
	}
}

// TestFilterICMPErrorAndFragments: an ICMP error quoting a flow of ours
// passes, one quoting another does not; later fragments pass only after
// their first fragment did.
func TestFilterICMPErrorAndFragments(t *testing.T) {
	tf, clk := newTestFilter(t, Filter{Rules: []FilterRule{
		{Action: FilterAllow, Protocol: FilterUDP, Ports: []PortRange{{4789, 4789}}},
	}})
	ours := pkt4(us4, far4, protoUDP, 1, 0, l4(protoUDP, 5353, 53, 0))
	tf.outbound(ours)
	unreach := pkt4(tun4, us4, protoICMP, 2, 0, icmpMsg(3, 0, ours))
	if !tf.inbound(unreach) {
		t.Fatal("ICMP error quoting our flow dropped")
	}
	other := pkt4(tun4, us4, protoICMP, 3, 0, icmpMsg(3, 0, pkt4(us4, far4, protoUDP, 1, 0, l4(protoUDP, 5354, 53, 0))))
	if tf.inbound(other) {
		t.Fatal("ICMP error quoting an unknown flow passed")
	}

	later := pkt4(tun4, us4, protoUDP, 9, 185, make([]byte, 16))
	if tf.inbound(later) {
		t.Fatal("later fragment passed before its first")
	}
	if tf.inbound(pkt4(tun4, us4, protoUDP, 9, 0x2000, l4(protoUDP, 1, 4790, 0))) {
		t.Fatal("first fragment to a denied port passed")
	}
	if tf.inbound(later) {
		t.Fatal("later fragment passed after its first was denied")
	}
	if !tf.inbound(pkt4(tun4, us4, protoUDP, 10, 0x2000, l4(protoUDP, 1, 4789, 0))) {
		t.Fatal("first fragment to the allowed port dropped")
	}
	later10 := pkt4(tun4, us4, protoUDP, 10, 185, make([]byte, 16))
	if !tf.inbound(later10) {
		t.Fatal("later fragment of an allowed datagram dropped")
	}
	clk.advance(fragTimeout + time.Second)
	if tf.inbound(later10) {
		t.Fatal("later fragment passed 31 s after its first")
	}
	if got := tf.stats().Denied; got != 5 {
		t.Errorf("denied = %d, want 5", got)
	}
}

// TestFilterTableBound: a flood of new flows keeps the table at MaxFlows
// and counts every eviction, and an established TCP connection, whose
// flow lives longest, is never the one evicted.
func TestFilterTableBound(t *testing.T) {
	for _, max := range []int{8, 2048} {
		tf, clk := newTestFilter(t, Filter{MaxFlows: max, Default: FilterAllow})
		tf.outbound(pkt4(us4, tun4, protoTCP, 1, 0, l4(protoTCP, 40000, 22, tcpSYN)))
		established := pkt4(tun4, us4, protoTCP, 1, 0, l4(protoTCP, 22, 40000, tcpSYN|tcpACK))
		if !tf.inbound(established) {
			t.Fatal("SYN-ACK dropped")
		}
		tcpFlow := key(tun4, us4, protoTCP, 22, 40000)
		const n = 5000
		for i := range n {
			clk.advance(time.Millisecond)
			p := pkt4(tun4, us4, protoUDP, 1, 0, l4(protoUDP, uint16(i), 53, 0))
			if !tf.inbound(p) {
				t.Fatalf("max %d: packet %d dropped by default allow", max, i)
			}
		}
		if !tf.lookup(tcpFlow) {
			t.Errorf("max %d: the established TCP flow was evicted by the flood", max)
		}
		st := tf.stats()
		if st.Flows > max {
			t.Errorf("max %d: %d flows in the table", max, st.Flows)
		}
		if want := uint64(n + 1 - st.Flows); st.Evicted != want {
			t.Errorf("max %d: evicted %d, want %d (%d flows left of %d)", max, st.Evicted, want, st.Flows, n+1)
		}
		total := 0
		for i := range tf.shards {
			sh := &tf.shards[i]
			sh.mu.Lock()
			total += len(sh.m)
			sh.mu.Unlock()
		}
		if total != st.Flows {
			t.Errorf("max %d: shards hold %d flows, counter says %d", max, total, st.Flows)
		}
	}
	// Expired flows are swept instead of evicting live ones.
	tf, clk := newTestFilter(t, Filter{MaxFlows: 4})
	for i := range 4 {
		tf.outbound(pkt4(us4, tun4, protoUDP, 1, 0, l4(protoUDP, 53, uint16(i), 0)))
	}
	clk.advance(udpTimeout + time.Second)
	for i := range 4 {
		tf.outbound(pkt4(us4, tun4, protoUDP, 1, 0, l4(protoUDP, 53, uint16(100+i), 0)))
	}
	if st := tf.stats(); st.Evicted != 0 || st.Flows != 4 {
		t.Errorf("after expiry: %+v, want 4 flows and no evictions", st)
	}
}

// TestFilterRules: first match wins, ports only match TCP and UDP,
// default applies when nothing matches.
func TestFilterRules(t *testing.T) {
	f := Filter{Default: FilterAllow, Rules: []FilterRule{
		{Action: FilterAllow, Protocol: FilterTCP, Destinations: []netip.Prefix{netip.MustParsePrefix("10.0.2.0/24")}, Ports: []PortRange{{443, 443}}},
		{Action: FilterDeny, Destinations: []netip.Prefix{netip.MustParsePrefix("10.0.2.0/24"), netip.MustParsePrefix("fd00:2::/32")}},
		{Action: FilterDeny, Protocol: FilterUDP, Ports: []PortRange{{1, 1023}}},
	}}
	for _, tc := range []struct {
		pkt  []byte
		want FilterAction
	}{
		{pkt4(tun4, far4, protoTCP, 1, 0, l4(protoTCP, 1, 443, tcpSYN)), FilterAllow},
		{pkt4(tun4, far4, protoTCP, 1, 0, l4(protoTCP, 1, 444, tcpSYN)), FilterDeny},
		{pkt4(tun4, far4, protoICMP, 1, 0, icmpMsg(8, 1, nil)), FilterDeny},
		{pkt4(tun4, us4, protoUDP, 1, 0, l4(protoUDP, 1, 53, 0)), FilterDeny},
		{pkt4(tun4, us4, protoUDP, 1, 0, l4(protoUDP, 1, 1024, 0)), FilterAllow},
		{pkt4(tun4, us4, protoTCP, 1, 0, l4(protoTCP, 1, 53, 0)), FilterAllow},
		{pkt6(tun6, "fd00:2::9", protoUDP, l4(protoUDP, 1, 9999, 0)), FilterDeny},
	} {
		var c packetClass
		if err := classify(tc.pkt, &c); err != nil {
			t.Fatal(err)
		}
		if got := f.match(&c); got != tc.want {
			t.Errorf("match(%v %v -> %v:%d) = %v, want %v", c.key.proto, c.key.src, c.key.dst, c.key.dport, got, tc.want)
		}
	}
}

// TestFilterNoAllocs: deciding a packet of a known flow, and noting an
// outgoing one, allocates nothing.
func TestFilterNoAllocs(t *testing.T) {
	tf, _ := newTestFilter(t, Filter{})
	out := pkt4(us4, tun4, protoTCP, 1, 0, l4(protoTCP, 40000, 22, tcpACK))
	in := pkt4(tun4, us4, protoTCP, 1, 0, l4(protoTCP, 22, 40000, tcpACK))
	tf.outbound(out)
	if n := testing.AllocsPerRun(1000, func() {
		tf.outbound(out)
		if !tf.inbound(in) {
			t.Fatal("dropped")
		}
	}); n != 0 {
		t.Errorf("%v allocations per packet pair, want 0", n)
	}
}

func BenchmarkFilter(b *testing.B) {
	tf, _ := newTestFilter(b, Filter{Rules: []FilterRule{
		{Action: FilterAllow, Protocol: FilterTCP, Ports: []PortRange{{22, 22}, {443, 443}}},
	}})
	out := pkt4(us4, tun4, protoTCP, 1, 0, l4(protoTCP, 40000, 22, tcpACK))
	in := pkt4(tun4, us4, protoTCP, 1, 0, l4(protoTCP, 22, 40000, tcpACK))
	tf.outbound(out)
	b.Run("inbound-known-flow", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			tf.inbound(in)
		}
	})
	b.Run("outbound", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			tf.outbound(out)
		}
	})
	denied := pkt4(tun4, us4, protoUDP, 1, 0, l4(protoUDP, 1, 53, 0))
	b.Run("inbound-denied", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			tf.inbound(denied)
		}
	})
}

// FuzzClassify: the classifier never panics, reports a key whose
// addresses are of the packet's family, and agrees with itself on the
// same bytes.
func FuzzClassify(f *testing.F) {
	f.Add(pkt4(tun4, us4, protoTCP, 7, 0, l4(protoTCP, 40000, 22, tcpSYN)))
	f.Add(pkt4(tun4, us4, protoUDP, 7, 0x2000, l4(protoUDP, 5000, 53, 0)))
	f.Add(pkt4(tun4, us4, protoUDP, 7, 185, make([]byte, 16)))
	f.Add(pkt4(far4, us4, protoICMP, 1, 0, icmpMsg(3, 0, pkt4(us4, tun4, protoUDP, 9, 0, l4(protoUDP, 5353, 53, 0)))))
	f.Add(pkt4(tun4, us4, protoICMP, 1, 0, icmpMsg(8, 0x1234, nil)))
	f.Add(pkt6(tun6, us6, 0, append([]byte{protoUDP, 0, 1, 4, 0, 0, 0, 0}, l4(protoUDP, 1000, 2000, 0)...)))
	f.Add(pkt6(tun6, us6, 44, append([]byte{protoTCP, 0, 0, 1, 0, 0, 0, 99}, l4(protoTCP, 1, 443, tcpSYN)...)))
	f.Add(pkt6(tun6, us6, 44, append([]byte{protoTCP, 0, 3, 32, 0, 0, 0, 99}, make([]byte, 8)...)))
	f.Add(pkt6(tun6, us6, protoICMPv6, icmpMsg(2, 0, pkt6(us6, "fd00:2::2", protoTCP, l4(protoTCP, 33000, 443, tcpACK)[:8]))))
	f.Fuzz(func(t *testing.T, b []byte) {
		var c, again packetClass
		err := classify(b, &c)
		if err2 := classify(b, &again); (err == nil) != (err2 == nil) || c != again {
			t.Fatalf("classify is not deterministic")
		}
		if err != nil {
			return
		}
		if c.key.src.Is4() != (b[0]>>4 == 4) || c.key.dst.Is4() != c.key.src.Is4() {
			t.Fatalf("key %v -> %v for an IPv%d packet", c.key.src, c.key.dst, b[0]>>4)
		}
		if c.kind == kindFragment && (c.hasPorts || c.key.sport != 0 || c.key.dport != 0) {
			t.Fatalf("ports on a later fragment: %+v", c)
		}
		// Deciding it must not panic either.
		tf, _ := newTestFilter(t, Filter{})
		tf.outbound(b)
		tf.inbound(b)
	})
}
