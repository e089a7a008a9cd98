package endpoint

import (
	"encoding/binary"
	"net/netip"
	"sync"

	"github.com/ipipstack/ipipstack/endpoint/encap"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// Transport checksums on transmit.
//
// The endpoint declares TX checksum offload (Capabilities) because a
// forwarding gVisor recomputes the TCP or UDP checksum of every packet it
// forwards out of a NIC without it (ipv4.go and ipv6.go
// forwardPacketWithRoute call PacketBuffer.CalculateTransportChecksum).
// That sums a first fragment as if it were the whole datagram, writes
// "checksums" into the data of later IPv4 fragments (bytes 6-7 or 16-17 of
// their payload), and repairs the checksum of a corrupted packet, which a
// router must pass on as it came so that the receiver drops it.
//
// With the offload declared, gVisor leaves the TCP and UDP checksums of the
// packets it originates at 0 (tcp/connect.go buildTCPHdr, udp/endpoint.go
// write) and the endpoint completes them here, before encapsulation:
//   - a forwarded packet (NetworkPacketInfo.IsForwardedPacket) leaves as it
//     came;
//   - a host GSO packet (offload.go) has its checksum finished by
//     WritePackets or writeSuper, not here;
//   - a whole TCP or UDP packet gets its checksum (a UDP checksum that
//     comes out 0 is sent as 0xffff, RFC 768);
//   - a UDP datagram that gVisor fragmented (larger than the MTU) carries in its first fragment a checksum over
//     all of them: the endpoint holds the first fragment back, sums the
//     data of the fragments that follow and sends the first fragment,
//     completed, right after the last one. Receivers reassemble fragments
//     in any order (Linux sent them last to first for years);
//   - ICMP, which gVisor always checksums, and every other protocol are
//     left alone.
//
// A capture taken above the endpoint (gVisor's sniffer) sees packets
// before this, so locally sent TCP and UDP show checksum 0 there, as
// tcpdump shows on a Linux NIC with checksum offload.

// maxHeldFragments bounds the fragmented datagrams whose first fragment
// waits for the rest. gVisor writes a datagram's fragments one after the
// other, so few are ever in flight at once; when a slot is needed and none
// is free, the oldest datagram is dropped (a later fragment of it was lost
// on the way, most likely in the NIC queue).
const maxHeldFragments = 8

// heldFragment is a first fragment waiting for the rest of its datagram.
type heldFragment struct {
	pkt      *stack.PacketBuffer // with a reference of the hold's; nil if the slot is free
	v6       bool
	src, dst tcpip.Address
	id       uint32
	// sum is the checksum of the pseudo-header and of the datagram's
	// bytes so far; next is the offset the next fragment must start at,
	// and udpLen the datagram's UDP length, where the last one ends.
	sum          uint16
	next, udpLen int
	age          uint64
}

// fragmentHold keeps the first fragments of locally sent UDP datagrams
// until their checksum is known.
type fragmentHold struct {
	// mu guards the fields below. It is taken for fragments only.
	mu    sync.Mutex
	slots [maxHeldFragments]heldFragment
	clock uint64
}

// release drops every held fragment.
func (h *fragmentHold) release() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for i := range h.slots {
		if h.slots[i].pkt != nil {
			h.slots[i].pkt.DecRef()
		}
		h.slots[i] = heldFragment{}
	}
}

// l3Info is what txChecksum needs of an IP header.
type l3Info struct {
	v6       bool
	proto    tcpip.TransportProtocolNumber
	src, dst tcpip.Address
	id       uint32
	offset   int // fragment offset in bytes
	more     bool
}

func (f *l3Info) fragment() bool { return f.more || f.offset != 0 }

// parseL3 reads the IPv4 header, or the IPv6 header and a Fragment header
// right after it, of a packet gVisor built. It reports false for anything
// else, which txChecksum then leaves alone.
func parseL3(b []byte) (f l3Info, ok bool) {
	if len(b) == 0 {
		return f, false
	}
	switch b[0] >> 4 {
	case 4:
		if len(b) < header.IPv4MinimumSize {
			return f, false
		}
		h := header.IPv4(b)
		f.proto = h.TransportProtocol()
		f.src, f.dst = h.SourceAddress(), h.DestinationAddress()
		f.id = uint32(h.ID())
		f.offset, f.more = int(h.FragmentOffset()), h.More()
		return f, true
	case 6:
		if len(b) < header.IPv6MinimumSize {
			return f, false
		}
		h := header.IPv6(b)
		f.v6 = true
		f.src, f.dst = h.SourceAddress(), h.DestinationAddress()
		f.proto = tcpip.TransportProtocolNumber(h.NextHeader())
		if h.NextHeader() != uint8(header.IPv6FragmentExtHdrIdentifier) {
			return f, true
		}
		// RFC 8200 §4.5: next header, reserved, offset (13 bits) with
		// M in bit 0, identification.
		fh := b[header.IPv6MinimumSize:]
		if len(fh) < header.IPv6FragmentExtHdrLength {
			return f, false
		}
		f.proto = tcpip.TransportProtocolNumber(fh[0])
		fo := binary.BigEndian.Uint16(fh[2:])
		f.offset, f.more = int(fo&^7), fo&1 != 0
		f.id = binary.BigEndian.Uint32(fh[4:])
		return f, true
	}
	return f, false
}

// l4Header returns the first n bytes of pkt's transport layer, writable in
// place, and whether they were the transport header (true) or the start of
// the data, where gVisor puts the transport bytes of a fragment.
func l4Header(pkt *stack.PacketBuffer, n int) (b []byte, inHeader, ok bool) {
	if th := pkt.TransportHeader().Slice(); len(th) > 0 {
		return th, true, len(th) >= n
	}
	b, ok = pkt.Data().PullUp(n)
	return b, false, ok
}

// l4Sum is the checksum and the length of pkt's transport layer bytes:
// its transport header, if it has one, and its data.
func l4Sum(pkt *stack.PacketBuffer) (sum uint16, n int) {
	th := pkt.TransportHeader().Slice()
	// Transport headers have an even length (8 for UDP, a multiple of 4
	// for TCP), so the two sums combine.
	return checksum.Combine(checksum.Checksum(th, 0), pkt.Data().Checksum()), len(th) + pkt.Data().Size()
}

// txChecksum completes the transport checksum of a packet gVisor wrote
// without one (see the comment at the top of the file). It reports whether
// it has queued or held pkt itself; if not, the caller sends pkt.
func (e *Endpoint) txChecksum(tb *txBatch, pkt *stack.PacketBuffer, remote netip.AddrPort, mtu int) bool {
	if pkt.NetworkPacketInfo.IsForwardedPacket {
		return false
	}
	f, ok := parseL3(pkt.NetworkHeader().Slice())
	if !ok {
		return false
	}
	switch {
	case !f.fragment():
		completeChecksum(pkt, &f)
		return false
	case f.offset == 0:
		return e.holdFirstFragment(pkt, &f)
	default:
		return e.addFragment(tb, pkt, &f, remote, mtu)
	}
}

// completeChecksum computes the TCP or UDP checksum of a whole packet.
func completeChecksum(pkt *stack.PacketBuffer, f *l3Info) {
	var off, hdrLen int
	switch f.proto {
	case header.TCPProtocolNumber:
		off, hdrLen = header.TCPChecksumOffset, header.TCPMinimumSize
	case header.UDPProtocolNumber:
		off, hdrLen = udpChecksumOffset, header.UDPMinimumSize
	default:
		return
	}
	b, _, ok := l4Header(pkt, hdrLen)
	if !ok {
		return
	}
	b[off], b[off+1] = 0, 0
	sum, n := l4Sum(pkt)
	sum = checksum.Combine(sum, header.PseudoHeaderChecksum(f.proto, f.src, f.dst, uint16(n)))
	binary.BigEndian.PutUint16(b[off:], finalChecksum(f.proto, sum))
}

// udpChecksumOffset is where a UDP header holds its checksum (RFC 768).
const udpChecksumOffset = 6

// finalChecksum is the checksum field for the one's complement sum sum: its
// complement, except that UDP sends a computed 0 as 0xffff (RFC 768), since
// 0 means no checksum.
func finalChecksum(proto tcpip.TransportProtocolNumber, sum uint16) uint16 {
	c := ^sum
	if c == 0 && proto == header.UDPProtocolNumber {
		c = 0xffff
	}
	return c
}

// holdFirstFragment holds the first fragment of a UDP datagram that has no
// checksum yet and reports whether it did.
func (e *Endpoint) holdFirstFragment(pkt *stack.PacketBuffer, f *l3Info) bool {
	if f.proto != header.UDPProtocolNumber {
		return false
	}
	u, _, ok := l4Header(pkt, header.UDPMinimumSize)
	if !ok || binary.BigEndian.Uint16(u[udpChecksumOffset:]) != 0 {
		return false // a checksum of the sender's own (a raw socket's, say)
	}
	udpLen := int(binary.BigEndian.Uint16(u[4:]))
	sum, n := l4Sum(pkt)
	// Every fragment but the last carries a multiple of 8 bytes (RFC 791
	// §3.2, RFC 8200 §4.5), so the sums of the fragments combine.
	if n%8 != 0 || n >= udpLen {
		return false
	}
	sum = checksum.Combine(sum, header.PseudoHeaderChecksum(header.UDPProtocolNumber, f.src, f.dst, uint16(udpLen)))

	h := &e.frags
	h.mu.Lock()
	defer h.mu.Unlock()
	h.clock++
	slot := &h.slots[0]
	for i := range h.slots {
		s := &h.slots[i]
		if s.pkt == nil {
			slot = s
			break
		}
		if s.age < slot.age {
			slot = s
		}
	}
	if slot.pkt != nil {
		// Its datagram lost a fragment on the way: it cannot be
		// completed.
		slot.pkt.DecRef()
		e.stats.drop(encap.SendError)
	}
	*slot = heldFragment{pkt: pkt.IncRef(), v6: f.v6, src: f.src, dst: f.dst, id: f.id,
		sum: sum, next: n, udpLen: udpLen, age: h.clock}
	return true
}

// addFragment adds a later fragment to the sum of its held first fragment,
// if there is one, and reports whether it queued pkt itself: when pkt is
// the last fragment, it queues pkt and then the completed first fragment.
func (e *Endpoint) addFragment(tb *txBatch, pkt *stack.PacketBuffer, f *l3Info, remote netip.AddrPort, mtu int) bool {
	if f.proto != header.UDPProtocolNumber {
		return false
	}
	h := &e.frags
	h.mu.Lock()
	var slot *heldFragment
	for i := range h.slots {
		s := &h.slots[i]
		if s.pkt != nil && s.id == f.id && s.v6 == f.v6 && s.src == f.src && s.dst == f.dst {
			slot = s
			break
		}
	}
	if slot == nil {
		h.mu.Unlock()
		return false
	}
	sum, n := l4Sum(pkt)
	complete := false
	if f.offset == slot.next {
		slot.sum = checksum.Combine(slot.sum, sum)
		slot.next += n
		if f.more {
			h.mu.Unlock()
			return false
		}
		complete = slot.next == slot.udpLen
	}
	// The last fragment, or one after a gap: the datagram ends here.
	first, total := slot.pkt, slot.sum
	*slot = heldFragment{}
	h.mu.Unlock()

	e.queue(tb, pkt, remote, mtu)
	if complete {
		if u, _, ok := l4Header(first, header.UDPMinimumSize); ok {
			binary.BigEndian.PutUint16(u[udpChecksumOffset:], finalChecksum(header.UDPProtocolNumber, total))
			e.queue(tb, first, remote, mtu)
			// The queued message points into first: send it before
			// dropping the hold's reference.
			e.flush(tb)
		}
	} else {
		e.stats.drop(encap.SendError)
	}
	first.DecRef()
	return true
}
