package endpoint

import (
	"encoding/binary"
	"net/netip"

	"github.com/ipipstack/ipipstack/endpoint/encap"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// clampTooBig gives an ICMPv6 Packet Too Big message whose MTU field
// is below IPv6's minimum link MTU that minimum, fixing the checksum. gVisor
// sends Packet Too Big with MTU 0 when it cannot forward a packet
// (ipv6.go forwardPacketWithRoute passes no MTU to returnError), and a
// gVisor sender that believes it sets its TCP segment size to 1 byte.
// RFC 8200 §5 guarantees every link 1280 bytes, so 1280 is always a safe
// answer, and what Linux assumes on receiving a smaller one (RFC 8201 §4).
// pkt is the inner packet's first bytes; it is written in place.
func clampTooBig(pkt []byte) {
	const (
		icmp       = 40 // the ICMPv6 header follows the IPv6 header directly
		typeTooBig = 2  // RFC 4443 §3.2
	)
	if len(pkt) < icmp+8 || pkt[6] != 58 || pkt[icmp] != typeTooBig {
		return
	}
	mtu := binary.BigEndian.Uint32(pkt[icmp+4:])
	if mtu >= MinIPv6MTU {
		return
	}
	binary.BigEndian.PutUint32(pkt[icmp+4:], MinIPv6MTU)
	// RFC 1624 incremental update: HC' = ~(~HC + ~m + m') per 16-bit word.
	sum := uint32(^binary.BigEndian.Uint16(pkt[icmp+2:]))
	sum += uint32(^uint16(mtu>>16)) + uint32(^uint16(mtu)) + MinIPv6MTU>>16 + MinIPv6MTU&0xffff
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	binary.BigEndian.PutUint16(pkt[icmp+2:], ^uint16(sum))
}

// sendTooBig tells the sender of pkt, a packet larger than mtu, inside the
// stack: Fragmentation Needed for IPv4 with DF, Packet Too Big for IPv6
// (RFC 1191, RFC 8201). It is asynchronous: WritePackets may be called with
// transport endpoint locks held, which the error's delivery takes.
func (e *Endpoint) sendTooBig(pkt *stack.PacketBuffer, mtu int) {
	v := pkt.ToView()
	defer v.Release()
	msg := makeTooBig(v.AsSlice(), mtu)
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

// makeTooBig returns the ICMP error, with its IP header, that tells
// the sender of the IP packet orig that the next hop's MTU is mtu, or nil
// if none is due (not IP, IPv4 without DF, an ICMP error itself).
func makeTooBig(orig []byte, mtu int) []byte {
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

// learnTooBig records the path MTU reported by pkt, an inner IPv6 packet
// with next header ICMPv6 that decap accepted, if it is a Packet Too Big to
// learn from (parseTooBig).
func (e *Endpoint) learnTooBig(pkt []byte) {
	dst, mtu, ok := parseTooBig(pkt, e.mtu.Load())
	if !ok || !e.pmtu6.learn(dst, mtu) {
		return
	}
	e.stats.pmtuLearned.Add(1)
	e.log.Debug("path MTU learned from Packet Too Big", "tunnel", e.name,
		"dst", netip.AddrFrom16(dst), "mtu", mtu)
}

// parseTooBig reads pkt, an IPv6 packet whose next header is ICMPv6,
// trimmed to its length. If it is a Packet Too Big (RFC 4443 §3.2) with a
// valid checksum that quotes a packet its destination sent and reports an
// MTU of at least 1280 and below linkMTU, parseTooBig returns the quoted
// packet's destination and the MTU.
func parseTooBig(pkt []byte, linkMTU uint32) (dst [16]byte, mtu uint32, ok bool) {
	const (
		icmp  = header.IPv6MinimumSize
		quote = icmp + header.ICMPv6PacketTooBigMinimumSize
	)
	if len(pkt) < quote+header.IPv6MinimumSize || pkt[6] != uint8(header.ICMPv6ProtocolNumber) ||
		pkt[icmp] != uint8(header.ICMPv6PacketTooBig) || pkt[quote]>>4 != 6 {
		return dst, 0, false
	}
	mtu = binary.BigEndian.Uint32(pkt[icmp+4:])
	if mtu < MinIPv6MTU || mtu >= linkMTU {
		return dst, 0, false
	}
	// The quoted packet's source (bytes 8-23) is the message's destination
	// (24-39).
	if [16]byte(pkt[quote+8:quote+24]) != [16]byte(pkt[24:40]) {
		return dst, 0, false
	}
	sum := header.PseudoHeaderChecksum(header.ICMPv6ProtocolNumber,
		tcpip.AddrFrom16([16]byte(pkt[8:24])), tcpip.AddrFrom16([16]byte(pkt[24:40])), uint16(len(pkt)-icmp))
	if checksum.Checksum(pkt[icmp:], sum) != 0xffff {
		return dst, 0, false
	}
	return [16]byte(pkt[quote+24 : quote+40]), mtu, true
}
