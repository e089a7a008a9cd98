package endpoint

import (
	"net/netip"
	"testing"

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
			orig := h.ep.Remote().Addr()
			proto, inner := ipv4.ProtocolNumber, inner4("10.99.0.1", "10.99.0.2", 0)
			if tc.framing == FramingRawIPv6 {
				proto, inner = ipv6.ProtocolNumber, inner6("fd99::1", "fd99::2", 0)
			}
			for _, peer := range []netip.Addr{tc.moved, orig} {
				h.wantDeliver(t, tc.msg(peer), proto, inner)
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
