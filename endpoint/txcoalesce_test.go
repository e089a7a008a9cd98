package endpoint

import (
	"bytes"
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// udpOfSize4 is an inner IPv4 UDP packet with n payload bytes, each b.
func udpOfSize4(t *testing.T, n int, b byte, tos uint8) *stack.PacketBuffer {
	t.Helper()
	payload := bytes.Repeat([]byte{b}, n)
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{
		ReserveHeaderBytes: header.IPv4MinimumSize + header.UDPMinimumSize,
		Payload:            buffer.MakeWithData(payload),
	})
	u := header.UDP(pkt.TransportHeader().Push(header.UDPMinimumSize))
	u.Encode(&header.UDPFields{SrcPort: 1234, DstPort: 5678, Length: uint16(header.UDPMinimumSize + n)})
	ip := header.IPv4(pkt.NetworkHeader().Push(header.IPv4MinimumSize))
	ip.Encode(&header.IPv4Fields{
		TOS: tos, TotalLength: uint16(pkt.Size()), TTL: 64, Protocol: uint8(header.UDPProtocolNumber),
		SrcAddr: tcpip.AddrFrom4([4]byte{10, 99, 0, 1}), DstAddr: tcpip.AddrFrom4([4]byte{10, 99, 0, 2}),
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	pkt.NetworkProtocolNumber = ipv4.ProtocolNumber
	setUDPChecksum(pkt)
	return pkt
}

// TestCoalesceSend: consecutive datagrams of one batch with the same
// size, ToS and TTL leave as one UDP_SEGMENT message whose segments are
// the packets in order; a shorter one ends a run, a larger one or another
// ToS starts a new one, a lone one is sent as it is; the counters count
// packets, not messages.
func TestCoalesceSend(t *testing.T) {
	local, remote := netip.AddrPortFrom(outer4L, 4700), netip.AddrPortFrom(outer4R, 4701)
	tr := gsoTransport{newMemTransport(FramingUDP, local)}
	e, err := New(Options{Transport: tr, Remote: remote, MTU: 1472})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	// payload sizes and ToS; datagram size = 28 + payload.
	type spec struct {
		n   int
		tos uint8
	}
	specs := []spec{{64, 0}, {64, 0}, {64, 0}, {40, 0}, // one run of 4, the last shorter
		{64, 0}, {100, 0}, // 64 alone: the next is larger; 100 starts a run...
		{100, 0x02},                     // ...which another outer ToS (the ECN bits are copied) ends: both alone
		{1400, 0}, {1400, 0}, {1400, 0}} // a run of 3
	var pkts stack.PacketBufferList
	var want [][]byte
	for i, s := range specs {
		p := udpOfSize4(t, s.n, byte(i), s.tos)
		want = append(want, flat(p))
		pkts.PushBack(p)
	}
	if _, err := e.WritePackets(pkts); err != nil {
		t.Fatal(err)
	}
	sent := tr.takeSent()
	type got struct{ packets, gso int }
	wantMsgs := []got{{4, 92}, {1, 0}, {1, 0}, {1, 0}, {3, 1428}}
	if len(sent) != len(wantMsgs) {
		var got []int
		for _, m := range sent {
			got = append(got, m.gso)
		}
		t.Fatalf("%d messages sent (GSO sizes %v), want %d", len(sent), got, len(wantMsgs))
	}
	k := 0
	for i, m := range sent {
		w := wantMsgs[i]
		if m.gso != w.gso {
			t.Errorf("message %d: GSOSize %d, want %d", i, m.gso, w.gso)
		}
		var concat []byte
		for range w.packets {
			concat = append(concat, want[k]...)
			k++
		}
		if !bytes.Equal(m.data, concat) {
			t.Errorf("message %d: %d bytes, want packets %d..%d back to back (%d bytes)", i, len(m.data), k-w.packets, k-1, len(concat))
		}
		if m.addr != remote {
			t.Errorf("message %d to %v, want %v", i, m.addr, remote)
		}
	}
	if s := e.Stats(); s.TxPackets != uint64(len(specs)) {
		t.Errorf("TxPackets = %d, want %d", s.TxPackets, len(specs))
	}
}

// TestCoalesceSendLimits: a run stops at 64 segments, and a transport
// without GSO gets one message per packet.
func TestCoalesceSendLimits(t *testing.T) {
	local, remote := netip.AddrPortFrom(outer4L, 4700), netip.AddrPortFrom(outer4R, 4701)
	for _, gso := range []bool{true, false} {
		mem := newMemTransport(FramingUDP, local)
		var tr Transport = mem
		if gso {
			tr = gsoTransport{mem}
		}
		e, err := New(Options{Transport: tr, Remote: remote, MTU: 1472, BatchSize: 128})
		if err != nil {
			t.Fatal(err)
		}
		var pkts stack.PacketBufferList
		for i := range 100 {
			pkts.PushBack(udpOfSize4(t, 32, byte(i), 0))
		}
		if _, err := e.WritePackets(pkts); err != nil {
			t.Fatal(err)
		}
		var sizes []int
		for _, m := range mem.takeSent() {
			sizes = append(sizes, len(m.data)/60)
		}
		want := []int{64, 36}
		if !gso {
			want = nil
			for range 100 {
				want = append(want, 1)
			}
		}
		if len(sizes) != len(want) || sizes[0] != want[0] || sizes[len(sizes)-1] != want[len(want)-1] {
			t.Errorf("GSO %v: packets per message %v, want %v", gso, sizes, want)
		}
		e.Close()
	}
}
