package endpoint

import (
	"encoding/binary"
	"net/netip"

	"github.com/ipipstack/ipipstack/endpoint/encap"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// Path MTU, outer and inner.
//
// Outer: the transports set IP_PMTUDISC_DO (DF) on their sockets, so the
// kernel refuses a datagram larger than its path MTU to the peer with
// EMSGSIZE (EINVAL for a UDP GSO message whose segments are too big). The
// endpoint then asks the transport for the kernel's path MTU (a
// PathMTUer) and, if that leaves less room than the tunnel MTU, lowers the
// tunnel MTU to fit and logs it. The kernel learns a lower path MTU from
// its routes and from ICMP errors; the endpoint only ever lowers its MTU
// (like Linux ipip without pmtudisc probing back up).
//
// Inner: gVisor reads the NIC MTU afresh for every packet it forwards or
// fragments, and when a route is made, so forwarded packets and new
// connections see a lower MTU at once and forwarders answer DF packets
// with Fragmentation Needed / Packet Too Big. A TCP connection made
// before, though, keeps the segment size it chose at connect time, and
// its segments would now be dropped as TooBig for good. So, as a Linux
// tunnel does (skb_tunnel_check_pmtu), the endpoint answers a packet too
// big for the tunnel with an ICMP Fragmentation Needed (IPv4 with DF) or
// Packet Too Big (IPv6) delivered to its own stack, from the packet's
// destination to its source; gVisor's TCP then lowers its segment size
// and retransmits.

// PathMTUer is implemented by transports that can tell the kernel's
// current path MTU to a peer (the transports of ListenUDP and ListenRaw).
type PathMTUer interface {
	// PathMTU returns the path MTU to dst: the size of the largest outer
	// IP packet the kernel sends there unfragmented.
	PathMTU(dst netip.Addr) (int, error)
}

// maxPendingTooBig bounds the ICMP errors on their way into the stack.
const maxPendingTooBig = 16

// learnPathMTU is called when the transport refused a datagram of size
// bytes (the outer payload: inner packet plus any outer header the
// endpoint wrote) as too big. It lowers the MTU to what the kernel's path
// MTU leaves and reports whether the datagram was too big for it.
func (e *Endpoint) learnPathMTU(size int) bool {
	p, ok := e.tr.(PathMTUer)
	if !ok {
		return true
	}
	remote := e.Remote()
	pmtu, err := p.PathMTU(remote.Addr())
	if err != nil {
		e.logSendError(err)
		return true
	}
	overhead := Overhead(e.framing, remote.Addr().Is6(), e.pol)
	if e.framing != FramingUDP {
		// size includes the outer IP header the endpoint wrote.
		size -= overhead
	}
	mtu := pmtu - overhead
	if mtu < MinMTU {
		return true
	}
	for {
		old := e.mtu.Load()
		if uint32(mtu) >= old {
			return size > mtu
		}
		if e.mtu.CompareAndSwap(old, uint32(mtu)) {
			e.log.Warn("outer path MTU dropped; tunnel MTU lowered", "tunnel", e.name, "peer", remote,
				"path_mtu", pmtu, "from", old, "to", mtu)
			if mtu < MinIPv6MTU {
				e.log.Warn("tunnel MTU is below IPv6's minimum; inner IPv6 packets above it are dropped",
					"tunnel", e.name, "mtu", mtu)
			}
			return true
		}
	}
}

// tooBig tells the sender of pkt, a packet larger than mtu, inside the
// stack: Fragmentation Needed for IPv4 with DF, Packet Too Big for IPv6
// (RFC 1191, RFC 8201). It is asynchronous: WritePackets may be called with
// transport endpoint locks held, which the error's delivery takes.
func (e *Endpoint) tooBig(pkt *stack.PacketBuffer, mtu int) {
	v := pkt.ToView()
	defer v.Release()
	msg := tooBigMessage(v.AsSlice(), mtu)
	if msg == nil {
		return
	}
	if e.tooBigPending.Add(1) > maxPendingTooBig {
		e.tooBigPending.Add(-1)
		return
	}
	// Under mu, like Close sets closed: the goroutine is either counted
	// before Close waits for it, or not started.
	e.mu.RLock()
	d := e.dispatcher
	if d == nil || e.closed.Load() {
		e.mu.RUnlock()
		e.tooBigPending.Add(-1)
		return
	}
	e.wg.Add(1)
	e.mu.RUnlock()
	go func() {
		defer e.wg.Done()
		defer e.tooBigPending.Add(-1)
		proto := ipv4.ProtocolNumber
		if msg[0]>>4 == 6 {
			proto = ipv6.ProtocolNumber
		}
		p := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(msg)})
		p.NetworkProtocolNumber = proto
		d.DeliverNetworkPacket(proto, p)
		p.DecRef()
	}()
}

// tooBigMessage returns the ICMP error, with its IP header, that tells
// the sender of the IP packet orig that the next hop's MTU is mtu, or nil
// if none is due (not IP, IPv4 without DF, an ICMP error itself).
func tooBigMessage(orig []byte, mtu int) []byte {
	in, ok := encap.PeekInner(orig)
	if !ok {
		return nil
	}
	if in.Proto == encap.ProtoIPIP {
		h := header.IPv4(orig)
		if len(orig) < header.IPv4MinimumSize || !in.DF || h.Protocol() == uint8(header.ICMPv4ProtocolNumber) {
			return nil
		}
		// RFC 792: the IP header and the first 8 data bytes; more
		// (up to 576 bytes in all, RFC 1812 §4.3.2.3) helps no one here.
		quote := orig[:min(len(orig), int(h.HeaderLength())+8, 576-28)]
		b := make([]byte, header.IPv4MinimumSize+header.ICMPv4MinimumSize+len(quote))
		ip := header.IPv4(b)
		ip.Encode(&header.IPv4Fields{
			TotalLength: uint16(len(b)),
			TTL:         64,
			Protocol:    uint8(header.ICMPv4ProtocolNumber),
			SrcAddr:     h.DestinationAddress(),
			DstAddr:     h.SourceAddress(),
		})
		ip.SetChecksum(^ip.CalculateChecksum())
		icmp := header.ICMPv4(b[header.IPv4MinimumSize:])
		icmp.SetType(header.ICMPv4DstUnreachable)
		icmp.SetCode(header.ICMPv4FragmentationNeeded)
		binary.BigEndian.PutUint16(icmp[6:], uint16(min(mtu, 0xffff)))
		copy(icmp[header.ICMPv4MinimumSize:], quote)
		icmp.SetChecksum(^checksum.Checksum(icmp, 0))
		return b
	}
	if len(orig) < header.IPv6MinimumSize {
		return nil
	}
	h := header.IPv6(orig)
	if h.NextHeader() == uint8(header.ICMPv6ProtocolNumber) && len(orig) > header.IPv6MinimumSize && orig[header.IPv6MinimumSize] < 128 {
		return nil // an ICMPv6 error (types below 128), RFC 4443 §2.4 (e.1)
	}
	// RFC 4443 §3.2: as much of the packet as fits in the minimum MTU.
	quote := orig[:min(len(orig), MinIPv6MTU-header.IPv6MinimumSize-header.ICMPv6MinimumSize)]
	b := make([]byte, header.IPv6MinimumSize+header.ICMPv6MinimumSize+len(quote))
	ip := header.IPv6(b)
	src, dst := h.DestinationAddress(), h.SourceAddress()
	ip.Encode(&header.IPv6Fields{
		PayloadLength:     uint16(len(b) - header.IPv6MinimumSize),
		TransportProtocol: header.ICMPv6ProtocolNumber,
		HopLimit:          64,
		SrcAddr:           src,
		DstAddr:           dst,
	})
	icmp := header.ICMPv6(b[header.IPv6MinimumSize:])
	icmp.SetType(header.ICMPv6PacketTooBig)
	icmp.SetCode(0)
	icmp.SetMTU(uint32(max(mtu, MinIPv6MTU)))
	copy(icmp[header.ICMPv6MinimumSize:], quote)
	icmp.SetChecksum(header.ICMPv6Checksum(header.ICMPv6ChecksumParams{
		Header:      icmp[:header.ICMPv6MinimumSize],
		Src:         src,
		Dst:         dst,
		PayloadCsum: checksum.Checksum(quote, 0),
		PayloadLen:  len(quote),
	}))
	return b
}
