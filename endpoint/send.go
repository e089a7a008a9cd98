package endpoint

import (
	"net/netip"

	"github.com/ipipstack/ipipstack/endpoint/encap"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// WritePackets implements stack.LinkEndpoint.WritePackets. Packets that
// cannot be sent (too big, not IP, a send error) are dropped and counted,
// like a NIC drops on the wire; only a closed endpoint returns an error.
//
// TCP super-segments (host GSO) are cut into wire-size packets here; over
// a transport with UDP GSO they leave in UDP_SEGMENT sends of at most 64
// packets and 65,507 bytes each (queueGSO). IPv4 fragments the stack
// sends lose DF (fragdf.go).
func (e *Endpoint) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	// Held shared while the call runs: Close waits for it (endpoint.go).
	e.writers.RLock()
	defer e.writers.RUnlock()
	if e.closed.Load() {
		return 0, &tcpip.ErrClosedForSend{}
	}
	tb := e.txPool.Get().(*txBatch)
	peer := e.peer.Load()
	remote := peer.addr
	tb.enc = peer.enc
	mtu := int(e.mtu.Load())
	for _, pkt := range pkts.AsSlice() {
		mtu := e.packetMTU(pkt, mtu) // less for IPv4 DF above the outer path (pmtu.go)
		gso := pkt.GSOOptions
		if gso.Type == stack.GSOTCPv4 || gso.Type == stack.GSOTCPv6 {
			if pkt.Data().Size() > int(gso.MSS) && gso.MSS > 0 {
				e.writeSuper(tb, pkt, int(gso.MSS), remote, mtu)
				continue
			}
			if gso.NeedsCsum {
				finishChecksum(pkt)
			}
		} else if clearFragmentDF(pkt); e.txChecksum(tb, pkt, remote, mtu) {
			continue // queued or held back by txcsum.go
		}
		e.queue(tb, pkt, remote, mtu)
	}
	e.flush(tb)
	tb.enc = nil
	e.txPool.Put(tb)
	return pkts.Len(), nil
}

// writeSuper cuts a TCP super-segment into packets of mss payload bytes
// and queues them: as UDP_SEGMENT messages where the transport can
// (queueGSO), as one message per packet otherwise.
func (e *Endpoint) writeSuper(tb *txBatch, pkt *stack.PacketBuffer, mss int, remote netip.AddrPort, mtu int) {
	hdr := len(pkt.NetworkHeader().Slice()) + len(pkt.TransportHeader().Slice())
	if hdr+mss > mtu {
		e.stats.drop(encap.TooBig)
		e.sendTooBig(pkt, mtu)
		return
	}
	pieces := (pkt.Data().Size() + mss - 1) / mss
	if tb.gsoUsed == maxGSOBuffers {
		e.flush(tb) // bound the memory one batch holds
	}
	buf := tb.gsoBuf()
	if pieces*(hdr+mss) > len(buf) {
		e.stats.drop(encap.TooBig)
		return
	}
	n, segSize := segmentTCP(buf, pkt, mss)
	if e.offloads.GSO && !e.gsoOff.Load() && e.gsoFits(segSize) {
		e.queueGSO(tb, buf[:n], segSize, remote)
		return
	}
	for off := 0; off < n; off += segSize {
		e.queuePiece(tb, buf[off:min(off+segSize, n)], remote)
	}
}

// queueGSO queues b, inner packets of segSize bytes back to back (the last
// may be shorter) in a buffer of tb's, as UDP_SEGMENT messages that each
// stay within the kernel's limits of one send (gsoSegmentsPerSend): the
// stack sizes super-segments for MTU-sized packets (gsoMaxSize), but cut
// at a smaller MSS (a peer's, or one lowered by path MTU discovery) one
// can hold twice as many packets and more than 64 KiB. A full batch is
// sent first, its buffers kept: the rest of b is still to be queued.
func (e *Endpoint) queueGSO(tb *txBatch, b []byte, segSize int, remote netip.AddrPort) {
	in, _ := encap.PeekInner(b)
	per := gsoSegmentsPerSend(segSize) * segSize
	for len(b) > 0 {
		if tb.n == len(tb.msgs) {
			e.flushKeep(tb)
		}
		k := min(len(b), per)
		i := tb.n
		m := &tb.msgs[i]
		m.Buffers, m.Addr, m.GSOSize = append(tb.segs[i][:0], b[:k]), remote, segSize
		if k <= segSize {
			m.GSOSize = 0 // one packet: a plain datagram
		}
		e.outerFields(m, in)
		tb.packets[i], tb.bytes[i] = (k+segSize-1)/segSize, k
		tb.n++
		b = b[k:]
	}
}

// queuePiece queues p, one inner packet in a buffer of tb's (gsoBuf,
// pieceBuf), as a message of its own. A full batch is sent first, its
// buffers kept: the rest of p's buffer is still to be queued.
func (e *Endpoint) queuePiece(tb *txBatch, p []byte, remote netip.AddrPort) {
	if tb.n == len(tb.msgs) {
		e.flushKeep(tb)
	}
	i := tb.n
	m := &tb.msgs[i]
	segs := tb.segs[i][:0]
	if tb.enc != nil {
		hdr := tb.hdrs[i][:]
		k, err := e.encodeOuter(tb.enc, hdr, p, len(p))
		if err != nil {
			e.stats.drop(encap.NotIP)
			return
		}
		segs = append(segs, hdr[:k])
	} else {
		in, _ := encap.PeekInner(p)
		e.outerFields(m, in)
	}
	m.Buffers, m.Addr, m.GSOSize = append(segs, p), remote, 0
	tb.packets[i], tb.bytes[i] = 1, len(p)
	tb.n++
}

// outerFields sets the outer ToS and TTL that the kernel writes for a UDP
// transport, from the inner packet's fields and the policy.
func (e *Endpoint) outerFields(m *Message, in encap.Inner) {
	m.TOS = e.pol.TOS
	if e.pol.TOSInherit {
		m.TOS = in.TOS
	}
	m.TOS = m.TOS&^3 | encap.EncapECN(in.TOS)
	m.TTL = e.pol.TTL
	if m.TTL == 0 {
		m.TTL = in.TTL
	}
}

// queue queues pkt: cut to its destination's path MTU (pmtu6.go) or as one
// message pointing into pkt, sending the batch first if it is full.
func (e *Endpoint) queue(tb *txBatch, pkt *stack.PacketBuffer, remote netip.AddrPort, mtu int) {
	if e.cutToPathMTU(tb, pkt, remote, mtu) {
		return
	}
	if tb.n == len(tb.msgs) {
		e.flush(tb)
	}
	if e.encode(tb, tb.n, pkt, remote, mtu) {
		tb.n++
	}
}

// encode fills message i of tb for pkt and reports whether it is to be
// sent. The message points into pkt's views, which stay alive until
// WritePackets returns.
func (e *Endpoint) encode(tb *txBatch, i int, pkt *stack.PacketBuffer, remote netip.AddrPort, mtu int) bool {
	size := pkt.Size()
	if size > mtu {
		e.stats.drop(encap.TooBig)
		e.sendTooBig(pkt, mtu)
		return false
	}
	segs := tb.segs[i][:0]
	if tb.enc != nil {
		segs = append(segs, nil) // the outer header, below
	}
	vl, off := pkt.AsViewList()
	for v := vl.Front(); v != nil; v = v.Next() {
		b := v.AsSlice()
		if off >= len(b) {
			off -= len(b)
			continue
		}
		b, off = b[off:], 0
		if len(segs) == MaxSegments {
			e.stats.drop(encap.SendError)
			return false
		}
		segs = append(segs, b)
	}
	first := 0
	if tb.enc != nil {
		first = 1
	}
	if len(segs) <= first {
		e.stats.drop(encap.NotIP)
		return false
	}
	in, ok := encap.PeekInner(segs[first])
	if !ok {
		e.stats.drop(encap.NotIP)
		return false
	}
	if in.Proto == encap.ProtoIPv6 {
		clampTooBig(segs[first])
	}
	m := &tb.msgs[i]
	if tb.enc != nil {
		hdr := tb.hdrs[i][:]
		n, err := e.encodeOuter(tb.enc, hdr, segs[first], size)
		if err != nil {
			e.stats.drop(encap.NotIP)
			return false
		}
		segs[0] = hdr[:n]
	} else {
		e.outerFields(m, in)
	}
	m.Buffers, m.Addr, m.GSOSize = segs, remote, 0
	tb.packets[i], tb.bytes[i] = 1, size
	return true
}
