package endpoint

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/endpoint/encap"
	"github.com/ipipstack/ipipstack/internal/pkttest"

	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
)

// TestRoamingRawOuterHeader checks that after the peer of a raw tunnel
// roams, what the endpoint sends names the new peer in the outer header it
// writes (IP_HDRINCL: the kernel sends that header as it is), not only in
// the socket address, over IPv4 and IPv6; and that it follows the peer back.
func TestRoamingRawOuterHeader(t *testing.T) {
	tests := []struct {
		name    string
		framing Framing
		moved   netip.Addr
		// dst is the offset of the destination address in the outer
		// header (RFC 791 §3.1, RFC 8200 §3).
		dst int
		msg func(src netip.Addr) Message
		pkt func(t *testing.T) []byte
	}{
		{
			name: "ipv4", framing: FramingRawIPv4, moved: netip.MustParseAddr("192.0.2.9"), dst: 16,
			msg: func(src netip.Addr) Message { return raw4(src, 4, 0, inner4("10.99.0.1", "10.99.0.2", 0)) },
		},
		{
			name: "ipv6", framing: FramingRawIPv6, moved: netip.MustParseAddr("2001:db8::9"), dst: 24,
			msg: func(src netip.Addr) Message {
				return Message{Buffers: [][]byte{inner6("fd99::1", "fd99::2", 0)}, Addr: netip.AddrPortFrom(src, 0), Proto: 41, HasTOS: true}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newRTHarness(t, tc.framing, func(o *Options) { o.Roaming = true })
			h.ep.roamer.moveInterval = 0
			orig := h.ep.Remote().Addr()
			proto, inner := ipv4.ProtocolNumber, inner4("10.99.0.1", "10.99.0.2", 0)
			if tc.framing == FramingRawIPv6 {
				proto, inner = ipv6.ProtocolNumber, inner6("fd99::1", "fd99::2", 0)
			}
			for _, peer := range []netip.Addr{tc.moved, orig} {
				h.wantDeliver(t, tc.msg(peer), proto, inner)
				h.confirmRoam(t, netip.AddrPortFrom(peer, 0))
				if got := h.ep.Remote().Addr(); got != peer {
					t.Fatalf("Remote() = %v, want %v", got, peer)
				}
				pkt := gvPacket4(t, 0, 64)
				if _, err := h.ep.WritePackets(pktList(pkt)); err != nil {
					t.Fatal(err)
				}
				pkt.DecRef()
				sent := h.tr.takeSent()
				if len(sent) != 1 {
					t.Fatalf("%d datagrams sent, want 1", len(sent))
				}
				s := sent[0]
				if s.addr.Addr() != peer {
					t.Errorf("sent to socket address %v, want %v", s.addr, peer)
				}
				n := 4
				if peer.Is6() {
					n = 16
				}
				got, _ := netip.AddrFromSlice(s.data[tc.dst : tc.dst+n])
				if got != peer {
					t.Errorf("outer header destination %v, want the peer's address %v", got, peer)
				}
				if tc.framing == FramingRawIPv4 && pkttest.Checksum(s.data[:20], 0) != 0 {
					t.Errorf("outer IPv4 header checksum wrong: % x", s.data[:20])
				}
			}
		})
	}
}

// confirmRoam answers the echo request the endpoint sent to from (the
// return routability probe of roam.go) as the roamed peer would, and
// checks that the peer then moved there.
func (h *rtHarness) confirmRoam(t *testing.T, from netip.AddrPort) {
	t.Helper()
	var probe []byte
	for _, s := range h.tr.takeSent() {
		if s.addr == from {
			probe = s.data
		}
	}
	if probe == nil {
		t.Fatalf("no echo request sent to %v", from)
	}
	inner := probe
	switch h.ep.framing {
	case FramingRawIPv4:
		_, inner, _ = encap.DecodeIPv4(probe)
	case FramingRawIPv6:
		_, inner, _ = encap.DecodeIPv6(probe)
	}
	reply := echoReply(t, inner)
	m := Message{Buffers: [][]byte{reply}, Addr: from, HasTOS: true}
	switch h.ep.framing {
	case FramingRawIPv4:
		m = raw4(from.Addr(), 4, 0, reply)
	case FramingRawIPv6:
		m.Proto = 4
	}
	if reply[0]>>4 == 6 {
		m.Proto = 41
		if h.ep.framing == FramingRawIPv4 {
			m = raw4(from.Addr(), 41, 0, reply)
		}
	}
	h.inject(t, m)
	if got := h.ep.Remote(); got != from {
		t.Fatalf("Remote() = %v after the echo reply from %v", got, from)
	}
}

// echoReply turns an ICMP or ICMPv6 echo request into the reply a host
// sends: addresses swapped, type changed, checksum recomputed.
func echoReply(t *testing.T, req []byte) []byte {
	t.Helper()
	p := append([]byte(nil), req...)
	if p[0]>>4 == 4 {
		ihl := int(p[0]&0xf) * 4
		var a [4]byte
		copy(a[:], p[12:16])
		copy(p[12:16], p[16:20])
		copy(p[16:20], a[:])
		l4 := p[ihl:]
		if l4[0] != 8 {
			t.Fatalf("probe is ICMP type %d, want an echo request", l4[0])
		}
		l4[0], l4[2], l4[3] = 0, 0, 0
		binary.BigEndian.PutUint16(l4[2:], pkttest.Checksum(l4, 0))
		return p
	}
	var a [16]byte
	copy(a[:], p[8:24])
	copy(p[8:24], p[24:40])
	copy(p[24:40], a[:])
	l4 := p[40:]
	if l4[0] != 128 {
		t.Fatalf("probe is ICMPv6 type %d, want an echo request", l4[0])
	}
	l4[0], l4[2], l4[3] = 129, 0, 0
	src, _ := netip.AddrFromSlice(p[8:24])
	dst, _ := netip.AddrFromSlice(p[24:40])
	binary.BigEndian.PutUint16(l4[2:], pkttest.Checksum(l4, pkttest.PseudoSum(src, dst, 58, len(l4))))
	return p
}

// TestRoamingNeedsReturnRoutability: valid packets from a new address are
// delivered but do not move the peer; a forged echo reply (wrong nonce)
// does not either; only the reply to the probe does, and a second move
// within the rate limit is refused.
func TestRoamingNeedsReturnRoutability(t *testing.T) {
	h := newRTHarness(t, FramingUDP, func(o *Options) { o.Roaming = true })
	peer := h.ep.Remote()
	attacker := netip.MustParseAddrPort("198.51.100.66:5000")
	v4 := inner4("10.99.0.1", "10.99.0.2", 0)
	for range 5 {
		h.wantDeliver(t, Message{Buffers: [][]byte{append([]byte(nil), v4...)}, Addr: attacker}, 0x800, v4)
	}
	if got := h.ep.Remote(); got != peer {
		t.Fatalf("Remote() = %v after packets from an unconfirmed address, want %v", got, peer)
	}
	sent := h.tr.takeSent()
	if len(sent) != 1 || sent[0].addr != attacker {
		t.Fatalf("sent %d datagrams, want one probe to %v (at most one per second)", len(sent), attacker)
	}
	// A reply with the wrong nonce: no move.
	forged := echoReply(t, sent[0].data)
	forged[len(forged)-1] ^= 1
	binary.BigEndian.PutUint16(forged[22:], 0)
	binary.BigEndian.PutUint16(forged[22:], pkttest.Checksum(forged[20:], 0))
	h.inject(t, Message{Buffers: [][]byte{forged}, Addr: attacker})
	if got := h.ep.Remote(); got != peer {
		t.Fatalf("Remote() = %v after a forged echo reply", got)
	}
	// The genuine reply moves the peer.
	h.tr.sent = append(h.tr.sent, sent[0])
	h.confirmRoam(t, attacker)
	if st := h.ep.Stats(); st.Roams != 1 || st.RoamProbes != 1 {
		t.Errorf("Roams %d, RoamProbes %d; want 1, 1", st.Roams, st.RoamProbes)
	}
	// Back to the old address at once: probed and answered, but refused
	// within the rate limit.
	h.wantDeliver(t, Message{Buffers: [][]byte{append([]byte(nil), v4...)}, Addr: peer}, 0x800, v4)
	probe := h.tr.takeSent()
	if len(probe) != 1 || probe[0].addr != peer {
		t.Fatalf("sent %+v, want one probe to %v", probe, peer)
	}
	h.inject(t, Message{Buffers: [][]byte{echoReply(t, probe[0].data)}, Addr: peer})
	if got := h.ep.Remote(); got != attacker || h.ep.Stats().RoamsRefused != 1 {
		t.Errorf("Remote() = %v, RoamsRefused %d: a second move within %v was not refused", got, h.ep.Stats().RoamsRefused, time.Duration(roamMoveInterval))
	}
}
