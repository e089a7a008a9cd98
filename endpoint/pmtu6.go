package endpoint

import (
	"encoding/binary"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ipipstack/ipipstack/endpoint/encap"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// Path MTU per inner IPv6 destination.
//
// An IPv6 router does not fragment (RFC 8200 §4.5): it drops a packet too
// big for the next link and answers ICMPv6 Packet Too Big with that link's
// MTU, which the source remembers for the destination (RFC 8201). gVisor
// keeps no such memory for anything but TCP: why that matters, and the
// IPv4 half of the answer, are in the stack package's doc ("UDP and the
// path MTU").
//
// So the endpoint keeps a host's path MTU cache for the stack:
//   - Learn: decap reads each Packet Too Big it delivers. One with a valid
//     checksum that quotes a packet its destination sent (the quoted
//     source is the message's destination) and reports an MTU from IPv6's
//     minimum up to below the tunnel MTU sets the quoted destination's
//     path MTU for pmtuExpiry (RFC 8201 §4: at least 5 minutes, 10
//     recommended). A message only ever lowers an estimate, never raises
//     it. The message still goes on to the stack, whose TCP needs it.
//   - Use: an IPv6 packet the stack originates (not a forwarded one: a
//     router answers Packet Too Big, as gVisor does), other than TCP, that
//     is bigger than its destination's path MTU is cut into fragments that
//     fit, after txcsum.go has completed its UDP checksum. A fragment
//     gVisor made for the tunnel MTU is cut into smaller fragments of the
//     same datagram (same Identification, offsets within the datagram); a
//     whole packet gets a Fragment header with an Identification of the
//     endpoint's own. TCP is left alone: fragmenting its segments would
//     hide from it the Packet Too Big that makes it lower its segment size.
//     Packets with extension headers other than one Fragment header right
//     after the fixed header are sent as they are.
//
// The cache belongs to one endpoint, so it serves a destination whose Packet
// Too Big comes back through the tunnel the packets leave by. A capture
// taken above the endpoint (gVisor's sniffer) sees packets before they are
// cut.

const (
	// pmtuCacheSize is how many destinations the cache holds; when it is
	// full, the oldest estimate is evicted.
	pmtuCacheSize = 64
	// pmtuExpiry is how long an estimate lasts (RFC 8201 §4).
	pmtuExpiry = 10 * time.Minute
	// fragHeadLen is an IPv6 header followed by a Fragment header.
	fragHeadLen = header.IPv6MinimumSize + header.IPv6FragmentExtHdrLength
)

// pmtuEntry is one destination's path MTU.
type pmtuEntry struct {
	dst     [16]byte
	mtu     uint32 // 0: the entry is free
	learned int64  // pmtuCache.clock when learned
}

// pmtuCache maps inner IPv6 destinations to their path MTU. It does not
// allocate.
type pmtuCache struct {
	// n counts the entries in use, expired ones included; while it is 0
	// the transmit path looks nothing up.
	n atomic.Int32
	// now, if set, replaces the monotonic clock (nanoseconds). Set it
	// before the endpoint carries traffic.
	now func() int64

	// mu guards entries.
	mu      sync.Mutex
	entries [pmtuCacheSize]pmtuEntry
}

// clockBase makes time.Since a monotonic clock.
var clockBase = time.Now()

func (c *pmtuCache) clock() int64 {
	if c.now != nil {
		return c.now()
	}
	return int64(time.Since(clockBase))
}

// learn records mtu as dst's path MTU and reports whether that lowered (or
// set) dst's estimate.
func (c *pmtuCache) learn(dst [16]byte, mtu uint32) bool {
	now := c.clock()
	c.mu.Lock()
	defer c.mu.Unlock()
	// slot is a free entry if there is one, the oldest otherwise (an
	// expired entry is older than any live one).
	var slot *pmtuEntry
	for i := range c.entries {
		en := &c.entries[i]
		if en.mtu == 0 {
			if slot == nil || slot.mtu != 0 {
				slot = en
			}
			continue
		}
		if en.dst == dst {
			if now-en.learned < int64(pmtuExpiry) && en.mtu <= mtu {
				return false // RFC 8201 §4: a message never raises an estimate
			}
			en.mtu, en.learned = mtu, now
			return true
		}
		if slot == nil || slot.mtu != 0 && en.learned < slot.learned {
			slot = en
		}
	}
	if slot.mtu == 0 {
		c.n.Add(1)
	}
	*slot = pmtuEntry{dst: dst, mtu: mtu, learned: now}
	return true
}

// lookup returns the path MTU of dst, 16 bytes, or 0 if none is known.
// Expired entries it passes are freed.
func (c *pmtuCache) lookup(dst []byte) uint32 {
	if c.n.Load() == 0 {
		return 0
	}
	key := [16]byte(dst)
	now := c.clock()
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range c.entries {
		en := &c.entries[i]
		if en.mtu == 0 {
			continue
		}
		if now-en.learned >= int64(pmtuExpiry) {
			*en = pmtuEntry{}
			c.n.Add(-1)
			continue
		}
		if en.dst == key {
			return en.mtu
		}
	}
	return 0
}

// DestinationMTU returns the MTU of the path to the inner IPv6 destination
// dst that a Packet Too Big taught the endpoint, or the endpoint's MTU if
// it knows none (and for IPv4).
func (e *Endpoint) DestinationMTU(dst netip.Addr) uint32 {
	if dst.Is6() {
		a := dst.As16()
		if mtu := e.pmtu6.lookup(a[:]); mtu != 0 {
			return mtu
		}
	}
	return e.MTU()
}

// isIPv6ExtensionHeader reports whether an IPv6 next header value is an
// extension header (RFC 8200 §4, RFC 7045 and the IANA registry).
func isIPv6ExtensionHeader(nh uint8) bool {
	switch nh {
	case 0, 43, 44, 50, 51, 60, 135, 139, 140, 253, 254:
		return true
	}
	return false
}

// cutToPathMTU queues pkt cut into fragments that fit the path MTU of its
// destination, if pkt is an IPv6 packet the stack originated, not TCP, with
// no extension header but a Fragment header, and bigger than that path MTU
// (see the top of the file); it reports whether it did. mtu is the tunnel
// MTU: a bigger packet is encode's to drop. The fragments are copies; pkt
// stays the caller's.
func (e *Endpoint) cutToPathMTU(tb *txBatch, pkt *stack.PacketBuffer, remote netip.AddrPort, mtu int) bool {
	if e.pmtu6.n.Load() == 0 {
		return false
	}
	size := pkt.Size()
	if size <= MinIPv6MTU || size > mtu || pkt.NetworkPacketInfo.IsForwardedPacket {
		return false
	}
	var head [fragHeadLen]byte
	n := readHead(head[:], pkt)
	if n < header.IPv6MinimumSize || head[0]>>4 != 6 ||
		int(binary.BigEndian.Uint16(head[4:]))+header.IPv6MinimumSize != size {
		return false
	}
	// What the pieces share: the next header of their Fragment header,
	// the datagram's Identification, the offset of pkt's data in it and
	// whether more of it follows pkt.
	var (
		next = head[6]
		hl   = header.IPv6MinimumSize
		base int
		more bool
		id   uint32
	)
	if next == uint8(header.IPv6FragmentExtHdrIdentifier) {
		if n < fragHeadLen {
			return false
		}
		// RFC 8200 §4.5: next header, reserved, offset (13 bits) with M
		// in bit 0, identification.
		fo := binary.BigEndian.Uint16(head[42:])
		next, base, more, id = head[40], int(fo&^7), fo&1 != 0, binary.BigEndian.Uint32(head[44:])
		hl = fragHeadLen
	}
	if next == uint8(header.TCPProtocolNumber) || isIPv6ExtensionHeader(next) {
		return false
	}
	pmtu := int(e.pmtu6.lookup(head[24:40]))
	if pmtu == 0 || size <= pmtu {
		return false
	}
	// Every piece but the last carries a multiple of 8 bytes.
	room := (pmtu - fragHeadLen) &^ 7
	data := size - hl
	pieces := (data + room - 1) / room
	stride := fragHeadLen + room
	need := (pieces-1)*stride + fragHeadLen + data - (pieces-1)*room
	buf := tb.pieceBuf(need)
	if buf == nil {
		e.flush(tb)
		if buf = tb.pieceBuf(need); buf == nil {
			e.stats.drop(encap.TooBig)
			return true
		}
	}
	if hl == header.IPv6MinimumSize {
		id = e.fragID.Add(1)
	}

	// Copy the data into place first, leaving room for the headers, so
	// that the views are walked once.
	vl, off := pkt.AsViewList()
	skip := off + hl
	w := 0 // data bytes copied
	for v := vl.Front(); v != nil && w < data; v = v.Next() {
		b := v.AsSlice()
		if skip >= len(b) {
			skip -= len(b)
			continue
		}
		b, skip = b[skip:], 0
		for len(b) > 0 && w < data {
			k, in := w/room, w%room
			c := copy(buf[k*stride+fragHeadLen+in:], b[:min(room-in, len(b), data-w)])
			b = b[c:]
			w += c
		}
	}
	if w != data {
		e.stats.drop(encap.NotIP)
		return true
	}
	for k := range pieces {
		plen := min(room, data-k*room)
		p := buf[k*stride : k*stride+fragHeadLen+plen]
		copy(p, head[:header.IPv6MinimumSize])
		binary.BigEndian.PutUint16(p[4:], uint16(header.IPv6FragmentExtHdrLength+plen))
		p[6] = uint8(header.IPv6FragmentExtHdrIdentifier)
		p[40], p[41] = next, 0
		fo := uint16(base + k*room)
		if more || k < pieces-1 {
			fo |= 1
		}
		binary.BigEndian.PutUint16(p[42:], fo)
		binary.BigEndian.PutUint32(p[44:], id)
		e.queuePiece(tb, p, remote)
	}
	e.stats.pmtuCut.Add(1)
	e.stats.pmtuPieces.Add(uint64(pieces))
	return true
}

// readHead copies the first len(b) bytes of pkt, or all of it if it is
// shorter, into b and returns how many it copied.
func readHead(b []byte, pkt *stack.PacketBuffer) int {
	vl, off := pkt.AsViewList()
	n := 0
	for v := vl.Front(); v != nil && n < len(b); v = v.Next() {
		s := v.AsSlice()
		if off >= len(s) {
			off -= len(s)
			continue
		}
		n += copy(b[n:], s[off:])
		off = 0
	}
	return n
}
