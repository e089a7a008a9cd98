package stack

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"slices"
	"testing"

	"github.com/ipipstack/ipipstack/endpoint/endpointtest"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	gvstack "gvisor.dev/gvisor/pkg/tcpip/stack"
)

// sentPacket builds an IPv4 UDP packet (ipv4Packet) with identification id
// as gVisor's IP layer hands it to a link: the IP header in NetworkHeader,
// the rest in Data.
func sentPacket(id uint16, flags uint8, offset int, l4 []byte, forwarded bool) *gvstack.PacketBuffer {
	p := ipv4Packet(nil, flags, offset, l4)
	h := header.IPv4(p)
	binary.BigEndian.PutUint16(p[4:], id)
	h.SetChecksum(0)
	h.SetChecksum(^h.CalculateChecksum())
	pkt := gvstack.NewPacketBuffer(gvstack.PacketBufferOptions{Payload: buffer.MakeWithData(p), IsForwardedPacket: forwarded})
	pkt.NetworkProtocolNumber = ipv4.ProtocolNumber
	pkt.NetworkHeader().Consume(header.IPv4MinimumSize)
	return pkt
}

// TestForwardLinkWritePackets writes lists of packets straight to the
// forwardLink of an AddLink link (a gVisor channel endpoint, without TX
// checksum offload). The tunnel's forwardLink completes nothing (its
// endpoint does); the link's declares the offload, sends the packets before
// a held first fragment in order and the first fragment right after the
// last, completed, leaves a forwarded packet as it is, and counts a
// datagram whose middle fragment never came. It keeps a reference to a
// held fragment only, and only until the datagram ends.
func TestForwardLinkWritePackets(t *testing.T) {
	oa, ob := netip.MustParseAddrPort("198.51.100.1:1"), netip.MustParseAddrPort("198.51.100.2:2")
	ta, tb := endpointtest.Pipe(oa, ob, 0)
	defer tb.Close()
	s, err := New(Config{Forwarding: true, Tunnels: []Tunnel{{Name: "t", Local: oa, Remote: ob, Conn: ta,
		Addresses: []netip.Prefix{netip.MustParsePrefix("10.0.1.1/30")}}}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ch := channel.New(16, 1500, "")
	if err := s.AddLink("chan", ch, []netip.Prefix{netip.MustParsePrefix("10.0.2.1/24")}, nil); err != nil {
		t.Fatal(err)
	}
	links := *s.fwd.links.Load()
	if len(links) != 2 || links[0].tx != nil || links[1].tx == nil {
		t.Fatalf("%d forwardLinks; want 2, the second (the link's) alone completing checksums", len(links))
	}
	l := links[1]
	if l.Capabilities()&gvstack.CapabilityTXChecksumOffload == 0 {
		t.Fatal("the link's forwardLink does not declare TX checksum offload")
	}

	// write hands l the packets in one list, as the NIC does, and returns
	// the bytes of what the channel got.
	var made []*gvstack.PacketBuffer
	write := func(pkts ...*gvstack.PacketBuffer) [][]byte {
		t.Helper()
		made = append(made, pkts...)
		var list gvstack.PacketBufferList
		for _, p := range pkts {
			list.PushBack(p)
		}
		if n, terr := l.WritePackets(list); n != len(pkts) || terr != nil {
			t.Errorf("WritePackets = %d, %v; want %d, nil", n, terr, len(pkts))
		}
		var got [][]byte
		for p := ch.Read(); p != nil; p = ch.Read() {
			v := p.ToView()
			got = append(got, bytes.Clone(v.AsSlice()))
			v.Release()
			p.DecRef()
		}
		return got
	}
	udp := func(n int) []byte { // a UDP header without checksum, and n bytes
		u := make([]byte, 8+n)
		binary.BigEndian.PutUint16(u[4:], uint16(8+n))
		for i := range n {
			u[8+i] = byte(i*7 + 1)
		}
		return u
	}
	ip := header.IPv4(ipv4Packet(nil, 0, 0, nil))
	valid := func(seg []byte) bool {
		sum := header.PseudoHeaderChecksum(header.UDPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), uint16(len(seg)))
		return checksum.Checksum(seg, sum) == 0xffff && binary.BigEndian.Uint16(seg[6:]) != 0
	}
	const mf = header.IPv4FlagMoreFragments

	// A whole datagram, then the three fragments of another.
	d := udp(40)
	got := write(sentPacket(1, 0, 0, udp(20), false),
		sentPacket(2, mf, 0, d[:16], false), sentPacket(2, mf, 16, d[16:32], false), sentPacket(2, 0, 32, d[32:], false))
	if len(got) != 4 {
		t.Fatalf("%d packets sent, want 4", len(got))
	}
	if !valid(got[0][20:]) {
		t.Errorf("whole datagram: checksum does not verify: % x", got[0][20:])
	}
	var order []uint16
	for _, p := range got[1:] {
		order = append(order, header.IPv4(p).FragmentOffset())
	}
	if want := []uint16{16, 32, 0}; !slices.Equal(order, want) {
		t.Errorf("fragments sent at offsets %v, want %v", order, want)
	}
	if re := slices.Concat(got[3][20:], got[1][20:], got[2][20:]); !valid(re) {
		t.Errorf("reassembled datagram: checksum does not verify: % x", re)
	}

	// A datagram whose middle fragment is lost: its first is dropped.
	first := sentPacket(3, mf, 0, d[:16], false)
	if got := write(first); len(got) != 0 {
		t.Errorf("%d packets sent for a first fragment, want it held", len(got))
	}
	if n := first.ReadRefs(); n != 2 {
		t.Errorf("held first fragment: %d references, want 2 (the test's and the hold's)", n)
	}
	if got := write(sentPacket(3, 0, 32, d[32:], false)); len(got) != 1 || header.IPv4(got[0]).FragmentOffset() != 32 {
		t.Errorf("%d packets sent after a lost fragment, want the last fragment only", len(got))
	}
	if n := s.ForwardStats().IncompleteDatagrams; n != 1 {
		t.Errorf("ForwardStats().IncompleteDatagrams = %d, want 1", n)
	}

	// A forwarded packet with a wrong checksum.
	bad := udp(20)
	bad[6] = 0x55
	fwd := sentPacket(4, 0, 0, bad, true)
	v := fwd.ToView()
	want := bytes.Clone(v.AsSlice())
	v.Release()
	if got := write(fwd); len(got) != 1 || !bytes.Equal(got[0], want) {
		t.Errorf("forwarded packet sent as\n%x\nwant\n%x", got, want)
	}

	for i, p := range made {
		if n := p.ReadRefs(); n != 1 {
			t.Errorf("packet %d: %d references at the end, want the test's 1", i, n)
		}
		p.DecRef()
	}
}
