package stack

import (
	"encoding/binary"
	"sync"
	"sync/atomic"

	"github.com/ipipstack/ipipstack/endpoint"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/nested"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	gvstack "gvisor.dev/gvisor/pkg/tcpip/stack"
)

// Forwarding works around three bugs of gVisor's: see "Forwarding" in the
// package doc (doc.go), which the numbers "bug 1" to "bug 3" below refer to.

// ForwardStats counts what a forwarding stack did to packets on their way
// through, beyond gVisor's own counters (GVisor().Stats().IP.Forwarding).
type ForwardStats struct {
	// Refragmented is the IPv4 packets without DF, whole or fragments,
	// that were bigger than the link they left by and were cut to fit.
	Refragmented uint64
	// Fragments is the pieces they were cut into.
	Fragments uint64
	// TTLExpired is the IPv4 packets to be forwarded that arrived with TTL
	// 1 and were discarded with Time Exceeded.
	TTLExpired uint64
	// OffsetOverflow is the IPv4 packets to be cut whose data would end
	// past byte 65535 of their datagram (a hostile fragment near offset
	// 65528, say): no valid datagram has such a fragment, and pieces
	// past the fragment offset field's 65528 would wrap to small
	// offsets, so they were dropped instead (see splitIPv4).
	OffsetOverflow uint64
	// IncompleteDatagrams is the fragmented UDP datagrams the stack itself
	// sent out of a link without TX checksum offload (AddLink) whose first
	// fragment, held back until the others had been summed (bug 1), was
	// dropped because a later fragment never came.
	IncompleteDatagrams uint64
}

// ForwardStats returns the counters of forwarding; they stay zero unless
// Config.Forwarding is set.
func (s *Stack) ForwardStats() ForwardStats {
	return ForwardStats{
		Refragmented:        s.fwd.refragmented.Load(),
		Fragments:           s.fwd.fragments.Load(),
		TTLExpired:          s.fwd.ttlExpired.Load(),
		OffsetOverflow:      s.fwd.offsetOverflow.Load(),
		IncompleteDatagrams: s.fwd.incomplete.Load(),
	}
}

// forwarding is the state of a forwarding stack's forwardLinks.
type forwarding struct {
	refragmented, fragments, ttlExpired, incomplete atomic.Uint64
	offsetOverflow                                  atomic.Uint64

	// mu serializes changes to links, which is replaced whole and read
	// on the data path without it.
	mu    sync.Mutex
	links atomic.Pointer[[]*forwardLink]
}

// minMTU is the smallest MTU of the stack's NICs: an IPv4 packet no bigger
// fits whichever link it leaves by, and needs no route lookup.
func (f *forwarding) minMTU() int {
	links := f.links.Load()
	if links == nil {
		return 0
	}
	m := -1
	for _, l := range *links {
		if mtu := int(l.MTU()); m < 0 || mtu < m {
			m = mtu
		}
	}
	return m
}

// wrapForwarding returns ep wrapped in a forwardLink if s forwards, and ep
// itself otherwise. The wrapper passes every call but DeliverNetworkPacket
// through to ep (nested.Endpoint: MTU, GSO and Close included), and, if ep
// lacks TX checksum offload (a TUN device; not a tunnel endpoint, which
// has it), Capabilities and WritePackets too.
func (s *Stack) wrapForwarding(ep gvstack.LinkEndpoint) gvstack.LinkEndpoint {
	if !s.forwarding {
		return ep
	}
	l := &forwardLink{s: s}
	if ep.Capabilities()&gvstack.CapabilityTXChecksumOffload == 0 {
		l.tx = new(endpoint.TXChecksummer)
	}
	l.Endpoint.Init(ep, l)
	s.fwd.mu.Lock()
	var links []*forwardLink
	if old := s.fwd.links.Load(); old != nil {
		links = append(links, *old...)
	}
	links = append(links, l)
	s.fwd.links.Store(&links)
	s.fwd.mu.Unlock()
	return l
}

// forwardLink is the link endpoint of one NIC of a forwarding stack, around
// the NIC's own: it works around gVisor's IPv4 forwarding bugs 2 and 3
// (see above) on the packets the NIC receives, and bug 1 on the packets it
// sends if the NIC's own lacks TX checksum offload.
type forwardLink struct {
	nested.Endpoint
	s *Stack
	// tx, set if the NIC's own link endpoint lacks TX checksum offload,
	// completes the checksums of the packets the stack sends (bug 1).
	// Read-only after wrapForwarding.
	tx *endpoint.TXChecksummer

	// writers is held shared by the WritePackets calls that use tx, and
	// exclusively by Close to set closed: the fragments Close drops are
	// then the last that tx holds.
	writers sync.RWMutex
	// +checklocks:writers
	closed bool
}

var (
	_ gvstack.LinkEndpoint      = (*forwardLink)(nil)
	_ gvstack.GSOEndpoint       = (*forwardLink)(nil)
	_ gvstack.NetworkDispatcher = (*forwardLink)(nil)
)

// Capabilities implements stack.LinkEndpoint.Capabilities: the NIC's own,
// with TX checksum offload if the forwardLink completes checksums.
func (l *forwardLink) Capabilities() gvstack.LinkEndpointCapabilities {
	c := l.Endpoint.Capabilities()
	if l.tx != nil {
		c |= gvstack.CapabilityTXChecksumOffload
	}
	return c
}

// sendLists recycles the packet lists of forwardLink.WritePackets.
var sendLists = sync.Pool{New: func() any { return new(gvstack.PacketBufferList) }}

// putSendList drops the references of out and recycles it.
func putSendList(out *gvstack.PacketBufferList) {
	out.Reset()
	sendLists.Put(out)
}

// WritePackets implements stack.LinkEndpoint.WritePackets. If the
// forwardLink completes checksums, it does so for each packet of pkts
// before the NIC's own link endpoint writes them (bug 1): that one is
// handed pkts as they are unless a packet is held or a held first
// fragment is due, and otherwise a list of its own, which holds a
// reference to each of its packets until the write returns. The count
// returned is len(pkts) if every packet handed over was written, and
// otherwise the number written, at most len(pkts). The caller keeps its
// references to pkts.
func (l *forwardLink) WritePackets(pkts gvstack.PacketBufferList) (int, tcpip.Error) {
	if l.tx == nil {
		return l.Endpoint.WritePackets(pkts)
	}
	l.writers.RLock()
	defer l.writers.RUnlock()
	if l.closed {
		return 0, &tcpip.ErrClosedForSend{}
	}
	all := pkts.AsSlice()
	var out *gvstack.PacketBufferList // nil while all go out as they are
	for i, pkt := range all {
		v, first, dropped := l.tx.Complete(pkt)
		if dropped {
			l.s.fwd.incomplete.Add(1)
		}
		if v == endpoint.TXSend && out == nil {
			continue
		}
		if out == nil {
			out = sendLists.Get().(*gvstack.PacketBufferList)
			for _, p := range all[:i] {
				out.PushBack(p.IncRef())
			}
		}
		if v != endpoint.TXHeld {
			out.PushBack(pkt.IncRef())
		}
		if first != nil {
			out.PushBack(first) // with the reference Complete passed on
		}
	}
	if out == nil {
		return l.Endpoint.WritePackets(pkts)
	}
	defer putSendList(out)
	if out.Len() == 0 {
		return len(all), nil
	}
	n, err := l.Endpoint.WritePackets(*out)
	if n == out.Len() {
		n = len(all)
	}
	return min(n, len(all)), err
}

// Close implements stack.LinkEndpoint.Close: it closes the NIC's own link
// endpoint, waits for the WritePackets calls in progress and drops the
// fragments held for their checksum; later calls fail.
func (l *forwardLink) Close() {
	l.Endpoint.Close()
	if l.tx != nil {
		l.writers.Lock()
		l.closed = true
		l.writers.Unlock()
		l.tx.Release()
	}
}

// DeliverNetworkPacket implements stack.NetworkDispatcher. A packet it
// cuts into pieces is not delivered itself; the caller keeps its reference
// to pkt either way.
func (l *forwardLink) DeliverNetworkPacket(proto tcpip.NetworkProtocolNumber, pkt *gvstack.PacketBuffer) {
	if proto == ipv4.ProtocolNumber && l.forward4(pkt) {
		return
	}
	l.Endpoint.DeliverNetworkPacket(proto, pkt)
}

// forward4 applies the workarounds to an IPv4 packet: it sets TTL 1 to 0
// in place, or cuts pkt into pieces and delivers those, and reports
// whether it did the latter. Anything malformed is left to gVisor to
// drop. Only packets with TTL 1, or without DF and bigger than the
// smallest link MTU, get past the first test.
func (l *forwardLink) forward4(pkt *gvstack.PacketBuffer) bool {
	h, ok := pkt.Data().PullUp(header.IPv4MinimumSize)
	if !ok {
		return false
	}
	ip := header.IPv4(h)
	ttl, size := ip.TTL(), int(ip.TotalLength())
	df := ip.Flags()&header.IPv4FlagDontFragment != 0
	if ttl > 1 && (df || size <= l.s.fwd.minMTU()) || ttl == 0 {
		return false
	}
	hl := int(ip.HeaderLength())
	if h[0]>>4 != 4 || hl < header.IPv4MinimumSize || size < hl || size > pkt.Data().Size() {
		return false
	}
	if h, ok = pkt.Data().PullUp(hl); !ok || !header.IPv4(h).IsChecksumValid() {
		return false // a bad header is gVisor's to count and drop, not ours to re-checksum
	}
	ip = header.IPv4(h)
	dst := ip.DestinationAddress()
	if header.IsV4MulticastAddress(dst) || dst == header.IPv4Broadcast ||
		l.s.gv.CheckLocalAddress(0, ipv4.ProtocolNumber, dst) != 0 {
		return false // for us (or a subnet broadcast of ours): not forwarded
	}
	if ttl == 1 {
		expireTTL(h)
		l.s.fwd.ttlExpired.Add(1)
		return false
	}
	r, terr := l.s.gv.FindRoute(0, tcpip.Address{}, dst, ipv4.ProtocolNumber, false /* multicastLoop */)
	if terr != nil {
		return false // gVisor answers Destination Unreachable
	}
	// Route.MTU is what a 20-byte header leaves of the link MTU.
	mtu := int(r.MTU()) + header.IPv4MinimumSize
	r.Release()
	if size <= mtu {
		return false
	}
	p, ok := pkt.Data().PullUp(size)
	if !ok {
		return false
	}
	if fragmentEnd(p) > maxFragmentEnd {
		// Left to gVisor it would be cut with offsets from 0 (bug 2).
		l.s.fwd.offsetOverflow.Add(1)
		return true
	}
	n := splitIPv4(p, mtu, func(hdr, payload []byte) {
		v := buffer.NewViewSize(len(hdr) + len(payload))
		b := v.AsSlice()
		copy(b[copy(b, hdr):], payload)
		piece := gvstack.NewPacketBuffer(gvstack.PacketBufferOptions{Payload: buffer.MakeWithView(v)})
		piece.NetworkProtocolNumber = ipv4.ProtocolNumber
		piece.RXChecksumValidated = pkt.RXChecksumValidated
		l.Endpoint.DeliverNetworkPacket(ipv4.ProtocolNumber, piece)
		piece.DecRef()
	})
	if n == 0 {
		return false
	}
	l.s.fwd.refragmented.Add(1)
	l.s.fwd.fragments.Add(uint64(n))
	return true
}

// expireTTL sets the TTL of the IPv4 header h to 0 and updates its
// checksum incrementally (RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m') over
// the 16-bit word of TTL and protocol).
func expireTTL(h []byte) {
	const ttlWord = 8
	old := binary.BigEndian.Uint16(h[ttlWord:])
	h[ttlWord] = 0
	sum := uint32(^binary.BigEndian.Uint16(h[10:])) + uint32(^old) + uint32(binary.BigEndian.Uint16(h[ttlWord:]))
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	binary.BigEndian.PutUint16(h[10:], ^uint16(sum))
}

// maxFragmentEnd is where the data of an IPv4 datagram ends at the
// latest, counted like fragment offsets from the end of its header: the
// total length field bounds a datagram at 65535 bytes, header included.
// It also keeps every piece splitIPv4 cuts at an offset the 13-bit field
// holds (65528 at most): a piece starts before the end, on a multiple of 8.
const maxFragmentEnd = 65535

// fragmentEnd returns where the data of the IPv4 packet p (exactly its
// total length, header valid) ends in its datagram: its fragment offset
// plus its payload length.
func fragmentEnd(p []byte) int {
	ip := header.IPv4(p)
	return int(ip.FragmentOffset()) + len(p) - int(ip.HeaderLength())
}

// splitIPv4 cuts the IPv4 packet p (header and payload, exactly its total
// length) into fragments of at most mtu bytes, calling emit with each
// one's header and payload in order; emit must copy them. It returns the
// number of fragments, or 0 if p cannot be cut (malformed options, an MTU
// too small for its header, data that would end past maxFragmentEnd).
//
// As RFC 791 §3.2 has it, every piece keeps p's header fields; its offset
// is p's own plus where the piece starts, in 8-byte units; More Fragments
// is set on every piece but the last, and on the last if p had it. The
// first piece carries all of p's options, the others only those whose copy
// flag is set, padded to a multiple of 4 bytes with End of Option List.
func splitIPv4(p []byte, mtu int, emit func(hdr, payload []byte)) int {
	ip := header.IPv4(p)
	hl := int(ip.HeaderLength())
	if fragmentEnd(p) > maxFragmentEnd {
		return 0
	}
	var first, rest [header.IPv4MaximumHeaderSize]byte
	copy(first[:], p[:hl])
	// The header of the pieces after the first.
	restLen := copy(rest[:], p[:header.IPv4MinimumSize])
	for i := header.IPv4MinimumSize; i < hl; {
		switch t := p[i]; t {
		case 0: // End of Option List
			i = hl
			continue
		case 1: // No Operation: one byte, copy flag clear
			i++
			continue
		}
		if i+1 >= hl || p[i+1] < 2 || i+int(p[i+1]) > hl {
			return 0
		}
		n := int(p[i+1])
		if p[i]&0x80 != 0 {
			restLen += copy(rest[restLen:], p[i:i+n])
		}
		i += n
	}
	restLen = (restLen + 3) &^ 3 // the padding is already 0
	rest[0] = 4<<4 | byte(restLen/4)

	// Every piece but the last carries a multiple of 8 bytes.
	firstRoom, restRoom := (mtu-hl)&^7, (mtu-restLen)&^7
	if firstRoom < 8 || restRoom < 8 {
		return 0
	}

	payload := p[hl:]
	base := int(ip.FragmentOffset()) // bytes
	more := ip.More()
	flags := ip.Flags() &^ header.IPv4FlagMoreFragments
	pieces := 0
	for off := 0; off < len(payload); {
		hdr, room := first[:hl], firstRoom
		if off > 0 {
			hdr, room = rest[:restLen], restRoom
		}
		n := min(room, len(payload)-off)
		f := flags
		if more || off+n < len(payload) {
			f |= header.IPv4FlagMoreFragments
		}
		h := header.IPv4(hdr)
		h.SetFlagsFragmentOffset(f, uint16(base+off))
		h.SetTotalLength(uint16(len(hdr) + n))
		h.SetChecksum(0)
		h.SetChecksum(^h.CalculateChecksum())
		pieces++
		emit(hdr, payload[off:off+n])
		off += n
	}
	return pieces
}
