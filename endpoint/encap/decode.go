package encap

import (
	"encoding/binary"
	"net/netip"
)

// Reason says why a packet was dropped. Every drop in the endpoint is
// counted under one Reason.
type Reason uint8

// Drop reasons. New reasons go before numReasons; their String is the name
// used in logs, status JSON and metrics labels.
const (
	OK Reason = iota
	// MalformedOuter: the outer header is truncated, has a bad version,
	// IHL or length, or its extension headers cannot be walked.
	MalformedOuter
	// BadOuterChecksum: the outer IPv4 header checksum is wrong.
	BadOuterChecksum
	// OuterFragment: the outer packet is a fragment (the kernel reassembles
	// before a raw socket sees it, so this is forged).
	OuterFragment
	// UnknownProtocol: the outer protocol is neither 4 nor 41.
	UnknownProtocol
	// WrongPeer: the outer source is not the configured peer.
	WrongPeer
	// MalformedInner: the inner packet is truncated or its header is bad.
	MalformedInner
	// VersionMismatch: protocol 4 carried IPv6 or protocol 41 IPv4.
	VersionMismatch
	// ECNCongestion: outer CE over a Not-ECT inner packet (RFC 6040 §4.2).
	ECNCongestion
	// SpoofedSource: the inner source is outside the prefixes accepted
	// from this peer.
	SpoofedSource
	// Martian: the inner source or destination can never be valid
	// (loopback, multicast source, unspecified, ...).
	Martian
	// Recursion: the inner packet is addressed to the tunnel's own outer
	// address, or nests tunnel headers deeper than allowed.
	Recursion
	// TooBig: an outbound packet did not fit the tunnel MTU.
	TooBig
	// NotIP: an outbound packet was not IPv4 or IPv6.
	NotIP
	// SendError: the transport failed to send.
	SendError
	// Closed: the endpoint was closed.
	Closed
	// BadChecksum: the inner TCP, UDP or ICMP checksum is wrong (the
	// endpoint verifies every inner packet that nothing else verified;
	// see the endpoint package doc).
	BadChecksum
	// Filtered: the tunnel's filter (stack.Filter) dropped the inner
	// packet. The endpoint never counts it itself: stack.Stack.Stats
	// adds the filter's count.
	Filtered
	numReasons
)

// NumReasons is the number of Reasons, for arrays of counters.
const NumReasons = int(numReasons)

var reasonNames = [...]string{
	OK:               "ok",
	MalformedOuter:   "malformed_outer",
	BadOuterChecksum: "bad_outer_checksum",
	OuterFragment:    "outer_fragment",
	UnknownProtocol:  "unknown_protocol",
	WrongPeer:        "wrong_peer",
	MalformedInner:   "malformed_inner",
	VersionMismatch:  "version_mismatch",
	ECNCongestion:    "ecn_ce_not_ect",
	SpoofedSource:    "spoofed_source",
	Martian:          "martian",
	Recursion:        "recursion",
	TooBig:           "too_big",
	NotIP:            "not_ip",
	SendError:        "send_error",
	Closed:           "closed",
	BadChecksum:      "bad_checksum",
	Filtered:         "filtered",
}

func (r Reason) String() string {
	if int(r) < len(reasonNames) {
		return reasonNames[r]
	}
	return "unknown"
}

// Outer holds the fields of a decoded outer header.
type Outer struct {
	Src, Dst netip.Addr
	// Proto is the protocol / next header that carries the inner packet.
	Proto uint8
	// TOS is the IPv4 ToS or IPv6 traffic class.
	TOS uint8
	// TTL is the IPv4 TTL or IPv6 hop limit.
	TTL uint8
	// ID is the IPv4 identification.
	ID uint16
	// DF is the IPv4 Don't Fragment bit.
	DF bool
	// EncapLimit is the RFC 2473 encapsulation limit, or -1 if absent.
	EncapLimit int
}

// DecodeIPv4 parses an outer IPv4 packet as a raw IPv4 socket receives it
// and returns the inner packet (a subslice of pkt, trimmed to the total
// length). The header checksum is verified.
func DecodeIPv4(pkt []byte) (o Outer, inner []byte, r Reason) {
	o.EncapLimit = -1
	if len(pkt) < IPv4HeaderLen || pkt[0]>>4 != 4 {
		return o, nil, MalformedOuter
	}
	ihl := int(pkt[0]&0xf) * 4
	total := int(binary.BigEndian.Uint16(pkt[v4TotalLen:]))
	if ihl < IPv4HeaderLen || ihl > len(pkt) || total < ihl || total > len(pkt) {
		return o, nil, MalformedOuter
	}
	if fold(sum(0, pkt[:ihl])) != 0xffff {
		return o, nil, BadOuterChecksum
	}
	flags := binary.BigEndian.Uint16(pkt[v4Flags:])
	if flags&0x3fff != 0 { // MF or a fragment offset
		return o, nil, OuterFragment
	}
	o.Src = netip.AddrFrom4([4]byte(pkt[v4Src : v4Src+4]))
	o.Dst = netip.AddrFrom4([4]byte(pkt[v4Dst : v4Dst+4]))
	o.Proto = pkt[v4Proto]
	o.TOS = pkt[v4TOS]
	o.TTL = pkt[v4TTL]
	o.ID = binary.BigEndian.Uint16(pkt[v4ID:])
	o.DF = pkt[v4Flags]&v4FlagDF != 0
	if o.Proto != ProtoIPIP && o.Proto != ProtoIPv6 {
		return o, nil, UnknownProtocol
	}
	return o, pkt[ihl:total], OK
}

// DecodeIPv6 parses an outer IPv6 packet with its extension headers
// (hop-by-hop, routing and destination options, such as the RFC 2473
// encapsulation limit that Linux ip6tnl adds) and returns the inner packet.
func DecodeIPv6(pkt []byte) (o Outer, inner []byte, r Reason) {
	o.EncapLimit = -1
	if len(pkt) < IPv6HeaderLen || pkt[0]>>4 != 6 {
		return o, nil, MalformedOuter
	}
	plen := int(binary.BigEndian.Uint16(pkt[v6PayloadLen:]))
	if plen == 0 || IPv6HeaderLen+plen > len(pkt) {
		return o, nil, MalformedOuter
	}
	pkt = pkt[:IPv6HeaderLen+plen]
	o.Src = netip.AddrFrom16([16]byte(pkt[v6Src : v6Src+16]))
	o.Dst = netip.AddrFrom16([16]byte(pkt[v6Dst : v6Dst+16]))
	o.TOS = pkt[0]<<4 | pkt[1]>>4
	o.TTL = pkt[v6HopLimit]
	next := pkt[v6NextHeader]
	off := IPv6HeaderLen
	// Walk at most a few extension headers; more is hostile.
	for i := 0; i < 8; i++ {
		switch next {
		case ProtoIPIP, ProtoIPv6:
			o.Proto = next
			return o, pkt[off:], OK
		case protoHopByHop, protoDstOpts, protoRouting:
			if off+8 > len(pkt) {
				return o, nil, MalformedOuter
			}
			n := (int(pkt[off+1]) + 1) * 8
			if off+n > len(pkt) {
				return o, nil, MalformedOuter
			}
			if next == protoDstOpts {
				lim, ok := parseOptions(pkt[off+2 : off+n])
				if !ok {
					return o, nil, MalformedOuter
				}
				if lim >= 0 {
					o.EncapLimit = lim
				}
			}
			next = pkt[off]
			off += n
		case protoFragment:
			return o, nil, OuterFragment
		default:
			o.Proto = next
			return o, nil, UnknownProtocol
		}
	}
	return o, nil, MalformedOuter
}

// parseOptions walks the TLVs of an options header and returns the
// encapsulation limit if present (-1 if not). ok is false if a TLV runs past
// the end.
func parseOptions(b []byte) (limit int, ok bool) {
	limit = -1
	for len(b) > 0 {
		if b[0] == optPad1 {
			b = b[1:]
			continue
		}
		if len(b) < 2 || 2+int(b[1]) > len(b) {
			return -1, false
		}
		if b[0] == optEncapLimit {
			if b[1] != 1 {
				return -1, false
			}
			limit = int(b[2])
		}
		b = b[2+int(b[1]):]
	}
	return limit, true
}

// Packet holds what ValidateInner learns about an inner packet.
type Packet struct {
	// Proto is ProtoIPIP for IPv4 and ProtoIPv6 for IPv6.
	Proto    uint8
	Src, Dst netip.Addr
	// Transport is the IPv4 protocol or the IPv6 next header.
	Transport uint8
	TOS       uint8
}

// ValidateInner checks an inner packet's IP header and returns it trimmed to
// the length its header claims. proto is the outer protocol (ProtoIPIP or
// ProtoIPv6), or 0 when the framing carries no protocol (UDP/FOU) and the
// version nibble decides. IPv4 header checksums are verified.
func ValidateInner(pkt []byte, proto uint8) (p Packet, trimmed []byte, r Reason) {
	if len(pkt) < 1 {
		return p, nil, MalformedInner
	}
	ver := pkt[0] >> 4
	switch {
	case ver == 4 && proto != ProtoIPv6:
		if len(pkt) < IPv4HeaderLen {
			return p, nil, MalformedInner
		}
		ihl := int(pkt[0]&0xf) * 4
		total := int(binary.BigEndian.Uint16(pkt[v4TotalLen:]))
		if ihl < IPv4HeaderLen || ihl > len(pkt) || total < ihl || total > len(pkt) {
			return p, nil, MalformedInner
		}
		if fold(sum(0, pkt[:ihl])) != 0xffff {
			return p, nil, MalformedInner
		}
		p.Proto = ProtoIPIP
		p.Src = netip.AddrFrom4([4]byte(pkt[v4Src : v4Src+4]))
		p.Dst = netip.AddrFrom4([4]byte(pkt[v4Dst : v4Dst+4]))
		p.Transport = pkt[v4Proto]
		p.TOS = pkt[v4TOS]
		return p, pkt[:total], OK
	case ver == 6 && proto != ProtoIPIP:
		if len(pkt) < IPv6HeaderLen {
			return p, nil, MalformedInner
		}
		plen := int(binary.BigEndian.Uint16(pkt[v6PayloadLen:]))
		if IPv6HeaderLen+plen > len(pkt) {
			return p, nil, MalformedInner
		}
		p.Proto = ProtoIPv6
		p.Src = netip.AddrFrom16([16]byte(pkt[v6Src : v6Src+16]))
		p.Dst = netip.AddrFrom16([16]byte(pkt[v6Dst : v6Dst+16]))
		p.Transport = pkt[v6NextHeader]
		p.TOS = pkt[0]<<4 | pkt[1]>>4
		return p, pkt[:IPv6HeaderLen+plen], OK
	case ver == 4 || ver == 6:
		return p, nil, VersionMismatch
	}
	return p, nil, MalformedInner
}

// IsMartianSource reports whether a can never be the source of a packet
// arriving from a tunnel peer (RFC 1812 §5.3.7, RFC 4213 §3.6).
func IsMartianSource(a netip.Addr) bool {
	if !a.IsValid() || a.IsUnspecified() || a.IsLoopback() || a.IsMulticast() {
		return true
	}
	if a.Is4() {
		b := a.As4()
		return b[0] == 0 || b[0] >= 240 // "this network" and class E/broadcast
	}
	// IPv4-mapped and IPv4-compatible IPv6 sources (RFC 4213 §3.6).
	b := a.As16()
	return a.Is4In6() || [12]byte(b[:12]) == [12]byte{}
}

// IsMartianDestination reports whether a can never be a valid destination
// of a tunnelled unicast packet.
func IsMartianDestination(a netip.Addr) bool {
	return !a.IsValid() || a.IsUnspecified() || a.IsLoopback()
}
