package endpoint

import (
	"encoding/binary"

	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// IPv4 fragments and DF.
//
// gVisor fragments a locally sent IPv4 packet that is larger than the MTU
// even when it has DF set (ipv4.go WritePacket, gvisor.dev/issue/5919),
// and its fragmenter copies the original flags, DF included, into every
// fragment (buildNextFragment). An echo reply does that: it copies DF from
// a request that fit the requester's MTU but not ours. A fragment with DF
// says "do not fragment" about a packet that was fragmented; Linux never
// sends one (ip_fragment clears DF, or refuses to fragment), and a router
// on the way could not cut it further to fit a smaller MTU. So the
// endpoint clears DF on the fragments the stack sends itself. Forwarded
// fragments leave as they came, as a Linux router forwards them.

// ipv4FlagsOffset is where an IPv4 header holds its flags and fragment
// offset (RFC 791 §3.1): 3 bits of flags (reserved, DF, MF), then 13 bits
// of offset in 8-byte units.
const (
	ipv4FlagsOffset    = 6
	ipv4ChecksumOffset = 10
	ipv4FlagDF         = 0x4000
	ipv4FlagMF         = 0x2000
	ipv4OffsetMask     = 0x1fff
)

// clearFragmentDF clears DF on pkt, in place, if it is an IPv4 fragment
// (MF set or a non-zero offset) that the stack sends itself, and updates
// the header checksum incrementally (RFC 1624 eqn. 3).
func clearFragmentDF(pkt *stack.PacketBuffer) {
	if pkt.NetworkPacketInfo.IsForwardedPacket {
		return
	}
	h := pkt.NetworkHeader().Slice()
	if len(h) < 20 || h[0]>>4 != 4 {
		return
	}
	clearDF(h)
}

// clearDF clears DF in the IPv4 header h if it is a fragment's, fixing
// the checksum, and reports whether it did.
func clearDF(h []byte) bool {
	old := binary.BigEndian.Uint16(h[ipv4FlagsOffset:])
	if old&ipv4FlagDF == 0 || old&(ipv4FlagMF|ipv4OffsetMask) == 0 {
		return false
	}
	m := old &^ ipv4FlagDF
	binary.BigEndian.PutUint16(h[ipv4FlagsOffset:], m)
	// HC' = ~(~HC + ~m + m')
	sum := uint32(^binary.BigEndian.Uint16(h[ipv4ChecksumOffset:])) + uint32(^old) + uint32(m)
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	binary.BigEndian.PutUint16(h[ipv4ChecksumOffset:], ^uint16(sum))
	return true
}
