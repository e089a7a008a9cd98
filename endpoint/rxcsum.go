package endpoint

import (
	"encoding/binary"
	"net/netip"

	"github.com/ipipstack/ipipstack/endpoint/encap"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// The receive checksum model, in one place.
//
// The endpoint always declares RX checksum offload, so gVisor checks no
// TCP or UDP checksum (nor, for IPv4, the header checksum) of what the
// endpoint delivers: the endpoint guarantees that every such packet was
// verified, in one of two ways and nowhere else (checkInner):
//
//  1. The kernel verified a non-zero outer UDP checksum over the datagram
//     (Message.Verified, from a transport whose Offloads.RXChecksum says
//     it can be trusted) and the inner source is on the tunnel's own link
//     (Options.OnLink): the peer originated the packet, so that checksum
//     covered exactly the bytes it originated. A packet the peer only
//     forwarded was checked by nothing on the hop before it, whatever its
//     outer checksum says.
//  2. The endpoint verified the inner checksum itself: TCP, UDP, ICMP and
//     ICMPv6 in an unfragmented IPv4 packet or an IPv6 packet without
//     extension headers. A packet that fails is dropped as BadChecksum.
//     ValidateInner always verifies the IPv4 header checksum.
//
// What the endpoint cannot verify (fragments, IPv6 extension headers, other
// protocols) is delivered after the rest of its batch, alone, while the
// endpoint declares no RX checksum offload (deliverPending): gVisor's NIC
// reads Capabilities for every packet, and a reassembled datagram inherits
// the flag of its first fragment, so the stack checks these itself. rxMu
// keeps those deliveries apart from the verified ones of other receive
// goroutines.
//
// Merged packets (gVisor GRO, coalesce.go) keep their first segment's
// checksums: every segment they hold was verified before merging, and the
// stack does not look at them again.

// verdict is what verifyInner concludes about one inner packet.
type verdict uint8

const (
	// unverifiable: a fragment, an IPv6 extension header, a protocol the
	// endpoint does not check, or a transport header too short to hold
	// its checksum: the stack checks (and counts) it.
	unverifiable verdict = iota
	good
	bad
)

// Protocol numbers verifyInner checks.
const (
	protoICMP   = 1
	protoTCP    = 6
	protoUDP    = 17
	protoICMPv6 = 58
)

// verifyInner checks the transport checksum of an inner packet that passed
// encap.ValidateInner (pkt is trimmed to its IP length, p its fields).
func verifyInner(pkt []byte, p encap.Packet) verdict {
	var l4 []byte
	if p.Proto == encap.ProtoIPIP {
		ihl := int(pkt[0]&0xf) * 4
		if binary.BigEndian.Uint16(pkt[6:])&0x3fff != 0 { // MF or an offset
			return unverifiable
		}
		l4 = pkt[ihl:]
	} else {
		l4 = pkt[header.IPv6MinimumSize:]
	}
	switch p.Transport {
	case protoTCP:
		if len(l4) < header.TCPMinimumSize {
			return unverifiable
		}
	case protoUDP:
		if len(l4) < header.UDPMinimumSize {
			return unverifiable
		}
		n := int(binary.BigEndian.Uint16(l4[4:]))
		if n < header.UDPMinimumSize || n > len(l4) {
			return unverifiable
		}
		l4 = l4[:n]
		if binary.BigEndian.Uint16(l4[6:]) == 0 {
			// No checksum: allowed over IPv4 (RFC 768), never over
			// IPv6 (RFC 8200 §8.1), where the stack would drop it.
			if p.Proto == encap.ProtoIPIP {
				return good
			}
			return bad
		}
	case protoICMP:
		if p.Proto != encap.ProtoIPIP || len(l4) < header.ICMPv4MinimumSize {
			return unverifiable
		}
		if checksum.Checksum(l4, 0) != 0xffff {
			return bad
		}
		return good
	case protoICMPv6:
		if p.Proto != encap.ProtoIPv6 || len(l4) < header.ICMPv6MinimumSize {
			return unverifiable
		}
	default:
		return unverifiable
	}
	if checksum.Checksum(l4, pseudoSum(p.Src, p.Dst, p.Transport, len(l4))) != 0xffff {
		return bad
	}
	return good
}

// pseudoSum is the checksum of the TCP/UDP/ICMPv6 pseudo-header.
func pseudoSum(src, dst netip.Addr, proto uint8, length int) uint16 {
	var b [36]byte
	n := 0
	if src.Is4() {
		s, d := src.As4(), dst.As4()
		n += copy(b[n:], s[:])
		n += copy(b[n:], d[:])
	} else {
		s, d := src.As16(), dst.As16()
		n += copy(b[n:], s[:])
		n += copy(b[n:], d[:])
	}
	// Length (32 bits for IPv6, 16 for IPv4: the sum is the same) and
	// protocol.
	binary.BigEndian.PutUint16(b[n:], uint16(length))
	b[n+3] = proto
	return checksum.Checksum(b[:n+4], 0)
}

// checkInner decides whether an inner packet that passed every other check
// reaches the stack verified (see the model above); ok is false when it was
// dropped for a bad checksum.
func (e *Endpoint) checkInner(m *Message, inner []byte, p encap.Packet) (verified, ok bool) {
	if m.Verified && e.offloads.RXChecksum {
		if onLink := e.onLink.Load(); onLink != nil && contains(*onLink, p.Src) {
			return true, true
		}
	}
	switch verifyInner(inner, p) {
	case good:
		return true, true
	case bad:
		e.stats.drop(encap.BadChecksum)
		return false, false
	}
	return false, true
}

// SetOnLink replaces the inner prefixes of the tunnel's own link (see
// Options.OnLink). Safe while traffic flows.
func (e *Endpoint) SetOnLink(p []netip.Prefix) {
	if p == nil {
		e.onLink.Store(nil)
		return
	}
	c := make([]netip.Prefix, len(p))
	for i, q := range p {
		c[i] = q.Masked()
	}
	e.onLink.Store(&c)
}

// rxBatch is one receive goroutine's delivery state while it delivers one
// batch of datagrams.
type rxBatch struct {
	// to receives verified packets: the stack, or GRO in front of it.
	to stack.NetworkDispatcher
	// stack is the stack itself, for pending packets.
	stack stack.NetworkDispatcher
	// pending holds copies of the unverified packets of the batch, for
	// deliverPending.
	pending []*stack.PacketBuffer
}

// directRX returns an rxBatch that delivers straight to d.
func directRX(d stack.NetworkDispatcher) *rxBatch { return &rxBatch{to: d, stack: d} }

// deliverPending hands rx's unverified packets to the stack while the
// endpoint declares no RX checksum offload, so that the stack verifies
// them. The caller must not hold rxMu.
func (e *Endpoint) deliverPending(rx *rxBatch) {
	if len(rx.pending) == 0 {
		return
	}
	e.rxMu.Lock()
	e.rxUnverified.Store(true)
	for i, pkt := range rx.pending {
		rx.stack.DeliverNetworkPacket(pkt.NetworkProtocolNumber, pkt)
		pkt.DecRef()
		rx.pending[i] = nil
	}
	e.rxUnverified.Store(false)
	e.rxMu.Unlock()
	rx.pending = rx.pending[:0]
}
