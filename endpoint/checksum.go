package endpoint

import (
	"encoding/binary"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// checksumField returns where the checksum of a transport header of proto
// is and the header's minimum length; ok is false for protocols other
// than TCP and UDP.
func checksumField(proto tcpip.TransportProtocolNumber) (off, hdrLen int, ok bool) {
	switch proto {
	case header.TCPProtocolNumber:
		return header.TCPChecksumOffset, header.TCPMinimumSize, true
	case header.UDPProtocolNumber:
		return udpChecksumOffset, header.UDPMinimumSize, true
	}
	return 0, 0, false
}

// completeChecksum computes the TCP or UDP checksum of a whole packet.
func completeChecksum(pkt *stack.PacketBuffer, f *l3Info) {
	off, hdrLen, ok := checksumField(f.proto)
	if !ok {
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

// finishChecksum completes the TCP checksum of a packet for which gVisor
// wrote only the pseudo-header sum (host GSO, CHECKSUM_PARTIAL): the sum
// over the TCP header, whose checksum field holds the pseudo-header sum,
// and the payload is the checksum.
func finishChecksum(pkt *stack.PacketBuffer) {
	tcp := header.TCP(pkt.TransportHeader().Slice())
	if len(tcp) < header.TCPMinimumSize {
		return
	}
	sum := checksum.Checksum(tcp, 0)
	sum = checksum.Combine(sum, pkt.Data().Checksum())
	tcp.SetChecksum(^sum)
}
