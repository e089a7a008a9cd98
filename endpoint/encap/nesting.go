package encap

import (
	"encoding/binary"
	"net/netip"
)

// DefaultMaxNesting is how many tunnel headers addressed back to the tunnel
// an inner packet may carry by default (see NestingDepth). Linux bounds
// nested tunnel transmits similarly (XMIT_RECURSION_LIMIT in
// include/linux/netdevice.h is 8 for every device; ip6tnl's default
// encapsulation limit, DefaultEncapLimit, is 4).
const DefaultMaxNesting = 4

const protoUDP = 17

// maxExtHeaders bounds the IPv6 extension headers walked per level, as
// DecodeIPv6 does: more is hostile.
const maxExtHeaders = 8

// NestingDepth counts the tunnel headers in pkt, an inner IPv4 or IPv6
// packet, that are addressed back to us: pkt itself and each packet it
// carries, level by level, is a tunnel header if it is IP-in-IP (protocol
// 4 or 41) or FOU (UDP to destination port port; 0 disables this), and
// counts if isOurs reports its destination as one of our outer addresses.
// The walk goes on through tunnel headers that do not count and stops at
// the first packet that is no tunnel header, or that is truncated,
// malformed or a non-first fragment (its payload is no header). It stops
// as soon as the count exceeds limit, so the result is at most limit+1.
//
// Only the bytes present are looked at: a nested header split over
// fragments is counted as far as the first fragment shows it. IPv4 header
// checksums are not verified (the outermost was, by ValidateInner; a
// wrong one further in does not make a header harmless). It never panics
// and does not allocate; isOurs must not retain its argument.
func NestingDepth(pkt []byte, isOurs func(netip.Addr) bool, port uint16, limit int) int {
	depth := 0
	// want is the version the enclosing header announced: 4 for protocol
	// 4, 6 for 41, 0 for FOU (the version nibble decides).
	want := uint8(0)
	for len(pkt) > 0 {
		ver := pkt[0] >> 4
		if want != 0 && ver != want {
			return depth
		}
		var (
			dst   netip.Addr
			proto uint8
			body  []byte
			ok    bool
		)
		switch ver {
		case 4:
			dst, proto, body, ok = nestedIPv4(pkt)
		case 6:
			dst, proto, body, ok = nestedIPv6(pkt)
		}
		if !ok {
			return depth
		}
		switch {
		case proto == ProtoIPIP:
			want = 4
		case proto == ProtoIPv6:
			want = 6
		case proto == protoUDP && port != 0 && len(body) >= UDPHeaderLen && binary.BigEndian.Uint16(body[2:]) == port:
			want, body = 0, body[UDPHeaderLen:]
		default:
			return depth
		}
		if isOurs(dst) {
			if depth++; depth > limit {
				return depth
			}
		}
		pkt = body
	}
	return depth
}

// nestedIPv4 returns the destination, protocol and payload of an IPv4
// header, trimmed to its total length where that is within pkt (a first
// fragment or a truncated packet keeps what is there). ok is false if the
// header is malformed or pkt is a non-first fragment.
func nestedIPv4(pkt []byte) (dst netip.Addr, proto uint8, body []byte, ok bool) {
	if len(pkt) < IPv4HeaderLen {
		return dst, 0, nil, false
	}
	ihl := int(pkt[0]&0xf) * 4
	total := int(binary.BigEndian.Uint16(pkt[v4TotalLen:]))
	if ihl < IPv4HeaderLen || ihl > len(pkt) || total < ihl {
		return dst, 0, nil, false
	}
	if binary.BigEndian.Uint16(pkt[v4Flags:])&0x1fff != 0 {
		return dst, 0, nil, false // a fragment offset: no header follows
	}
	if total < len(pkt) {
		pkt = pkt[:total]
	}
	return netip.AddrFrom4([4]byte(pkt[v4Dst : v4Dst+4])), pkt[v4Proto], pkt[ihl:], true
}

// nestedIPv6 returns the destination, the protocol after the extension
// headers and its payload of an IPv6 packet, trimmed like nestedIPv4.
func nestedIPv6(pkt []byte) (dst netip.Addr, proto uint8, body []byte, ok bool) {
	if len(pkt) < IPv6HeaderLen {
		return dst, 0, nil, false
	}
	if total := IPv6HeaderLen + int(binary.BigEndian.Uint16(pkt[v6PayloadLen:])); total < len(pkt) {
		pkt = pkt[:total]
	}
	dst = netip.AddrFrom16([16]byte(pkt[v6Dst : v6Dst+16]))
	next, off := pkt[v6NextHeader], IPv6HeaderLen
	for range maxExtHeaders {
		switch next {
		case protoHopByHop, protoRouting, protoDstOpts:
			if off+8 > len(pkt) {
				return dst, 0, nil, false
			}
			n := (int(pkt[off+1]) + 1) * 8
			if off+n > len(pkt) {
				return dst, 0, nil, false
			}
			next, off = pkt[off], off+n
		case protoFragment:
			if off+8 > len(pkt) {
				return dst, 0, nil, false
			}
			if binary.BigEndian.Uint16(pkt[off+2:])&^7 != 0 {
				return dst, 0, nil, false // a fragment offset: no header follows
			}
			next, off = pkt[off], off+8
		default:
			return dst, next, pkt[off:], true
		}
	}
	return dst, 0, nil, false
}
