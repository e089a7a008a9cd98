package encap

import (
	"encoding/binary"
	"errors"
	"net/netip"
)

// IPv4 header (RFC 791 §3.1), as the Encoder writes it:
//
//	 0                   1                   2                   3
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|Version|  IHL  |Type of Service|          Total Length         |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|         Identification        |Flags|      Fragment Offset    |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|  Time to Live |    Protocol   |         Header Checksum       |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                       Source Address                          |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                    Destination Address                        |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
const (
	v4TOS      = 1
	v4TotalLen = 2
	v4ID       = 4
	v4Flags    = 6
	v4TTL      = 8
	v4Proto    = 9
	v4Checksum = 10
	v4Src      = 12
	v4Dst      = 16
	v4FlagDF   = 0x40
	v4FlagMF   = 0x20
)

// IPv6 header (RFC 8200 §3) offsets.
const (
	v6PayloadLen = 4
	v6NextHeader = 6
	v6HopLimit   = 7
	v6Src        = 8
	v6Dst        = 24
)

// Errors from Encode. The endpoint counts them as drops.
var (
	ErrNotIP    = errors.New("encap: inner packet is neither IPv4 nor IPv6")
	ErrTooLarge = errors.New("encap: outer packet would exceed 65535 bytes")
	ErrFamily   = errors.New("encap: outer addresses must be both IPv4 or both IPv6")
)

// Encoder writes the outer IPv4 or IPv6 header for one tunnel. It is built
// once per peer; per packet only the length, ID, ToS, TTL, DF and checksum
// are filled in. It is safe for concurrent use.
type Encoder struct {
	v6     bool
	pol    Policy
	hdrLen int
	// sum is the one's-complement sum of the IPv4 header fields that never
	// change (version, IHL, addresses), folded in per packet.
	sum  uint64
	tmpl [IPv6HeaderLen + EncapLimitLen]byte
}

// NewEncoder returns an Encoder for outer headers from src to dst.
func NewEncoder(src, dst netip.Addr, p Policy) (*Encoder, error) {
	src, dst = src.Unmap(), dst.Unmap()
	if !src.IsValid() || !dst.IsValid() || src.Is4() != dst.Is4() {
		return nil, ErrFamily
	}
	e := &Encoder{v6: src.Is6(), pol: p}
	t := e.tmpl[:]
	if !e.v6 {
		e.hdrLen = IPv4HeaderLen
		t[0] = 0x45
		s4, d4 := src.As4(), dst.As4()
		copy(t[v4Src:], s4[:])
		copy(t[v4Dst:], d4[:])
		e.sum = sum(0, t[:IPv4HeaderLen])
		return e, nil
	}
	e.hdrLen = IPv6HeaderLen
	t[0] = 0x60
	s16, d16 := src.As16(), dst.As16()
	copy(t[v6Src:], s16[:])
	copy(t[v6Dst:], d16[:])
	if p.UseEncapLimit {
		e.hdrLen += EncapLimitLen
		t[v6NextHeader] = protoDstOpts
		o := t[IPv6HeaderLen:]
		// Destination options header: next header (per packet), length
		// 0 (8 bytes), the encapsulation limit option, then PadN with one
		// byte, exactly as Linux ip6_tnl (init_tel_txopt) writes it.
		o[1] = 0
		o[2], o[3], o[4] = optEncapLimit, 1, p.EncapLimit
		o[5], o[6], o[7] = optPadN, 1, 0
	}
	return e, nil
}

// HeaderLen is the number of bytes Encode writes.
func (e *Encoder) HeaderLen() int { return e.hdrLen }

// IsIPv6 reports whether the outer header is IPv6.
func (e *Encoder) IsIPv6() bool { return e.v6 }

// Encode writes the outer header for inner into hdr, which must hold
// HeaderLen bytes, and returns HeaderLen. id is the IPv4 identification
// (ignored for IPv6). It does not allocate.
func (e *Encoder) Encode(hdr []byte, inner []byte, id uint16) (int, error) {
	return e.EncodeHead(hdr, inner, len(inner), id)
}

// EncodeHead is Encode for an inner packet of innerLen bytes of which only
// the first bytes, head, are at hand: head must hold the whole inner IP
// header (20 bytes for IPv4, 40 for IPv6).
func (e *Encoder) EncodeHead(hdr []byte, head []byte, innerLen int, id uint16) (int, error) {
	in, ok := PeekInner(head)
	if !ok {
		return 0, ErrNotIP
	}
	n := e.hdrLen
	if n-boolInt(e.v6)*IPv6HeaderLen+innerLen > 0xffff {
		return 0, ErrTooLarge
	}
	h := hdr[:n]
	copy(h, e.tmpl[:n])
	tos := e.pol.outerTOS(in.TOS)
	ttl := e.pol.outerTTL(in.TTL)
	if !e.v6 {
		binary.BigEndian.PutUint16(h[v4TotalLen:], uint16(n+innerLen))
		binary.BigEndian.PutUint16(h[v4ID:], id)
		h[v4TOS] = tos
		h[v4TTL] = ttl
		h[v4Proto] = in.Proto
		switch e.pol.DF {
		case DFSet:
			h[v4Flags] = v4FlagDF
		case DFInherit:
			if in.DF || in.Proto == ProtoIPv6 {
				h[v4Flags] = v4FlagDF
			}
		}
		s := e.sum + uint64(n+innerLen) + uint64(id) + uint64(h[v4Flags])<<8 +
			uint64(tos) + uint64(ttl)<<8 + uint64(in.Proto)
		binary.BigEndian.PutUint16(h[v4Checksum:], ^fold(s))
		return n, nil
	}
	h[0] = 0x60 | tos>>4
	h[1] = tos << 4
	binary.BigEndian.PutUint16(h[v6PayloadLen:], uint16(n-IPv6HeaderLen+innerLen))
	h[v6HopLimit] = ttl
	if n > IPv6HeaderLen {
		h[IPv6HeaderLen] = in.Proto
	} else {
		h[v6NextHeader] = in.Proto
	}
	return n, nil
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// ClearDF clears the Don't Fragment bit of the IPv4 header h, which an
// Encoder wrote, updating its checksum (RFC 1624), so that the packet may
// be fragmented on the way. An IPv6 header is left as it is.
func ClearDF(h []byte) {
	if len(h) < IPv4HeaderLen || h[0]>>4 != 4 || h[v4Flags]&v4FlagDF == 0 {
		return
	}
	old := binary.BigEndian.Uint16(h[v4Flags:])
	h[v4Flags] &^= v4FlagDF
	updated := binary.BigEndian.Uint16(h[v4Flags:])
	// HC' = ~(~HC + ~m + m')
	s := uint64(^binary.BigEndian.Uint16(h[v4Checksum:])) + uint64(^old) + uint64(updated)
	binary.BigEndian.PutUint16(h[v4Checksum:], ^fold(s))
}

// SetECN sets the ECN field of an IPv4 or IPv6 packet in place; for IPv4 it
// updates the header checksum incrementally (RFC 1624). pkt must have been
// validated by ValidateInner.
func SetECN(pkt []byte, ecn uint8) {
	switch pkt[0] >> 4 {
	case 4:
		old := binary.BigEndian.Uint16(pkt[0:])
		pkt[v4TOS] = pkt[v4TOS]&^ecnMask | ecn&ecnMask
		updated := binary.BigEndian.Uint16(pkt[0:])
		c := binary.BigEndian.Uint16(pkt[v4Checksum:])
		// HC' = ~(~HC + ~m + m')
		s := uint64(^c) + uint64(^old) + uint64(updated)
		binary.BigEndian.PutUint16(pkt[v4Checksum:], ^fold(s))
	case 6:
		pkt[1] = pkt[1]&^(ecnMask<<4) | (ecn&ecnMask)<<4
	}
}
