//go:build linux

package endpoint

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/ipipstack/ipipstack/endpoint/encap"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
)

// These tests use raw_linux_test.go's harness: crafted datagrams go
// through the real receive goroutine and deliver into a recording
// dispatcher.

// wrap4 puts payload behind a valid IPv4 header src -> dst of protocol proto.
func wrap4(src, dst string, proto uint8, payload []byte) []byte {
	p := make([]byte, 20+len(payload))
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	p[8], p[9] = 64, proto
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(p[12:], s[:])
	copy(p[16:], d[:])
	binary.BigEndian.PutUint16(p[10:], encap.Checksum(p[:20]))
	copy(p[20:], payload)
	return p
}

// wrap6 puts payload behind an IPv6 header src -> dst with next header next.
func wrap6(src, dst string, next uint8, payload []byte) []byte {
	p := make([]byte, 40+len(payload))
	p[0] = 0x60
	binary.BigEndian.PutUint16(p[4:], uint16(len(payload)))
	p[6], p[7] = next, 64
	copy(p[8:], netip.MustParseAddr(src).AsSlice())
	copy(p[24:], netip.MustParseAddr(dst).AsSlice())
	copy(p[40:], payload)
	return p
}

// wrapFOU puts payload in a UDP datagram to dport behind an IPv4 header.
func wrapFOU(src, dst string, dport uint16, payload []byte) []byte {
	u := make([]byte, 8+len(payload))
	binary.BigEndian.PutUint16(u[0:], 40000)
	binary.BigEndian.PutUint16(u[2:], dport)
	binary.BigEndian.PutUint16(u[4:], uint16(len(u)))
	copy(u[8:], payload)
	return wrap4(src, dst, 17, u)
}

// nestKind is one way to nest a tunnel header.
type nestKind int

const (
	nestIPIP nestKind = iota // protocol 4 to dst
	nestFOU                  // UDP to dst:4700, the harness's tunnel port
	nestMix                  // alternately IPIP and FOU
)

// nested wraps core in n tunnel headers of kind to dst, then in the packet
// the peer sends: 10.99.0.1 -> 10.99.0.2, of protocol 4, or UDP to port
// 4700 for FOU (a tunnel header, but not addressed to the endpoint's own
// outer address, so not counted itself).
func nested(n int, kind nestKind, dst string, core []byte) []byte {
	p := core
	for i := range n {
		if kind == nestFOU || kind == nestMix && i%2 == 1 {
			p = wrapFOU("10.99.0.1", dst, 4700, p)
		} else {
			p = wrap4("10.99.0.1", dst, 4, p)
		}
	}
	if kind == nestFOU {
		return wrapFOU("10.99.0.1", "10.99.0.2", 4700, p)
	}
	return wrap4("10.99.0.1", "10.99.0.2", 4, p)
}

// TestRecursionByNesting checks that an inner packet carrying more tunnel
// headers addressed back to the endpoint than Options.MaxNesting allows is
// dropped as Recursion, and that one within the limit, or nesting headers
// to other addresses or ports, is delivered.
func TestRecursionByNesting(t *testing.T) {
	core := inner4("10.99.0.1", "10.99.0.2", 0)
	us := rtLocal4.String()
	udp := func(inner []byte) Message {
		return Message{Buffers: [][]byte{inner}, Addr: netip.AddrPortFrom(rtPeer4, 4701)}
	}
	raw6 := func(proto uint8, inner []byte) Message {
		return Message{Buffers: [][]byte{inner}, Addr: netip.AddrPortFrom(rtPeer6, 0), Proto: proto, HasTOS: true}
	}
	tests := []struct {
		name    string
		framing Framing
		max     int // Options.MaxNesting
		msg     func(inner []byte) Message
		pkt     []byte
		drop    bool
	}{
		{"ipip 4 deep", FramingUDP, 0, udp, nested(4, nestIPIP, us, core), false},
		{"ipip 5 deep", FramingUDP, 0, udp, nested(5, nestIPIP, us, core), true},
		{"ipip 100 deep", FramingUDP, 0, udp, nested(100, nestIPIP, us, core), true},
		{"fou 4 deep", FramingUDP, 0, udp, nested(4, nestFOU, us, core), false},
		{"fou 5 deep", FramingUDP, 0, udp, nested(5, nestFOU, us, core), true},
		{"mixed 5 deep", FramingUDP, 0, udp, nested(5, nestMix, us, core), true},
		{"6in4 inside", FramingUDP, 0, udp, nested(4, nestIPIP, us, wrap4("10.99.0.1", us, 41, inner6("fd99::1", "fd99::2", 0))), true},
		{"fou to another port", FramingUDP, 0, udp, func() []byte {
			p := core
			for range 20 {
				p = wrapFOU("10.99.0.1", us, 4701, p)
			}
			return wrap4("10.99.0.1", "10.99.0.2", 4, p)
		}(), false},
		{"ipip elsewhere", FramingUDP, 0, udp, nested(20, nestIPIP, "198.51.100.9", core), false},
		{"limit 1, 1 deep", FramingUDP, 1, udp, nested(1, nestIPIP, us, core), false},
		{"limit 1, 2 deep", FramingUDP, 1, udp, nested(2, nestMix, us, core), true},
		{"none allowed, 0 deep", FramingUDP, -1, udp, nested(0, nestIPIP, us, core), false},
		{"none allowed, 1 deep", FramingUDP, -1, udp, nested(1, nestFOU, us, core), true},
		{"raw ipip 5 deep", FramingRawIPv4, 0, func(in []byte) Message { return raw4(rtPeer4, 4, 0, in) }, nested(5, nestIPIP, us, core), true},
		{"raw ipip 4 deep", FramingRawIPv4, 0, func(in []byte) Message { return raw4(rtPeer4, 4, 0, in) }, nested(4, nestIPIP, us, core), false},
		// A raw tunnel has no port: UDP is just UDP.
		{"raw fou not counted", FramingRawIPv4, 0, func(in []byte) Message { return raw4(rtPeer4, 4, 0, in) }, nested(8, nestFOU, us, core), false},
		{"ip6ip6 5 deep", FramingRawIPv6, 0, func(in []byte) Message { return raw6(41, in) }, func() []byte {
			p := inner6("fd99::1", "fd99::2", 0)
			for range 5 {
				p = wrap6("fd99::1", rtLocal6.String(), 41, p)
			}
			return wrap6("fd99::1", "fd99::2", 41, p)
		}(), true},
		{"4in6 1 deep", FramingRawIPv6, 0, func(in []byte) Message { return raw6(41, in) },
			wrap6("fd99::1", "fd99::2", 41, wrap6("fd99::1", rtLocal6.String(), 4, core)), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newRTHarness(t, tt.framing, func(o *Options) { o.MaxNesting = tt.max })
			m := tt.msg(tt.pkt)
			if tt.drop {
				h.wantDrop(t, m, encap.Recursion)
				return
			}
			var proto tcpip.NetworkProtocolNumber = ipv4.ProtocolNumber
			if tt.pkt[0]>>4 == 6 {
				proto = ipv6.ProtocolNumber
			}
			h.wantDeliver(t, m, proto, tt.pkt)
		})
	}
}

// TestRecursionDropAllocs checks that dropping a deeply nested packet, the
// walk included, does not allocate.
func TestRecursionDropAllocs(t *testing.T) {
	tr := newMemTransport(FramingUDP, netip.AddrPortFrom(rtLocal4, 4700))
	ep, err := New(Options{Transport: tr, Remote: netip.AddrPortFrom(rtPeer4, 4701), AllowedSources: rtAllowed})
	if err != nil {
		t.Fatal(err)
	}
	defer ep.Close() // never attached: deliver is called directly
	buf := make([]byte, 1<<16)
	m := Message{Buffers: [][]byte{buf}, N: copy(buf, nested(50, nestMix, rtLocal4.String(), inner4("10.99.0.1", "10.99.0.2", 0))),
		Addr: netip.AddrPortFrom(rtPeer4, 4701)}
	var d nopDispatcher
	rx := directRX(d)
	n := testing.AllocsPerRun(1000, func() { ep.deliver(rx, &m) })
	if got := ep.Stats(); got.Drops[encap.Recursion] == 0 || got.RxPackets != 0 {
		t.Fatalf("the datagram was not dropped as recursion: %+v", got)
	}
	if n != 0 {
		t.Errorf("dropping a nested datagram allocates %.1f times, want 0", n)
	}
}
