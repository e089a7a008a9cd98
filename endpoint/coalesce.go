package endpoint

import (
	"encoding/binary"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/stack/gro"
)

// Receive coalescing: a UDP GRO read holds many datagrams of one flow back
// to back, and on a TCP bulk transfer they are consecutive segments of one
// connection. Instead of copying each into a packet of its own and letting
// gVisor GRO merge them again, the endpoint hands the stack one TCP segment
// whose payload views point straight into the receive buffer: the inner
// bytes are never copied (only the 40 to 100 bytes of headers are), and the
// stack sees one packet instead of forty.
//
// Coalescing is as strict as Linux GRO: segments merge only when every
// header field but the lengths, IPv4 ID and checksums is equal, sequence
// numbers are contiguous, the flags are a plain ACK (PSH only on the last),
// and every segment but the last is full. Only verified segments merge
// (rxcsum.go): the merged packet keeps its first segment's TCP checksum,
// which the stack, trusting the endpoint, never checks. A router (GRO off)
// never coalesces.
//
// Pitfall: gVisor's PullUp copies a whole chunk when the chunk is shared.
// Each merged packet's headers therefore live in a small chunk of their
// own, and only payload, which the stack never pulls up, points into the
// shared receive buffer.

// maxMerge bounds the segments of one merged packet (a UDP GRO read holds
// at most 64 datagrams).
const maxMerge = 64

// merger collects the segments of one coalesced packet.
type merger struct {
	n       int    // segments collected
	hdr     []byte // the first segment's IP and TCP headers
	l3      int    // IP header length
	v6      bool
	size    int    // payload of the first segment: every segment but the last has it
	seq     uint32 // sequence number the next segment must have
	payload int    // payload bytes collected
	psh     bool   // the last segment carries PSH: nothing may follow
	start   [maxMerge]int32
	length  [maxMerge]int32
}

// tcpACK and tcpACKPSH are the only flags a coalesced segment may carry.
const (
	tcpACK    = 0x10
	tcpACKPSH = tcpACK | tcpFlagPSH
)

// parseSegment returns the IP and TCP header lengths of p when it is a
// TCP segment with payload that coalescing may take: IPv4 without options
// or fragmentation, or IPv6 without extension headers, and plain ACK or
// ACK|PSH flags. p has passed encap.ValidateInner.
func parseSegment(p []byte) (l3, l4 int, ok bool) {
	switch p[0] >> 4 {
	case 4:
		if len(p) < header.IPv4MinimumSize || p[0]&0xf != 5 || p[9] != uint8(header.TCPProtocolNumber) {
			return 0, 0, false
		}
		// MF or a fragment offset: a fragment.
		if binary.BigEndian.Uint16(p[6:])&0x3fff != 0 {
			return 0, 0, false
		}
		l3 = header.IPv4MinimumSize
	case 6:
		if len(p) < header.IPv6MinimumSize || p[6] != uint8(header.TCPProtocolNumber) {
			return 0, 0, false
		}
		l3 = header.IPv6MinimumSize
	default:
		return 0, 0, false
	}
	if len(p) < l3+header.TCPMinimumSize {
		return 0, 0, false
	}
	l4 = int(p[l3+12]>>4) * 4
	if l4 < header.TCPMinimumSize || len(p) <= l3+l4 {
		return 0, 0, false // no payload: nothing to merge
	}
	if f := p[l3+13]; f != tcpACK && f != tcpACKPSH {
		return 0, 0, false
	}
	return l3, l4, true
}

// sameFlow reports whether segment p's headers match the merger's first
// segment in every field that must be equal.
func (g *merger) sameFlow(p []byte, l3, l4 int) bool {
	h := g.hdr
	if l3 != g.l3 || l3+l4 != len(h) || p[0]>>4 != h[0]>>4 {
		return false
	}
	if g.v6 {
		// Version, traffic class, flow label; next header, hop limit,
		// addresses.
		if string(p[0:4]) != string(h[0:4]) || string(p[6:40]) != string(h[6:40]) {
			return false
		}
	} else {
		// Version, IHL, ToS; flags and fragment offset, TTL, protocol;
		// addresses.
		if string(p[0:2]) != string(h[0:2]) || string(p[6:10]) != string(h[6:10]) || string(p[12:20]) != string(h[12:20]) {
			return false
		}
	}
	t, ht := p[l3:l3+l4], h[l3:]
	// Ports; acknowledgment number, data offset; window, urgent pointer
	// and options. Flags were checked by parseSegment.
	return string(t[0:4]) == string(ht[0:4]) && string(t[8:13]) == string(ht[8:13]) &&
		string(t[14:16]) == string(ht[14:16]) && string(t[18:]) == string(ht[18:])
}

// add tries to append segment p, which starts at offset off of the receive
// buffer, to the merger. It reports false when p cannot join; the caller
// then flushes the merger and starts it again with p.
func (g *merger) add(p []byte, off int) bool {
	l3, l4, ok := parseSegment(p)
	if !ok {
		return false
	}
	seq := binary.BigEndian.Uint32(p[l3+4:])
	plen := len(p) - l3 - l4
	if g.n == 0 {
		g.hdr, g.l3, g.v6 = p[:l3+l4], l3, p[0]>>4 == 6
		g.size, g.payload = plen, 0
	} else {
		if g.n == maxMerge || g.psh || plen > g.size || seq != g.seq ||
			l3+l4+g.payload+plen > 0xffff || !g.sameFlow(p, l3, l4) {
			return false
		}
		if g.length[g.n-1] != int32(g.size) {
			return false // a short segment ended the run
		}
	}
	g.start[g.n], g.length[g.n] = int32(off+l3+l4), int32(plen)
	g.n++
	g.seq = seq + uint32(plen)
	g.payload += plen
	g.psh = p[l3+13]&tcpFlagPSH != 0
	return true
}

// packet builds the merged packet: its headers in a chunk of their own,
// then the payload of every segment as a view of buf. The caller has
// checked that at least two segments were merged.
func (g *merger) packet(buf *buffer.View) *stack.PacketBuffer {
	hv := buffer.NewViewWithData(g.hdr)
	h := hv.AsSlice()
	if g.v6 {
		binary.BigEndian.PutUint16(h[4:], uint16(len(h)-g.l3+g.payload))
	} else {
		ip := header.IPv4(h)
		ip.SetTotalLength(uint16(len(h) + g.payload))
		ip.SetChecksum(0)
		ip.SetChecksum(^ip.CalculateChecksum())
	}
	if g.psh {
		h[g.l3+13] |= tcpFlagPSH
	}
	// The TCP checksum stays the first segment's: every segment was
	// verified, and the stack does not check it again (rxcsum.go).
	b := buffer.MakeWithView(hv)
	for i := 0; i < g.n; i++ {
		v := buf.Clone()
		v.TrimFront(int(g.start[i]))
		v.CapLength(int(g.length[i]))
		b.Append(v)
	}
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: b})
	pkt.NetworkProtocolNumber = header.IPv4ProtocolNumber
	if g.v6 {
		pkt.NetworkProtocolNumber = header.IPv6ProtocolNumber
	}
	pkt.RXChecksumValidated = true
	return pkt
}

// deliverCoalesced splits a datagram that UDP GRO coalesced from several
// into its original datagrams of m.GSOSize bytes (the last may be shorter),
// decapsulates each, and delivers them, merging runs of consecutive TCP
// segments into one packet whose payload points into buf, the view that
// m.Buffers[0] is the memory of. Only verified segments merge; unverified
// ones go to rx.pending. seg is scratch for the pieces. It reports whether
// a delivered packet still points into buf.
func (e *Endpoint) deliverCoalesced(rx *rxBatch, m *Message, seg *Message, buf *buffer.View) (shared bool) {
	data := m.Buffers[0][:m.N]
	bufs := seg.Buffers[:1] // seg's own slot, not m's
	*seg = *m
	seg.Buffers, seg.GSOSize = bufs, 0
	coalesce := buf != nil && e.gro && e.framing == FramingUDP
	var g merger
	flush := func() {
		switch {
		case g.n == 1:
			e.deliverCopy(rx, g.hdr[:g.length[0]+int32(len(g.hdr))], netProtoOf(g.v6), true)
		case g.n > 1:
			e.stats.rxCoalesced.Add(uint64(g.n))
			pkt := g.packet(buf)
			rx.to.DeliverNetworkPacket(pkt.NetworkProtocolNumber, pkt)
			pkt.DecRef()
			shared = true
		}
		g.n = 0
	}
	for off := 0; off < len(data); off += m.GSOSize {
		p := data[off:min(off+m.GSOSize, len(data))]
		bufs[0], seg.N = p, len(p)
		inner, proto, verified, ok := e.decap(seg)
		if !ok {
			continue
		}
		// inner is a prefix of p (FramingUDP), so it starts at off.
		if coalesce && verified && &inner[0] == &p[0] {
			if g.add(inner, off) {
				continue
			}
			flush()
			if g.add(inner, off) {
				continue
			}
		} else {
			flush()
		}
		e.deliverCopy(rx, inner, proto, verified)
	}
	flush()
	return shared
}

func netProtoOf(v6 bool) tcpip.NetworkProtocolNumber {
	if v6 {
		return header.IPv6ProtocolNumber
	}
	return header.IPv4ProtocolNumber
}

// groDispatcher feeds the stack through gVisor's GRO engine, which merges
// consecutive TCP segments of a flow into one packet before TCP sees it.
type groDispatcher struct {
	g gro.GRO
}

// DeliverNetworkPacket implements stack.NetworkDispatcher: it enqueues pkt
// into GRO; the caller keeps its reference.
func (d *groDispatcher) DeliverNetworkPacket(_ tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	d.g.Enqueue(pkt)
}

// DeliverLinkPacket implements stack.NetworkDispatcher.
func (d *groDispatcher) DeliverLinkPacket(p tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	d.g.Dispatcher.DeliverLinkPacket(p, pkt)
}
