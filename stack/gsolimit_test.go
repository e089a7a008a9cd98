package stack_test

import (
	"testing"

	"github.com/ipipstack/ipipstack/endpoint/encap"
	"github.com/ipipstack/ipipstack/stack"
)

// TestGSOSmallPeerMSS moves data over real loopback UDP from a stack whose
// tunnel MTU is 1472, which sizes its TCP super-segments for 1472-byte
// packets, to a peer whose MTU is 576 and whose MSS is therefore 536 (524
// with timestamps). Cut at that MSS a super-segment is well over the 64
// segments and 65,507 bytes of one UDP_SEGMENT send; the endpoint must
// split it into several sends, not have the kernel refuse it.
func TestGSOSmallPeerMSS(t *testing.T) {
	p := newPair(t, "127.0.0.1", func(side int, tun *stack.Tunnel) {
		tun.Addresses = tun.Addresses[:1] // IPv4 only: 576 is below IPv6's minimum MTU
		if side == 1 {
			tun.MTU = 576
		}
	})
	if p.a.Endpoint("to-b").GSOMaxSize() == 0 {
		t.Fatal("GSO is off on the sender; this test is about GSO")
	}
	transfer(t, p.a, p.b, "10.99.0.2:5001", 4<<20)
	for _, st := range append(p.a.Stats(), p.b.Stats()...) {
		if n := st.Drops[encap.TooBig]; n != 0 {
			t.Errorf("%s dropped %d packets as too big", st.Name, n)
		}
		if st.TxGSORefused != 0 {
			t.Errorf("%s: the kernel refused %d UDP GSO sends", st.Name, st.TxGSORefused)
		}
		if st.DropTotal() != 0 {
			t.Errorf("%s dropped %v", st.Name, st.Drops)
		}
	}
	if st := p.a.Stats()[0]; st.TxPackets < (4<<20)/536 {
		t.Errorf("%s sent %d packets for 4 MiB at MSS 536, want at least %d", st.Name, st.TxPackets, (4<<20)/536)
	}
}
