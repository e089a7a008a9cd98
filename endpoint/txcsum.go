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
// write), and a TXChecksummer completes them before encapsulation. Other
// link endpoints can do the same: a forwarding stack (package stack) wraps
// each link added with AddLink that lacks the offload, such as a TUN
// device, in one that declares it and uses a TXChecksummer too.
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
	proto    tcpip.TransportProtocolNumber
	src, dst tcpip.Address
	id       uint32
	// sum is the checksum of the datagram's transport bytes so far (the
	// pseudo-header is added when the length is known, at the end); next
	// is the offset the next fragment must start at, and udpLen the
	// datagram's UDP length, where the last one ends (0 for TCP, whose
	// header says no length: its last fragment says where it ends).
	sum          uint16
	next, udpLen int
	age          uint64
}

// TXChecksummer completes the TCP and UDP checksums of the packets a gVisor
// stack writes to a link endpoint that declares
// stack.CapabilityTXChecksumOffload, which the stack then leaves at 0. The
// link endpoint passes each packet of WritePackets to Complete before it
// sends it, and sends what Complete says:
//   - a forwarded packet (NetworkPacketInfo.IsForwardedPacket) leaves as it
//     came;
//   - a host GSO packet (GSOOptions.Type set) is left alone: its checksum
//     is the link endpoint's to finish as it segments it;
//   - a whole TCP or UDP packet gets its checksum (a UDP checksum that
//     comes out 0 is sent as 0xffff, RFC 768);
//   - a UDP datagram or TCP segment that gVisor fragmented (larger than
//     the MTU: gVisor fragments what it sends itself even with DF, for a
//     TCP segment sized before the MTU dropped) carries in its first
//     fragment a checksum over all of them: the first fragment
//     is held back (TXHeld) while the data of the fragments that follow is
//     summed, and comes back, completed, with the last one
//     (TXSendWithFirst), to be sent right after it. Receivers reassemble
//     fragments in any order (Linux sent them last to first for years). If
//     a fragment in between never comes, the datagram cannot be completed
//     and its first fragment is dropped: Complete reports it, for the
//     caller to count. At most maxHeldFragments datagrams are held at once;
//     the oldest makes room;
//   - ICMP, which gVisor always checksums, and every other protocol are
//     left alone.
//
// The zero value is ready to use. Its methods are safe for concurrent use;
// a datagram's fragments must reach Complete in the order gVisor wrote
// them.
type TXChecksummer struct {
	// mu guards the fields below. It is taken for fragments only.
	mu    sync.Mutex
	slots [maxHeldFragments]heldFragment
	clock uint64
}

// TXVerdict is what TXChecksummer.Complete tells its caller to send.
type TXVerdict uint8

const (
	// TXSend: send the packet.
	TXSend TXVerdict = iota
	// TXHeld: send nothing now; the checksummer holds the packet, the
	// first fragment of a UDP datagram or TCP segment, with a reference of
	// its own.
	TXHeld
	// TXSendWithFirst: send the packet, the last fragment of its
	// datagram, and right after it the datagram's first fragment,
	// completed, that Complete returned.
	TXSendWithFirst
)

// String returns the verdict's name.
func (v TXVerdict) String() string {
	switch v {
	case TXSend:
		return "send"
	case TXHeld:
		return "held"
	case TXSendWithFirst:
		return "send with first"
	}
	return "unknown"
}

// Release drops every held fragment. The checksummer can be used again
// afterwards.
func (c *TXChecksummer) Release() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range c.slots {
		if c.slots[i].pkt != nil {
			c.slots[i].pkt.DecRef()
		}
		c.slots[i] = heldFragment{}
	}
}

// l3Info is what Complete needs of an IP header.
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
// else, which Complete then leaves alone.
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

// Complete completes the transport checksum of pkt, a packet the stack
// wrote, in place, and reports what to send (see TXChecksummer). The
// caller keeps its reference to pkt; a held pkt gets one of the
// checksummer's. first is set with TXSendWithFirst only, and its reference
// passes to the caller, which drops it once first has been sent (or
// copied). dropped reports that a held first fragment was dropped, its
// datagram incomplete, for the caller to count as a send error.
func (c *TXChecksummer) Complete(pkt *stack.PacketBuffer) (v TXVerdict, first *stack.PacketBuffer, dropped bool) {
	if pkt.NetworkPacketInfo.IsForwardedPacket || pkt.GSOOptions.Type != stack.GSONone {
		return TXSend, nil, false
	}
	f, ok := parseL3(pkt.NetworkHeader().Slice())
	if !ok {
		return TXSend, nil, false
	}
	switch {
	case !f.fragment():
		completeChecksum(pkt, &f)
		return TXSend, nil, false
	case f.offset == 0:
		return c.holdFirstFragment(pkt, &f)
	default:
		return c.addFragment(pkt, &f)
	}
}

// txChecksum completes the transport checksum of a packet gVisor wrote
// without one (TXChecksummer.Complete). It reports whether it has queued
// or held pkt itself; if not, the caller sends pkt.
func (e *Endpoint) txChecksum(tb *txBatch, pkt *stack.PacketBuffer, remote netip.AddrPort, mtu int) bool {
	v, first, dropped := e.tx.Complete(pkt)
	if dropped {
		e.stats.drop(encap.SendError)
	}
	switch v {
	case TXHeld:
		return true
	case TXSendWithFirst:
		e.queue(tb, pkt, remote, mtu)
		e.queue(tb, first, remote, mtu)
		// The queued message points into first: send it before
		// dropping the reference.
		e.flush(tb)
		first.DecRef()
		return true
	}
	return false
}

// holdFirstFragment holds pkt, a first fragment, if its datagram is UDP
// or TCP and has no checksum yet.
func (c *TXChecksummer) holdFirstFragment(pkt *stack.PacketBuffer, f *l3Info) (v TXVerdict, first *stack.PacketBuffer, dropped bool) {
	off, hdrLen, ok := checksumField(f.proto)
	if !ok {
		return TXSend, nil, false
	}
	u, _, ok := l4Header(pkt, hdrLen)
	if !ok || binary.BigEndian.Uint16(u[off:]) != 0 {
		return TXSend, nil, false // a checksum of the sender's own (a raw socket's, say)
	}
	udpLen := 0
	sum, n := l4Sum(pkt)
	if f.proto == header.UDPProtocolNumber {
		udpLen = int(binary.BigEndian.Uint16(u[4:]))
		if n >= udpLen {
			return TXSend, nil, false
		}
	}
	// Every fragment but the last carries a multiple of 8 bytes (RFC 791
	// §3.2, RFC 8200 §4.5), so the sums of the fragments combine.
	if n%8 != 0 {
		return TXSend, nil, false
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	c.clock++
	slot := &c.slots[0]
	for i := range c.slots {
		s := &c.slots[i]
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
		dropped = true
	}
	*slot = heldFragment{pkt: pkt.IncRef(), v6: f.v6, proto: f.proto, src: f.src, dst: f.dst, id: f.id,
		sum: sum, next: n, udpLen: udpLen, age: c.clock}
	return TXHeld, nil, dropped
}

// addFragment adds a later fragment to the sum of its held first fragment,
// if there is one. When pkt is the last fragment, or follows a gap, the
// datagram ends: its first fragment comes back completed, or is dropped.
func (c *TXChecksummer) addFragment(pkt *stack.PacketBuffer, f *l3Info) (v TXVerdict, first *stack.PacketBuffer, dropped bool) {
	if _, _, ok := checksumField(f.proto); !ok {
		return TXSend, nil, false
	}
	c.mu.Lock()
	var slot *heldFragment
	for i := range c.slots {
		s := &c.slots[i]
		if s.pkt != nil && s.id == f.id && s.v6 == f.v6 && s.proto == f.proto && s.src == f.src && s.dst == f.dst {
			slot = s
			break
		}
	}
	if slot == nil {
		c.mu.Unlock()
		return TXSend, nil, false
	}
	sum, n := l4Sum(pkt)
	complete := false
	if f.offset == slot.next {
		slot.sum = checksum.Combine(slot.sum, sum)
		slot.next += n
		if f.more {
			c.mu.Unlock()
			return TXSend, nil, false
		}
		complete = slot.udpLen == 0 || slot.next == slot.udpLen
	}
	// The last fragment, or one after a gap: the datagram ends here.
	first, total, length, proto := slot.pkt, slot.sum, slot.next, slot.proto
	src, dst := slot.src, slot.dst
	*slot = heldFragment{}
	c.mu.Unlock()

	if complete && length <= 0xffff {
		off, hdrLen, _ := checksumField(proto)
		if u, _, ok := l4Header(first, hdrLen); ok {
			total = checksum.Combine(total, header.PseudoHeaderChecksum(proto, src, dst, uint16(length)))
			binary.BigEndian.PutUint16(u[off:], finalChecksum(proto, total))
			return TXSendWithFirst, first, false
		}
	}
	first.DecRef()
	return TXSend, nil, true
}
