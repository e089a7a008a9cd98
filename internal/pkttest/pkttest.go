// Package pkttest is a slow, independent reference for the Internet
// checksum (RFC 1071), for tests to check packets against without trusting
// the gVisor code under test.
package pkttest

import (
	"encoding/binary"
	"net/netip"
)

// Checksum is the Internet checksum of b, with initial as the sum of what
// precedes it (a pseudo-header, say): the one's complement of the one's
// complement sum of b's 16-bit words, an odd last byte padded with zero.
func Checksum(b []byte, initial uint32) uint16 {
	s := initial
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return ^uint16(s)
}

// PseudoSum is the (unfolded) sum of the TCP/UDP pseudo-header of a
// segment of length bytes from src to dst (RFC 768, RFC 793, RFC 8200
// section 8.1).
func PseudoSum(src, dst netip.Addr, proto uint8, length int) uint32 {
	var s uint32
	for _, a := range []netip.Addr{src, dst} {
		b := a.AsSlice()
		for i := 0; i < len(b); i += 2 {
			s += uint32(binary.BigEndian.Uint16(b[i:]))
		}
	}
	return s + uint32(proto) + uint32(length)
}

// Valid reports whether seg, a whole TCP or UDP segment, carries a correct
// checksum: summed with its pseudo-header it sums to 0xffff.
func Valid(src, dst netip.Addr, proto uint8, seg []byte) bool {
	return Checksum(seg, PseudoSum(src, dst, proto, len(seg))) == 0
}
