package endpoint

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/endpoint/encap"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// This file tests the endpoint's decapsulation and encapsulation paths
// without sockets: memTransport hands crafted datagrams to the endpoint's
// receive goroutine and records what the endpoint writes, and recDispatcher
// records what reaches the stack.

// Outer addresses of the tests: the endpoint is 192.0.2.2 / 2001:db8::2,
// its peer 192.0.2.1 / 2001:db8::1.
var (
	rtLocal4  = netip.MustParseAddr("192.0.2.2")
	rtPeer4   = netip.MustParseAddr("192.0.2.1")
	rtLocal6  = netip.MustParseAddr("2001:db8::2")
	rtPeer6   = netip.MustParseAddr("2001:db8::1")
	rtAllowed = []netip.Prefix{netip.MustParsePrefix("10.99.0.0/30"), netip.MustParsePrefix("fd99::/64")}
)

// rtHarness is an attached Endpoint over a memTransport.
type rtHarness struct {
	ep *Endpoint
	tr *memTransport
	d  *recDispatcher
}

// newRTHarness builds an endpoint of framing f (local 192.0.2.2 or
// 2001:db8::2, port 4700 for UDP) towards the peer at port 4701, accepting
// inner sources rtAllowed; edit adjusts the options.
func newRTHarness(t *testing.T, f Framing, edit func(*Options)) *rtHarness {
	t.Helper()
	local, peer := rtLocal4, rtPeer4
	if f == FramingRawIPv6 {
		local, peer = rtLocal6, rtPeer6
	}
	var lport, rport uint16
	if f == FramingUDP {
		lport, rport = 4700, 4701
	}
	tr := newMemTransport(f, netip.AddrPortFrom(local, lport))
	opts := Options{Name: "test", Transport: tr, Remote: netip.AddrPortFrom(peer, rport), AllowedSources: rtAllowed}
	if edit != nil {
		edit(&opts)
	}
	ep, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ep.Close)
	h := &rtHarness{ep: ep, tr: tr, d: &recDispatcher{}}
	ep.Attach(h.d)
	return h
}

// inject hands one datagram to the receive goroutine and waits until the
// endpoint has counted it (as received or dropped). It returns the packets
// delivered and the counters before and after.
func (h *rtHarness) inject(t *testing.T, m Message) (got []recPacket, before, after Stats) {
	t.Helper()
	before = h.ep.Stats()
	select {
	case h.tr.in <- m:
	case <-time.After(5 * time.Second):
		t.Fatal("the receive goroutine did not take the datagram")
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		after = h.ep.Stats()
		if after.RxPackets+after.DropTotal() > before.RxPackets+before.DropTotal() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the datagram was neither delivered nor dropped")
		}
		time.Sleep(200 * time.Microsecond)
	}
	// The counters move before delivery (a reply may leave before
	// delivery returns), and GRO delivers at the end of a batch: wait for
	// a counted packet to arrive.
	for after.RxPackets > before.RxPackets && h.d.count() == 0 && time.Now().Before(deadline) {
		time.Sleep(200 * time.Microsecond)
	}
	return h.d.take(), before, after
}

// wantDrop injects m and checks that it is dropped under reason r alone.
func (h *rtHarness) wantDrop(t *testing.T, m Message, r encap.Reason) {
	t.Helper()
	got, before, after := h.inject(t, m)
	if len(got) != 0 {
		t.Errorf("%d packets delivered, want the datagram dropped as %v", len(got), r)
	}
	for i := range after.Drops {
		want := before.Drops[i]
		if encap.Reason(i) == r {
			want++
		}
		if after.Drops[i] != want {
			t.Errorf("drops[%v] = %d, want %d", encap.Reason(i), after.Drops[i], want)
		}
	}
	if after.RxPackets != before.RxPackets || after.RxBytes != before.RxBytes {
		t.Errorf("rx counters moved on a drop: %d/%d -> %d/%d", before.RxPackets, before.RxBytes, after.RxPackets, after.RxBytes)
	}
}

// wantDeliver injects m and checks that exactly want, as protocol proto,
// reaches the stack and is counted.
func (h *rtHarness) wantDeliver(t *testing.T, m Message, proto tcpip.NetworkProtocolNumber, want []byte) {
	t.Helper()
	got, before, after := h.inject(t, m)
	if len(got) != 1 {
		t.Fatalf("%d packets delivered, want 1 (drops %v)", len(got), after.Drops)
	}
	if got[0].proto != proto {
		t.Errorf("delivered as protocol %#x, want %#x", got[0].proto, proto)
	}
	if !bytes.Equal(got[0].data, want) {
		t.Errorf("delivered\n% x\nwant\n% x", got[0].data, want)
	}
	if after.DropTotal() != before.DropTotal() {
		t.Errorf("drops moved: %v -> %v", before.Drops, after.Drops)
	}
	if after.RxPackets != before.RxPackets+1 || after.RxBytes != before.RxBytes+uint64(len(want)) {
		t.Errorf("rx counters %d/%d -> %d/%d, want +1 packet, +%d bytes", before.RxPackets, before.RxBytes, after.RxPackets, after.RxBytes, len(want))
	}
}

// inner4 is an IPv4 UDP packet src -> dst with ToS tos, TTL 64 and 32
// bytes of data, with a valid header checksum.
func inner4(src, dst string, tos uint8) []byte {
	p := make([]byte, 20+8+32)
	header.IPv4(p).Encode(&header.IPv4Fields{
		TOS: tos, TotalLength: uint16(len(p)), ID: 0x4242, TTL: 64, Protocol: uint8(header.UDPProtocolNumber),
		SrcAddr: tcpip.AddrFrom4(netip.MustParseAddr(src).As4()),
		DstAddr: tcpip.AddrFrom4(netip.MustParseAddr(dst).As4()),
	})
	header.IPv4(p).SetChecksum(^header.IPv4(p).CalculateChecksum())
	binary.BigEndian.PutUint16(p[20:], 1234)
	binary.BigEndian.PutUint16(p[22:], 5678)
	binary.BigEndian.PutUint16(p[24:], 40)
	for i := 28; i < len(p); i++ {
		p[i] = byte(i)
	}
	return p
}

// inner6 is an IPv6 UDP packet src -> dst with traffic class tc, hop limit
// 64, 32 bytes of data and a valid checksum.
func inner6(src, dst string, tc uint8) []byte {
	p := make([]byte, 40+8+32)
	header.IPv6(p).Encode(&header.IPv6Fields{
		TrafficClass: tc, PayloadLength: 40, TransportProtocol: header.UDPProtocolNumber, HopLimit: 64,
		SrcAddr: tcpip.AddrFrom16(netip.MustParseAddr(src).As16()),
		DstAddr: tcpip.AddrFrom16(netip.MustParseAddr(dst).As16()),
	})
	binary.BigEndian.PutUint16(p[40:], 1234)
	binary.BigEndian.PutUint16(p[42:], 5678)
	binary.BigEndian.PutUint16(p[44:], 40)
	for i := 48; i < len(p); i++ {
		p[i] = byte(i)
	}
	// A UDP checksum is mandatory over IPv6 (RFC 8200 §8.1).
	binary.BigEndian.PutUint16(p[46:], csum(p[40:], pseudo(netip.MustParseAddr(src), netip.MustParseAddr(dst), 17, 40)))
	return p
}

// outer4 is inner behind an outer IPv4 header src -> dst with protocol
// proto and ToS tos, as a raw IPv4 socket receives it.
func outer4(src netip.Addr, proto, tos uint8, inner []byte) []byte {
	p := make([]byte, 20+len(inner))
	p[0], p[1] = 0x45, tos
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	binary.BigEndian.PutUint16(p[4:], 7)
	p[6], p[8], p[9] = 0x40, 63, proto
	s, d := src.As4(), rtLocal4.As4()
	copy(p[12:], s[:])
	copy(p[16:], d[:])
	binary.BigEndian.PutUint16(p[10:], encap.Checksum(p[:20]))
	copy(p[20:], inner)
	return p
}

// fixChecksum4 recomputes the IPv4 header checksum of p.
func fixChecksum4(p []byte) []byte {
	p[10], p[11] = 0, 0
	binary.BigEndian.PutUint16(p[10:], encap.Checksum(p[:int(p[0]&0xf)*4]))
	return p
}

func raw4(src netip.Addr, proto, tos uint8, inner []byte) Message {
	return Message{Buffers: [][]byte{outer4(src, proto, tos, inner)}, Addr: netip.AddrPortFrom(src, 0), Proto: proto}
}

// withECN returns a copy of an inner packet with its ECN field set to ecn
// (and, for IPv4, its checksum recomputed from scratch).
func withECN(p []byte, ecn uint8) []byte {
	q := append([]byte(nil), p...)
	if q[0]>>4 == 4 {
		q[1] = q[1]&^3 | ecn
		return fixChecksum4(q)
	}
	q[1] = q[1]&^0x30 | ecn<<4
	return q
}

func TestDecapRawIPv4(t *testing.T) {
	h := newRTHarness(t, FramingRawIPv4, nil)
	v4 := inner4("10.99.0.1", "10.99.0.2", 0)
	v6 := inner6("fd99::1", "fd99::2", 0)
	ect0 := inner4("10.99.0.1", "10.99.0.2", 0xb8|encap.ECNECT0)

	t.Run("ipv4", func(t *testing.T) {
		h.wantDeliver(t, raw4(rtPeer4, 4, 0, v4), ipv4.ProtocolNumber, v4)
	})
	t.Run("6in4", func(t *testing.T) {
		h.wantDeliver(t, raw4(rtPeer4, 41, 0, v6), ipv6.ProtocolNumber, v6)
	})
	t.Run("trailing bytes trimmed", func(t *testing.T) {
		padded := append(append([]byte(nil), v4...), 0xde, 0xad, 0xbe, 0xef)
		h.wantDeliver(t, raw4(rtPeer4, 4, 0, padded), ipv4.ProtocolNumber, v4)
	})
	t.Run("ecn CE over ECT(0)", func(t *testing.T) {
		// RFC 6040: the inner packet takes CE, keeps its DSCP, and its
		// header checksum must still verify.
		want := withECN(ect0, encap.ECNCE)
		h.d.take()
		got, _, _ := h.inject(t, raw4(rtPeer4, 4, 0x20|encap.ECNCE, ect0))
		if len(got) != 1 {
			t.Fatalf("%d packets delivered, want 1", len(got))
		}
		p := got[0].data
		if p[1] != 0xb8|encap.ECNCE {
			t.Errorf("inner ToS = %#x, want %#x", p[1], 0xb8|encap.ECNCE)
		}
		if c := encap.Checksum(p[:20]); c != 0 {
			t.Errorf("inner header checksum does not verify (residue %#04x)", c)
		}
		if !bytes.Equal(p, want) {
			t.Errorf("delivered\n% x\nwant\n% x", p, want)
		}
	})
	t.Run("ecn ECT(1) over ECT(0)", func(t *testing.T) {
		h.wantDeliver(t, raw4(rtPeer4, 4, encap.ECNECT1, ect0), ipv4.ProtocolNumber, withECN(ect0, encap.ECNECT1))
	})
	t.Run("ecn CE over ECT(0) 6in4", func(t *testing.T) {
		e6 := inner6("fd99::1", "fd99::2", encap.ECNECT0)
		h.wantDeliver(t, raw4(rtPeer4, 41, encap.ECNCE, e6), ipv6.ProtocolNumber, withECN(e6, encap.ECNCE))
	})
	t.Run("ecn CE over Not-ECT", func(t *testing.T) {
		h.wantDrop(t, raw4(rtPeer4, 4, encap.ECNCE, v4), encap.ECNCongestion)
	})
	t.Run("wrong peer", func(t *testing.T) {
		h.wantDrop(t, raw4(netip.MustParseAddr("192.0.2.3"), 4, 0, v4), encap.WrongPeer)
	})
	t.Run("spoofed source", func(t *testing.T) {
		h.wantDrop(t, raw4(rtPeer4, 4, 0, inner4("10.50.0.1", "10.99.0.2", 0)), encap.SpoofedSource)
	})
	t.Run("spoofed source 6in4", func(t *testing.T) {
		h.wantDrop(t, raw4(rtPeer4, 41, 0, inner6("fd98::1", "fd99::2", 0)), encap.SpoofedSource)
	})
	for _, tc := range []struct{ name, src, dst string }{
		{"martian loopback source", "127.0.0.1", "10.99.0.2"},
		{"martian multicast source", "224.0.0.1", "10.99.0.2"},
		{"martian zero source", "0.0.0.0", "10.99.0.2"},
		{"martian broadcast source", "255.255.255.255", "10.99.0.2"},
		{"martian unspecified destination", "10.99.0.1", "0.0.0.0"},
		{"martian loopback destination", "10.99.0.1", "127.0.0.1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h.wantDrop(t, raw4(rtPeer4, 4, 0, inner4(tc.src, tc.dst, 0)), encap.Martian)
		})
	}
	t.Run("martian v4-mapped source 6in4", func(t *testing.T) {
		h.wantDrop(t, raw4(rtPeer4, 41, 0, inner6("::ffff:10.99.0.1", "fd99::2", 0)), encap.Martian)
	})
	t.Run("recursion", func(t *testing.T) {
		// An inner packet for our own outer address would loop through
		// the tunnel.
		h.wantDrop(t, raw4(rtPeer4, 4, 0, inner4("10.99.0.1", "192.0.2.2", 0)), encap.Recursion)
	})
	t.Run("malformed outer truncated", func(t *testing.T) {
		m := raw4(rtPeer4, 4, 0, v4)
		m.Buffers[0] = m.Buffers[0][:12]
		h.wantDrop(t, m, encap.MalformedOuter)
	})
	t.Run("malformed outer length", func(t *testing.T) {
		m := raw4(rtPeer4, 4, 0, v4)
		b := m.Buffers[0]
		binary.BigEndian.PutUint16(b[2:], uint16(len(b)+1))
		fixChecksum4(b)
		h.wantDrop(t, m, encap.MalformedOuter)
	})
	t.Run("malformed outer version", func(t *testing.T) {
		m := raw4(rtPeer4, 4, 0, v4)
		m.Buffers[0][0] = 0x65
		h.wantDrop(t, m, encap.MalformedOuter)
	})
	t.Run("bad outer checksum", func(t *testing.T) {
		m := raw4(rtPeer4, 4, 0, v4)
		m.Buffers[0][10] ^= 0x01
		h.wantDrop(t, m, encap.BadOuterChecksum)
	})
	t.Run("outer fragment", func(t *testing.T) {
		m := raw4(rtPeer4, 4, 0, v4)
		m.Buffers[0][6] = 0x20 // MF
		fixChecksum4(m.Buffers[0])
		h.wantDrop(t, m, encap.OuterFragment)
	})
	t.Run("unknown protocol", func(t *testing.T) {
		h.wantDrop(t, raw4(rtPeer4, 47, 0, v4), encap.UnknownProtocol)
	})
	t.Run("version mismatch 4 carrying IPv6", func(t *testing.T) {
		h.wantDrop(t, raw4(rtPeer4, 4, 0, v6), encap.VersionMismatch)
	})
	t.Run("version mismatch 41 carrying IPv4", func(t *testing.T) {
		h.wantDrop(t, raw4(rtPeer4, 41, 0, v4), encap.VersionMismatch)
	})
	t.Run("malformed inner checksum", func(t *testing.T) {
		bad := append([]byte(nil), v4...)
		bad[10] ^= 0xff
		h.wantDrop(t, raw4(rtPeer4, 4, 0, bad), encap.MalformedInner)
	})
	t.Run("malformed inner truncated", func(t *testing.T) {
		h.wantDrop(t, raw4(rtPeer4, 4, 0, v4[:30]), encap.MalformedInner)
	})
	if st := h.ep.Stats(); st.LastSeen.IsZero() || st.Peer != netip.AddrPortFrom(rtPeer4, 0) {
		t.Errorf("LastSeen %v, Peer %v after traffic", st.LastSeen, st.Peer)
	}
}

func TestDecapRawIPv6(t *testing.T) {
	h := newRTHarness(t, FramingRawIPv6, nil)
	// A raw IPv6 socket strips the outer header: the transport reports the
	// source, the next header and (IPV6_RECVTCLASS) the traffic class.
	raw6 := func(src netip.Addr, proto, tc uint8, hasTC bool, inner []byte) Message {
		return Message{Buffers: [][]byte{append([]byte(nil), inner...)}, Addr: netip.AddrPortFrom(src, 0), Proto: proto, TOS: tc, HasTOS: hasTC}
	}
	v4 := inner4("10.99.0.1", "10.99.0.2", 0)
	v6 := inner6("fd99::1", "fd99::2", encap.ECNECT0)
	t.Run("ipv4", func(t *testing.T) {
		h.wantDeliver(t, raw6(rtPeer6, 4, 0, true, v4), ipv4.ProtocolNumber, v4)
	})
	t.Run("ipv6", func(t *testing.T) {
		h.wantDeliver(t, raw6(rtPeer6, 41, 0, true, v6), ipv6.ProtocolNumber, v6)
	})
	t.Run("ecn CE over ECT(0)", func(t *testing.T) {
		h.wantDeliver(t, raw6(rtPeer6, 41, 0xa0|encap.ECNCE, true, v6), ipv6.ProtocolNumber, withECN(v6, encap.ECNCE))
	})
	t.Run("ecn CE over ECT(0) inner IPv4", func(t *testing.T) {
		e4 := inner4("10.99.0.1", "10.99.0.2", encap.ECNECT0)
		h.wantDeliver(t, raw6(rtPeer6, 4, encap.ECNCE, true, e4), ipv4.ProtocolNumber, withECN(e4, encap.ECNCE))
	})
	t.Run("no traffic class received", func(t *testing.T) {
		h.wantDeliver(t, raw6(rtPeer6, 41, encap.ECNCE, false, v6), ipv6.ProtocolNumber, v6)
	})
	t.Run("ecn CE over Not-ECT", func(t *testing.T) {
		h.wantDrop(t, raw6(rtPeer6, 4, encap.ECNCE, true, v4), encap.ECNCongestion)
	})
	t.Run("wrong peer", func(t *testing.T) {
		h.wantDrop(t, raw6(netip.MustParseAddr("2001:db8::3"), 41, 0, true, v6), encap.WrongPeer)
	})
	t.Run("version mismatch", func(t *testing.T) {
		h.wantDrop(t, raw6(rtPeer6, 4, 0, true, v6), encap.VersionMismatch)
	})
	t.Run("recursion", func(t *testing.T) {
		h.wantDrop(t, raw6(rtPeer6, 41, 0, true, inner6("fd99::1", "2001:db8::2", 0)), encap.Recursion)
	})
	t.Run("spoofed source", func(t *testing.T) {
		h.wantDrop(t, raw6(rtPeer6, 41, 0, true, inner6("2001:db8::1", "fd99::2", 0)), encap.SpoofedSource)
	})
	t.Run("malformed inner", func(t *testing.T) {
		h.wantDrop(t, raw6(rtPeer6, 41, 0, true, v6[:39]), encap.MalformedInner)
	})
}

func TestDecapUDP(t *testing.T) {
	v4 := inner4("10.99.0.1", "10.99.0.2", encap.ECNECT0)
	v6 := inner6("fd99::1", "fd99::2", 0)
	udp := func(from string, tos uint8, hasTOS bool, inner []byte) Message {
		return Message{Buffers: [][]byte{append([]byte(nil), inner...)}, Addr: netip.MustParseAddrPort(from), TOS: tos, HasTOS: hasTOS}
	}
	peer := netip.MustParseAddrPort("192.0.2.1:4701")

	t.Run("strict", func(t *testing.T) {
		h := newRTHarness(t, FramingUDP, nil)
		h.wantDeliver(t, udp("192.0.2.1:4701", 0, true, v4), ipv4.ProtocolNumber, v4)
		h.wantDeliver(t, udp("192.0.2.1:4701", 0, true, v6), ipv6.ProtocolNumber, v6)
		h.wantDeliver(t, udp("192.0.2.1:4701", encap.ECNCE, true, v4), ipv4.ProtocolNumber, withECN(v4, encap.ECNCE))
		h.wantDrop(t, udp("192.0.2.1:4701", encap.ECNCE, true, v6), encap.ECNCongestion)
		h.wantDrop(t, udp("192.0.2.1:4702", 0, true, v4), encap.WrongPeer)
		h.wantDrop(t, udp("192.0.2.3:4701", 0, true, v4), encap.WrongPeer)
		h.wantDrop(t, udp("192.0.2.1:4701", 0, true, []byte{0x50, 0, 0, 0}), encap.MalformedInner)
		if got := h.ep.Remote(); got != peer {
			t.Errorf("Remote() = %v, want %v", got, peer)
		}
	})
	t.Run("any source port", func(t *testing.T) {
		h := newRTHarness(t, FramingUDP, func(o *Options) { o.AnySourcePort = true })
		h.wantDeliver(t, udp("192.0.2.1:33333", 0, true, v4), ipv4.ProtocolNumber, v4)
		h.wantDeliver(t, udp("192.0.2.1:44444", 0, true, v6), ipv6.ProtocolNumber, v6)
		h.wantDrop(t, udp("192.0.2.3:4701", 0, true, v4), encap.WrongPeer)
		if got := h.ep.Remote(); got != peer {
			t.Errorf("Remote() = %v after datagrams from other ports, want %v (replies go to the configured port)", got, peer)
		}
	})
	t.Run("roaming", func(t *testing.T) {
		h := newRTHarness(t, FramingUDP, func(o *Options) { o.Roaming = true })
		h.ep.roamer.moveInterval = 0
		// An invalid packet from a new address must not move the peer.
		h.wantDrop(t, udp("198.51.100.7:5000", 0, true, inner4("10.50.0.1", "10.99.0.2", 0)), encap.SpoofedSource)
		h.wantDrop(t, udp("198.51.100.7:5000", encap.ECNCE, true, v6), encap.ECNCongestion)
		if got := h.ep.Remote(); got != peer {
			t.Fatalf("Remote() = %v after invalid packets, want %v", got, peer)
		}
		h.wantDeliver(t, udp("198.51.100.7:5000", 0, true, v4), ipv4.ProtocolNumber, v4)
		h.confirmRoam(t, netip.MustParseAddrPort("198.51.100.7:5000"))
		if got, want := h.ep.Remote(), netip.MustParseAddrPort("198.51.100.7:5000"); got != want {
			t.Errorf("Remote() = %v after a valid packet from it, want %v", got, want)
		}
		if got := h.ep.Stats().Peer; got != netip.MustParseAddrPort("198.51.100.7:5000") {
			t.Errorf("Stats().Peer = %v", got)
		}
		// The old address is now a stranger, but roaming lets it back.
		h.wantDeliver(t, udp("192.0.2.1:4701", 0, true, v6), ipv6.ProtocolNumber, v6)
		h.confirmRoam(t, peer)
		if got := h.ep.Remote(); got != peer {
			t.Errorf("Remote() = %v after the peer came back, want %v", got, peer)
		}
		// What the endpoint sends goes to the current peer.
		h.wantDeliver(t, udp("198.51.100.8:6000", 0, true, v4), ipv4.ProtocolNumber, v4)
		h.confirmRoam(t, netip.MustParseAddrPort("198.51.100.8:6000"))
		pkt := gvPacket4(t, 0, 64)
		defer pkt.DecRef()
		if _, err := h.ep.WritePackets(pktList(pkt)); err != nil {
			t.Fatal(err)
		}
		if sent := h.tr.takeSent(); len(sent) != 1 || sent[0].addr != netip.MustParseAddrPort("198.51.100.8:6000") {
			t.Errorf("sent %+v, want one datagram to the roamed peer", sent)
		}
	})
	t.Run("roaming raw", func(t *testing.T) {
		h := newRTHarness(t, FramingRawIPv4, func(o *Options) { o.Roaming = true })
		v := inner4("10.99.0.1", "10.99.0.2", 0)
		h.wantDeliver(t, raw4(netip.MustParseAddr("192.0.2.9"), 4, 0, v), ipv4.ProtocolNumber, v)
		h.confirmRoam(t, netip.MustParseAddrPort("192.0.2.9:0"))
		if got, want := h.ep.Remote(), netip.MustParseAddrPort("192.0.2.9:0"); got != want {
			t.Errorf("Remote() = %v, want %v", got, want)
		}
	})
}

// gvPacket4 builds, with gVisor's header code, an IPv4 UDP packet
// 10.99.0.1 -> 10.99.0.2 whose headers and payload are separate views, as
// gVisor's IP layer hands them to a link endpoint.
func gvPacket4(t *testing.T, tos, ttl uint8) *stack.PacketBuffer {
	t.Helper()
	payload := make([]byte, 32)
	for i := range payload {
		payload[i] = byte(i)
	}
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{
		ReserveHeaderBytes: header.IPv4MinimumSize + header.UDPMinimumSize,
		Payload:            buffer.MakeWithData(payload),
	})
	u := header.UDP(pkt.TransportHeader().Push(header.UDPMinimumSize))
	u.Encode(&header.UDPFields{SrcPort: 1234, DstPort: 5678, Length: uint16(header.UDPMinimumSize + len(payload))})
	ip := header.IPv4(pkt.NetworkHeader().Push(header.IPv4MinimumSize))
	ip.Encode(&header.IPv4Fields{
		TOS: tos, TotalLength: uint16(pkt.Size()), ID: 0x4242, TTL: ttl, Protocol: uint8(header.UDPProtocolNumber),
		SrcAddr: tcpip.AddrFrom4([4]byte{10, 99, 0, 1}), DstAddr: tcpip.AddrFrom4([4]byte{10, 99, 0, 2}),
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	pkt.NetworkProtocolNumber = ipv4.ProtocolNumber
	setUDPChecksum(pkt) // complete already, so that the endpoint sends the bytes as they are
	return pkt
}

func gvPacket6(t *testing.T, tc, hop uint8) *stack.PacketBuffer {
	t.Helper()
	payload := make([]byte, 32)
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{
		ReserveHeaderBytes: header.IPv6MinimumSize + header.UDPMinimumSize,
		Payload:            buffer.MakeWithData(payload),
	})
	u := header.UDP(pkt.TransportHeader().Push(header.UDPMinimumSize))
	u.Encode(&header.UDPFields{SrcPort: 1234, DstPort: 5678, Length: uint16(header.UDPMinimumSize + len(payload))})
	ip := header.IPv6(pkt.NetworkHeader().Push(header.IPv6MinimumSize))
	ip.Encode(&header.IPv6Fields{
		TrafficClass: tc, PayloadLength: uint16(header.UDPMinimumSize + len(payload)), TransportProtocol: header.UDPProtocolNumber, HopLimit: hop,
		SrcAddr: tcpip.AddrFrom16(netip.MustParseAddr("fd99::1").As16()), DstAddr: tcpip.AddrFrom16(netip.MustParseAddr("fd99::2").As16()),
	})
	pkt.NetworkProtocolNumber = ipv6.ProtocolNumber
	setUDPChecksum(pkt)
	return pkt
}

// pktList makes a list of pkts; WritePackets does not take the list's
// references, so the list is released when the test ends.
func pktList(pkts ...*stack.PacketBuffer) stack.PacketBufferList {
	var l stack.PacketBufferList
	for _, p := range pkts {
		l.PushBack(p)
	}
	return l
}

// flat is the bytes of pkt from its network header on.
func flat(pkt *stack.PacketBuffer) []byte {
	v := pkt.ToView()
	defer v.Release()
	return append([]byte(nil), v.AsSlice()...)
}

func TestEncapRawIPv4Header(t *testing.T) {
	h := newRTHarness(t, FramingRawIPv4, nil) // default policy: TTL inherited, ToS 0 + ECN, DF set
	h.ep.ipID.Store(0x1233)                   // the next packet gets ID 0x1234
	pkt := gvPacket4(t, 0xb8|encap.ECNCE, 64)
	defer pkt.DecRef()
	inner := flat(pkt)
	if n, err := h.ep.WritePackets(pktList(pkt)); n != 1 || err != nil {
		t.Fatalf("WritePackets = %d, %v", n, err)
	}
	sent := h.tr.takeSent()
	if len(sent) != 1 {
		t.Fatalf("%d datagrams sent, want 1", len(sent))
	}
	s := sent[0]
	// 20 + 60 = 80 bytes; ToS 0x02 (an inner CE goes out as ECT(0), the
	// DSCP is not copied); ID 0x1234; DF; TTL 64 (inherited); protocol 4;
	// 192.0.2.2 -> 192.0.2.1. Checksum by hand: 4502+0050+1234+4000+4004+
	// c000+0202+c000+0201 = 0x25b8d, folded 0x5b8f, complemented 0xa470.
	want := mustHexRT(t, "4502 0050 1234 4000 4004 a470 c000 0202 c000 0201")
	if !bytes.Equal(s.data[:20], want) {
		t.Errorf("outer header\n% x\nwant\n% x", s.data[:20], want)
	}
	if !bytes.Equal(s.data[20:], inner) {
		t.Errorf("inner packet changed:\n% x\nwant\n% x", s.data[20:], inner)
	}
	if s.segments != 3 {
		t.Errorf("%d segments, want 3 (outer header, inner headers, payload: no copy)", s.segments)
	}
	if s.addr != netip.AddrPortFrom(rtPeer4, 0) {
		t.Errorf("sent to %v, want %v", s.addr, rtPeer4)
	}
	if st := h.ep.Stats(); st.TxPackets != 1 || st.TxBytes != uint64(len(inner)) {
		t.Errorf("tx counters %d/%d, want 1/%d", st.TxPackets, st.TxBytes, len(inner))
	}
}

func TestEncapRawIPv6Header(t *testing.T) {
	h := newRTHarness(t, FramingRawIPv6, func(o *Options) {
		o.Policy = encap.Policy{TTL: 200, UseEncapLimit: true, EncapLimit: 4}
	})
	if got := h.ep.MTU(); got != 1452 {
		t.Errorf("MTU = %d, want 1452 (1500 - 40 - 8)", got)
	}
	pkt := gvPacket6(t, 0x2a, 9) // traffic class DSCP 10 + ECT(0)
	defer pkt.DecRef()
	inner := flat(pkt)
	if _, err := h.ep.WritePackets(pktList(pkt)); err != nil {
		t.Fatal(err)
	}
	sent := h.tr.takeSent()
	if len(sent) != 1 {
		t.Fatalf("%d datagrams sent, want 1", len(sent))
	}
	// Traffic class 0x02, payload 8 + 80 = 0x58, next header 60, hop
	// limit 200 (0xc8), then the destination options header: next header
	// 41, length 0, encapsulation limit 4, PadN of one byte.
	want := mustHexRT(t, `6020 0000 0058 3cc8
		2001 0db8 0000 0000 0000 0000 0000 0002
		2001 0db8 0000 0000 0000 0000 0000 0001
		2900 0401 0401 0100`)
	if !bytes.Equal(sent[0].data[:48], want) {
		t.Errorf("outer header\n% x\nwant\n% x", sent[0].data[:48], want)
	}
	if !bytes.Equal(sent[0].data[48:], inner) {
		t.Errorf("inner packet changed")
	}
}

func TestEncapUDPControl(t *testing.T) {
	h := newRTHarness(t, FramingUDP, nil)
	tests := []struct {
		name     string
		pkt      *stack.PacketBuffer
		tos, ttl uint8
	}{
		{"ipv4 ECT(1) dscp 46", gvPacket4(t, 0xb8|encap.ECNECT1, 33), encap.ECNECT1, 33},
		{"ipv4 CE", gvPacket4(t, encap.ECNCE, 64), encap.ECNECT0, 64},
		{"ipv4 Not-ECT", gvPacket4(t, 0x20, 1), 0, 1},
		{"ipv6 ECT(0)", gvPacket6(t, 0x2a, 17), encap.ECNECT0, 17},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			defer tt.pkt.DecRef()
			inner := flat(tt.pkt)
			if _, err := h.ep.WritePackets(pktList(tt.pkt)); err != nil {
				t.Fatal(err)
			}
			sent := h.tr.takeSent()
			if len(sent) != 1 {
				t.Fatalf("%d datagrams sent, want 1", len(sent))
			}
			s := sent[0]
			if s.tos != tt.tos || s.ttl != tt.ttl {
				t.Errorf("message TOS %#x TTL %d, want TOS %#x (the inner ECN bits) TTL %d (the inner TTL)", s.tos, s.ttl, tt.tos, tt.ttl)
			}
			if !bytes.Equal(s.data, inner) {
				t.Errorf("UDP payload is not exactly the inner packet")
			}
			if s.addr != netip.MustParseAddrPort("192.0.2.1:4701") {
				t.Errorf("sent to %v", s.addr)
			}
		})
	}
	t.Run("too big", func(t *testing.T) {
		h.ep.SetMTU(40)
		defer h.ep.SetMTU(1472)
		pkt := gvPacket4(t, 0, 64)
		defer pkt.DecRef()
		before := h.ep.Stats()
		h.ep.WritePackets(pktList(pkt))
		after := h.ep.Stats()
		if sent := h.tr.takeSent(); len(sent) != 0 {
			t.Errorf("%d datagrams sent over the MTU", len(sent))
		}
		if after.Drops[encap.TooBig] != before.Drops[encap.TooBig]+1 || after.TxPackets != before.TxPackets {
			t.Errorf("TooBig %d -> %d, tx %d -> %d", before.Drops[encap.TooBig], after.Drops[encap.TooBig], before.TxPackets, after.TxPackets)
		}
	})
}

// TestDeliverAllocs measures the allocations of decapsulating and
// delivering one datagram. The drop path is ours alone and must not
// allocate. The delivery path also makes a gVisor PacketBuffer and buffer
// chunk (both from gVisor's pools), so its count is reported, not enforced.
func TestDeliverAllocs(t *testing.T) {
	tr := newMemTransport(FramingRawIPv4, netip.AddrPortFrom(rtLocal4, 0))
	ep, err := New(Options{Transport: tr, Remote: netip.AddrPortFrom(rtPeer4, 0), AllowedSources: rtAllowed})
	if err != nil {
		t.Fatal(err)
	}
	defer ep.Close() // never attached: deliver is called directly
	buf := make([]byte, 1<<16)
	pkt := outer4(rtPeer4, 4, encap.ECNECT0, inner4("10.99.0.1", "10.99.0.2", encap.ECNECT0))
	m := Message{Buffers: [][]byte{buf}, N: copy(buf, pkt)}
	var d nopDispatcher
	rx := directRX(d)
	ok := testing.AllocsPerRun(1000, func() { ep.deliver(rx, &m) })
	if got := ep.Stats(); got.DropTotal() != 0 || got.RxPackets == 0 {
		t.Fatalf("the datagram was not delivered: %+v", got)
	}
	t.Logf("deliver of a valid 80-byte datagram: %.1f allocations per datagram", ok)

	bad := outer4(netip.MustParseAddr("192.0.2.3"), 4, 0, inner4("10.99.0.1", "10.99.0.2", 0))
	mb := Message{Buffers: [][]byte{buf}, N: copy(buf, bad)}
	drop := testing.AllocsPerRun(1000, func() { ep.deliver(rx, &mb) })
	t.Logf("deliver of a wrong-peer datagram: %.1f allocations", drop)
	if drop != 0 {
		t.Errorf("the drop path allocates %.1f times per datagram, want 0", drop)
	}
}

func mustHexRT(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}
