// Package encap builds, parses and validates the outer headers of IP-in-IP
// tunnels (RFC 2003 IPv4-in-IPv4, RFC 4213 IPv6-in-IPv4, RFC 2473 IP-in-IPv6)
// and applies the ECN rules of RFC 6040.
//
// Everything here is a pure function over byte slices: no sockets, no gVisor,
// no allocation. Decoding untrusted bytes never panics; it returns a Reason
// that says why the packet must be dropped.
//
// The defaults follow Linux `ip link add type ipip|sit`: outer DF set, outer
// TTL inherited from the inner packet, outer ToS 0 carrying only the inner
// ECN bits. Linux ip6tnl's encapsulation limit option is available
// (Policy.UseEncapLimit) and always parsed on receive.
package encap

import (
	"encoding/binary"
)

// Sizes of the headers this package writes.
const (
	IPv4HeaderLen = 20
	IPv6HeaderLen = 40
	UDPHeaderLen  = 8
	// EncapLimitLen is the destination options header that carries the RFC
	// 2473 tunnel encapsulation limit option, padded to 8 bytes as Linux
	// ip6tnl writes it.
	EncapLimitLen = 8
)

// IP protocol numbers of the inner packet, as carried in the outer header's
// protocol / next header field.
const (
	ProtoIPIP     uint8 = 4  // IPv4 inside (RFC 2003)
	ProtoIPv6     uint8 = 41 // IPv6 inside (RFC 4213, RFC 2473)
	protoDstOpts        = 60 // IPv6 destination options
	protoHopByHop       = 0
	protoFragment       = 44
	protoRouting        = 43
)

// IPv6 destination option types (RFC 2473 §4.1.1, RFC 8200 §4.2).
const (
	optPad1       = 0
	optPadN       = 1
	optEncapLimit = 4
)

// ECN codepoints: the low two bits of the IPv4 ToS / IPv6 traffic class.
const (
	ECNNotECT uint8 = 0
	ECNECT1   uint8 = 1
	ECNECT0   uint8 = 2
	ECNCE     uint8 = 3
	ecnMask   uint8 = 3
)

// DF says how the outer IPv4 header's Don't Fragment bit is set.
type DF int

const (
	// DFSet sets DF on every outer packet (Linux pmtudisc, the default).
	DFSet DF = iota
	// DFInherit copies DF from an inner IPv4 packet; inner IPv6 packets get
	// DF, since IPv6 is never fragmented on the way.
	DFInherit
	// DFClear never sets DF (Linux nopmtudisc).
	DFClear
)

func (d DF) String() string {
	switch d {
	case DFSet:
		return "set"
	case DFInherit:
		return "inherit"
	case DFClear:
		return "clear"
	}
	return "DF(?)"
}

// Policy is how outer header fields are derived from the inner packet.
// The zero value is the Linux default: TTL inherited, ToS 0 plus the inner
// ECN bits, DF set.
type Policy struct {
	// TTL is the outer TTL / hop limit; 0 inherits it from the inner packet.
	TTL uint8
	// TOS is the outer ToS / traffic class; its ECN bits are ignored and
	// replaced by the inner packet's (RFC 6040 normal mode).
	TOS uint8
	// TOSInherit copies the inner ToS / traffic class instead of TOS.
	TOSInherit bool
	// DF is the IPv4 outer DF policy.
	DF DF
	// UseEncapLimit adds, to IPv6 outer headers, a destination options
	// header with the RFC 2473 tunnel encapsulation limit EncapLimit, as
	// Linux ip6tnl does by default (with a limit of 4). Off, the outer
	// IPv6 header is followed directly by the inner packet.
	UseEncapLimit bool
	EncapLimit    uint8
}

// DefaultEncapLimit is Linux ip6tnl's IPV6_DEFAULT_TNL_ENCAP_LIMIT.
const DefaultEncapLimit = 4

// EncapECN returns the ECN field of the outer header for an inner packet with
// ECN field inner. RFC 6040 §4.1 normal mode copies it; like Linux
// (INET_ECN_encapsulate) a CE inner mark is sent as ECT(0), so the tunnel
// never claims congestion it did not see itself.
func EncapECN(inner uint8) uint8 {
	inner &= ecnMask
	if inner == ECNCE {
		return ECNECT0
	}
	return inner
}

// DecapECN combines the outer and inner ECN fields on decapsulation (RFC 6040
// §4.2, Figure 4). It returns the new inner ECN field, or drop when the outer
// header says CE but the inner transport does not understand ECN.
func DecapECN(outer, inner uint8) (ecn uint8, drop bool) {
	outer &= ecnMask
	inner &= ecnMask
	switch inner {
	case ECNNotECT:
		if outer == ECNCE {
			return 0, true
		}
		return ECNNotECT, false
	case ECNCE:
		return ECNCE, false
	}
	switch outer {
	case ECNCE:
		return ECNCE, false
	case ECNECT1:
		return ECNECT1, false
	}
	return inner, false
}

// outerTOS is the outer ToS / traffic class byte for an inner one.
func (p *Policy) outerTOS(innerTOS uint8) uint8 {
	base := p.TOS
	if p.TOSInherit {
		base = innerTOS
	}
	return base&^ecnMask | EncapECN(innerTOS)
}

// outerTTL is the outer TTL for an inner one.
func (p *Policy) outerTTL(innerTTL uint8) uint8 {
	if p.TTL != 0 {
		return p.TTL
	}
	return innerTTL
}

// Inner describes an inner packet's fields that the outer header copies.
type Inner struct {
	// Proto is ProtoIPIP for IPv4, ProtoIPv6 for IPv6.
	Proto uint8
	// TOS is the IPv4 ToS or the IPv6 traffic class.
	TOS uint8
	// TTL is the IPv4 TTL or the IPv6 hop limit.
	TTL uint8
	// DF is the inner IPv4 DF bit (always false for IPv6).
	DF bool
}

// PeekInner reads the fields of an inner packet that outer headers copy. ok
// is false if pkt is not a plausible IPv4 or IPv6 header.
func PeekInner(pkt []byte) (in Inner, ok bool) {
	if len(pkt) < 1 {
		return in, false
	}
	switch pkt[0] >> 4 {
	case 4:
		if len(pkt) < IPv4HeaderLen {
			return in, false
		}
		return Inner{Proto: ProtoIPIP, TOS: pkt[1], TTL: pkt[8], DF: pkt[6]&0x40 != 0}, true
	case 6:
		if len(pkt) < IPv6HeaderLen {
			return in, false
		}
		tc := pkt[0]<<4 | pkt[1]>>4
		return Inner{Proto: ProtoIPv6, TOS: tc, TTL: pkt[7]}, true
	}
	return in, false
}

// Checksum returns the Internet checksum (RFC 1071) of b, folded and
// complemented.
func Checksum(b []byte) uint16 {
	return ^fold(sum(0, b))
}

func sum(s uint64, b []byte) uint64 {
	for len(b) >= 8 {
		v := binary.BigEndian.Uint64(b)
		s += v >> 32
		s += v & 0xffffffff
		b = b[8:]
	}
	for len(b) >= 2 {
		s += uint64(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		s += uint64(b[0]) << 8
	}
	return s
}

func fold(s uint64) uint16 {
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return uint16(s)
}
