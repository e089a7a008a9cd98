package endpoint

import (
	"net/netip"
	"testing"

	"github.com/ipipstack/ipipstack/endpoint/encap"
)

// The first drop of each reason is kept with its outer and inner
// addresses; later drops of that reason only count.
func TestFirstDrops(t *testing.T) {
	e, remote := newCoalesceRig(t)
	spoofed := netip.MustParseAddr("10.50.0.1")
	feed := func(from netip.AddrPort, pkt []byte) {
		buf := make([]byte, recvBufSize)
		n := copy(buf, pkt)
		if _, _, _, ok := e.decap(&Message{Buffers: [][]byte{buf}, N: n, Addr: from}); ok {
			t.Fatalf("decap of a packet from %v accepted it", from)
		}
	}
	udp := make([]byte, 8)
	feed(remote, seedIPv4(spoofed, inner4L, 17, 0, 0, udp))
	feed(remote, seedIPv4(netip.MustParseAddr("10.50.0.9"), inner4L, 17, 0, 0, udp))
	stranger := netip.MustParseAddrPort("192.0.2.77:9999")
	feed(stranger, seedIPv4(inner4R, inner4L, 17, 0, 0, udp))

	got := map[encap.Reason]DropSample{}
	for _, s := range e.FirstDrops() {
		if s.Time.IsZero() {
			t.Errorf("FirstDrops: %v has no time", s.Reason)
		}
		s.Time = s.Time.UTC().Truncate(0)
		got[s.Reason] = s
	}
	if len(got) != 2 {
		t.Fatalf("FirstDrops() = %+v, want spoofed_source and wrong_peer", got)
	}
	if s := got[encap.SpoofedSource]; s.Outer != remote || s.InnerSrc != spoofed || s.InnerDst != inner4L {
		t.Errorf("first spoofed_source = %+v, want outer %v inner %v -> %v", s, remote, spoofed, inner4L)
	}
	if s := got[encap.WrongPeer]; s.Outer != stranger || s.InnerSrc.IsValid() {
		t.Errorf("first wrong_peer = %+v, want outer %v and no inner addresses", s, stranger)
	}
	if n := e.Stats().Drops[encap.SpoofedSource]; n != 2 {
		t.Errorf("Drops[spoofed_source] = %d, want 2", n)
	}
}
