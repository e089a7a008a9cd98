package endpoint

import (
	"bytes"
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// gsoTransport is a memTransport with UDP GSO.
type gsoTransport struct{ *memTransport }

func (gsoTransport) Offloads() Offloads { return Offloads{GSO: true} }

// superSegment is a host-GSO TCP packet as gVisor hands it over: IPv4 and
// TCP headers (checksum: the pseudo-header sum only) and payload, to be cut
// into mss-byte packets.
func superSegment(payload []byte, seq uint32, mss int) *stack.PacketBuffer {
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{
		ReserveHeaderBytes: header.IPv4MinimumSize + header.TCPMinimumSize,
		Payload:            buffer.MakeWithData(payload),
	})
	src, dst := tcpip.AddrFrom4(inner4L.As4()), tcpip.AddrFrom4(inner4R.As4())
	tcp := header.TCP(pkt.TransportHeader().Push(header.TCPMinimumSize))
	tcp.Encode(&header.TCPFields{SrcPort: 5001, DstPort: 41000, SeqNum: seq, AckNum: 1,
		DataOffset: header.TCPMinimumSize, Flags: header.TCPFlagAck, WindowSize: 512})
	length := uint16(header.TCPMinimumSize + len(payload))
	tcp.SetChecksum(header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, length))
	ip := header.IPv4(pkt.NetworkHeader().Push(header.IPv4MinimumSize))
	ip.Encode(&header.IPv4Fields{TotalLength: uint16(header.IPv4MinimumSize) + length, TTL: 64,
		Protocol: uint8(header.TCPProtocolNumber), SrcAddr: src, DstAddr: dst, Flags: header.IPv4FlagDontFragment})
	ip.SetChecksum(^ip.CalculateChecksum())
	pkt.NetworkProtocolNumber = header.IPv4ProtocolNumber
	pkt.TransportProtocolNumber = header.TCPProtocolNumber
	pkt.GSOOptions = stack.GSO{Type: stack.GSOTCPv4, NeedsCsum: true, CsumOffset: header.TCPChecksumOffset,
		MSS: uint16(mss), L3HdrLen: header.IPv4MinimumSize, MaxSize: 1 << 16}
	return pkt
}

// TestWriteManySuperSegments writes, in one WritePackets call, enough small
// packets to nearly fill a batch and then several super-segments: each
// super-segment's message must still hold its own bytes when it is sent,
// even when the batch fills in the middle.
func TestWriteManySuperSegments(t *testing.T) {
	local, remote := netip.AddrPortFrom(outer4L, 4700), netip.AddrPortFrom(outer4R, 4701)
	tr := gsoTransport{newMemTransport(FramingUDP, local)}
	e, err := New(Options{Transport: tr, Remote: remote, MTU: 1472})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	const mss, pieces, supers = 1400, 10, 12
	var pkts stack.PacketBufferList
	for range e.batch - 2 {
		pkts.PushBack(gvPacket4(t, 0, 64))
	}
	for k := range supers {
		payload := bytes.Repeat([]byte{byte(k + 1)}, mss*pieces)
		pkts.PushBack(superSegment(payload, uint32(1000+k*mss*pieces), mss))
	}
	if _, terr := e.WritePackets(pkts); terr != nil {
		t.Fatal(terr)
	}
	pkts.DecRef()
	sent := tr.takeSent()
	seg := header.IPv4MinimumSize + header.TCPMinimumSize + mss
	var got []memSent
	for _, m := range sent {
		if m.gso == seg {
			got = append(got, m)
		}
	}
	// The small packets, all of one size, leave coalesced (txcoalesce.go).
	if st := e.Stats(); st.DropTotal() != 0 || st.TxPackets != uint64(e.batch-2+supers*pieces) {
		t.Fatalf("sent %d packets, dropped %v; want %d", st.TxPackets, st.Drops, e.batch-2+supers*pieces)
	}
	if len(got) != supers {
		t.Fatalf("sent %d GSO messages, want %d", len(got), supers)
	}
	for k, m := range got {
		if m.gso != seg || len(m.data) != pieces*seg {
			t.Fatalf("message %d: %d bytes in %d-byte segments, want %d of %d", k, len(m.data), m.gso, pieces, seg)
		}
		for p := range pieces {
			b := m.data[p*seg : (p+1)*seg]
			if !bytes.Equal(b[seg-mss:], bytes.Repeat([]byte{byte(k + 1)}, mss)) {
				t.Fatalf("message %d, packet %d: payload of another super-segment (first byte %d, want %d)", k, p, b[seg-mss], k+1)
			}
			tcp := header.TCP(b[header.IPv4MinimumSize:])
			if want := uint32(1000 + k*mss*pieces + p*mss); tcp.SequenceNumber() != want {
				t.Fatalf("message %d, packet %d: sequence %d, want %d", k, p, tcp.SequenceNumber(), want)
			}
		}
	}
}
