package endpoint

// Coalescing on send: consecutive datagrams of a batch that go to the same
// peer with the same outer ToS and TTL, and have the same size (the last
// may be shorter), leave as one UDP_SEGMENT message, as wireguard-go's
// coalesceMessages does. The kernel's per-datagram cost (an skb through
// the UDP and IP output paths, and on loopback the peer's input path too)
// dominates small packets: UDP datagrams of an application, TCP ACKs,
// ICMP. The packets are copied into one of the batch's GSO buffers; a
// datagram alone keeps pointing into the stack's buffers. On the wire the
// segments are ordinary datagrams (the kernel or the NIC cuts them); a
// peer's UDP GRO may hand them over as one read again.

// coalesceBatch rewrites tb's queued messages, merging runs of two or more
// datagrams that can leave as one UDP_SEGMENT message. Only for a UDP
// transport with GSO (tb.enc is nil).
func (e *Endpoint) coalesceBatch(tb *txBatch) {
	w := 0
	for i := 0; i < tb.n; {
		j := e.runEnd(tb, i)
		if j-i >= 2 {
			if buf := tb.pieceBuf(runBytes(tb, i, j)); buf != nil {
				e.mergeRun(tb, i, j, w, buf)
				w++
				i = j
				continue
			}
		}
		for ; i < j; i++ {
			moveMessage(tb, i, w)
			w++
		}
	}
	for k := w; k < tb.n; k++ {
		clear(tb.segs[k][:])
		tb.msgs[k].Buffers = nil
	}
	tb.n = w
}

// runEnd returns the end of the run of mergeable messages starting at i:
// plain datagrams to one address, with one ToS and TTL, all of the first
// one's size but the last, which may be shorter, within the limits of one
// send and the outer path.
func (e *Endpoint) runEnd(tb *txBatch, i int) int {
	first := &tb.msgs[i]
	if first.GSOSize != 0 {
		return i + 1
	}
	seg := tb.bytes[i]
	if !e.gsoFits(seg) {
		return i + 1
	}
	limit := min(tb.n, i+gsoSegmentsPerSend(seg))
	j := i + 1
	for ; j < limit; j++ {
		m := &tb.msgs[j]
		if m.GSOSize != 0 || m.Addr != first.Addr || m.TOS != first.TOS || m.TTL != first.TTL || tb.bytes[j] > seg {
			break
		}
		if tb.bytes[j] < seg {
			return j + 1 // a shorter datagram ends the run
		}
	}
	return j
}

// runBytes is the size of messages i to j-1 together.
func runBytes(tb *txBatch, i, j int) int {
	n := 0
	for k := i; k < j; k++ {
		n += tb.bytes[k]
	}
	return n
}

// mergeRun copies the datagrams of messages i to j-1 into buf, back to
// back, and makes them message w (w <= i), one UDP_SEGMENT message.
func (e *Endpoint) mergeRun(tb *txBatch, i, j, w int, buf []byte) {
	off := 0
	for k := i; k < j; k++ {
		for _, b := range tb.msgs[k].Buffers {
			off += copy(buf[off:], b)
		}
	}
	m := tb.msgs[i]
	m.Buffers, m.GSOSize = append(tb.segs[w][:0], buf[:off]), tb.bytes[i]
	tb.msgs[w] = m
	tb.packets[w], tb.bytes[w] = j-i, off
}

// moveMessage moves message i to slot w (w <= i), with its slices: slot
// i's may be overwritten by a later merged run.
func moveMessage(tb *txBatch, i, w int) {
	if i == w {
		return
	}
	m := tb.msgs[i]
	n := copy(tb.segs[w][:], m.Buffers)
	m.Buffers = tb.segs[w][:n]
	tb.msgs[w] = m
	tb.packets[w], tb.bytes[w] = tb.packets[i], tb.bytes[i]
}
