package endpoint

import (
	"errors"
	"net/netip"
)

// Framing says what the bytes a Transport moves look like, so that the
// endpoint knows which outer header it writes and which it parses.
type Framing int

const (
	// FramingUDP: a datagram's payload is exactly one inner packet (Linux
	// FOU direct encapsulation). The kernel writes the outer IP and UDP
	// headers; the outer ToS and TTL travel as control messages.
	FramingUDP Framing = iota
	// FramingRawIPv4: datagrams carry the outer IPv4 header both ways (a
	// raw socket with IP_HDRINCL).
	FramingRawIPv4
	// FramingRawIPv6: written datagrams carry the outer IPv6 header
	// (IPV6_HDRINCL); received ones start at the inner packet, because the
	// kernel strips the IPv6 header and its extension headers (RFC 3542 §3).
	FramingRawIPv6
)

func (f Framing) String() string {
	switch f {
	case FramingUDP:
		return "udp"
	case FramingRawIPv4:
		return "raw-ipv4"
	case FramingRawIPv6:
		return "raw-ipv6"
	}
	return "framing(?)"
}

// Message is one outer datagram in a batch.
type Message struct {
	// Buffers holds the datagram. On write, its slices are sent in order
	// (the outer header, then the inner packet's pieces) and at most
	// MaxSegments of them are used. On read, Buffers[0] is the buffer to
	// fill, and N says how much was filled.
	Buffers [][]byte
	// N is the number of bytes received.
	N int
	// Addr is the peer: the destination on write, the source on read.
	// Raw transports report port 0.
	Addr netip.AddrPort
	// TOS is the outer ToS / traffic class. On write (FramingUDP only) it
	// is sent as a control message; on read it is valid if HasTOS.
	TOS uint8
	// TTL is the outer TTL / hop limit to send with (FramingUDP only);
	// 0 leaves the socket default.
	TTL uint8
	// HasTOS reports, on read, that TOS was received.
	HasTOS bool
	// Proto is, on read from a FramingRawIPv6 transport, the outer next
	// header (4 or 41) that the socket receives.
	Proto uint8
	// Verified reports, on read, that the kernel checked a checksum that
	// covers the whole datagram (a non-zero UDP checksum), so that the
	// inner bytes are as the peer sent them.
	Verified bool
	// GSOSize, on write to a transport with Offloads.GSO, asks the kernel
	// to cut the datagram into datagrams of this size (the last may be
	// shorter); on read from one with Offloads.GRO, it says the datagram
	// holds datagrams of this size back to back. 0: one datagram.
	GSOSize int
}

// MaxSegments is the most slices of a Message that a transport sends.
const MaxSegments = 8

// Transport moves outer datagrams to and from the peer, in batches. Reads
// come from one or more Receivers, each of which the endpoint reads from a
// goroutine of its own; WriteBatch may be called concurrently.
type Transport interface {
	// Framing says how datagrams relate to the outer header.
	Framing() Framing
	// Receivers returns the sockets to read from. It does not change over
	// the Transport's lifetime.
	Receivers() []Receiver
	// WriteBatch sends msgs and returns how many were sent. An error
	// stops the batch at the first message that failed.
	WriteBatch(msgs []Message) (int, error)
	// LocalAddr is the local outer address (port 0 for raw transports).
	LocalAddr() netip.AddrPort
	// Close closes the sockets; blocked ReadBatch calls return ErrClosed.
	Close() error
}

// Receiver reads batches of outer datagrams.
type Receiver interface {
	// ReadBatch blocks until at least one datagram arrives and fills msgs
	// from the front, returning how many it filled. After Close it
	// returns ErrClosed.
	ReadBatch(msgs []Message) (int, error)
}

// ErrClosed is returned by a Transport that has been closed.
var ErrClosed = errors.New("endpoint: transport closed")
