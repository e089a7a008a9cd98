package endpoint

import (
	"errors"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ipipstack/ipipstack/endpoint/encap"
)

// txBatch is the reusable state of one WritePackets call: the messages
// of one sendmmsg and what they point to.
type txBatch struct {
	msgs []Message
	// packets and bytes are the inner packets and bytes of each message,
	// for the counters (a GSO message carries several packets).
	packets, bytes []int
	hdrs           [][encap.IPv6HeaderLen + encap.EncapLimitLen]byte
	segs           [][MaxSegments][]byte
	n              int // messages filled
	// gso are buffers for segmented super-segments and cut packets;
	// gsoUsed are in use, and gsoFree bytes at the end of the last one in
	// use are left for cut packets (pieceBuf).
	gso     [][]byte
	gsoUsed int
	gsoFree int
	// enc writes the outer headers of this call's messages, for the peer
	// WritePackets saw when it began (nil for UDP).
	enc *encap.Encoder
}

func newTxBatch(n int) *txBatch {
	return &txBatch{
		msgs:    make([]Message, n),
		packets: make([]int, n),
		bytes:   make([]int, n),
		hdrs:    make([][encap.IPv6HeaderLen + encap.EncapLimitLen]byte, n),
		segs:    make([][MaxSegments][]byte, n),
	}
}

// maxGSOBuffers bounds the segmented super-segments one batch holds
// before it is sent (each buffer is 128 KiB).
const maxGSOBuffers = 8

// gsoBuf returns a buffer for one segmented super-segment.
func (tb *txBatch) gsoBuf() []byte {
	if tb.gsoUsed == len(tb.gso) {
		tb.gso = append(tb.gso, make([]byte, 1<<17))
	}
	tb.gsoUsed++
	tb.gsoFree = 0
	return tb.gso[tb.gsoUsed-1]
}

// pieceBuf returns n bytes of buffer for the pieces of a cut packet, from
// what is left of the last buffer in use if that is enough, or nil if the
// batch holds maxGSOBuffers already and must be flushed first.
func (tb *txBatch) pieceBuf(n int) []byte {
	if n > tb.gsoFree {
		if tb.gsoUsed == maxGSOBuffers {
			return nil
		}
		tb.gsoFree = len(tb.gsoBuf())
		if n > tb.gsoFree {
			return nil
		}
	}
	b := tb.gso[tb.gsoUsed-1]
	off := len(b) - tb.gsoFree
	tb.gsoFree -= n
	return b[off : off+n : off+n]
}

// flush sends the queued messages and frees every buffer they used.
func (e *Endpoint) flush(tb *txBatch) {
	e.flushKeep(tb)
	tb.gsoUsed, tb.gsoFree = 0, 0
}

// flushKeep sends the queued messages but keeps the GSO buffers in use, for
// a super-segment whose packets span two batches.
func (e *Endpoint) flushKeep(tb *txBatch) {
	if tb.n > 1 && tb.enc == nil && e.offloads.GSO && !e.gsoOff.Load() {
		e.coalesceBatch(tb) // txcoalesce.go
	}
	if tb.n > 0 {
		e.send(tb.msgs[:tb.n], tb.packets[:tb.n], tb.bytes[:tb.n])
	}
	for i := range tb.n {
		clear(tb.segs[i][:])
		tb.msgs[i].Buffers = nil
	}
	tb.n = 0
}

// send writes msgs, skipping over messages the kernel refuses, and counts
// what was sent.
func (e *Endpoint) send(msgs []Message, packets, bytes []int) {
	for len(msgs) > 0 {
		n, err := e.tr.WriteBatch(msgs)
		for i := range n {
			e.stats.txPackets.Add(uint64(packets[i]))
			e.stats.txBytes.Add(uint64(bytes[i]))
		}
		if err == nil && n == len(msgs) {
			return
		}
		msgs, packets, bytes = msgs[n:], packets[n:], bytes[n:]
		if len(msgs) == 0 {
			return
		}
		// msgs[0] failed: count it and go on with the rest.
		reason := encap.SendError
		switch {
		case errors.Is(err, syscall.EMSGSIZE):
			// Bigger than the outer path MTU, which may have dropped
			// (pmtu.go). The inner sender learns it on retransmission.
			reason = encap.TooBig
			e.learnPathMTU(datagramSize(&msgs[0]))
		case errors.Is(err, syscall.EINVAL) && msgs[0].GSOSize > 0 && e.learnPathMTU(msgs[0].GSOSize):
			// The kernel refuses UDP GSO segments above the path MTU
			// with EINVAL (udp_send_skb), not EMSGSIZE.
			reason = encap.TooBig
		case msgs[0].GSOSize > 0 && (errors.Is(err, syscall.EIO) || errors.Is(err, syscall.EINVAL)):
			// Not the path MTU (above) nor the limits of one send
			// (queueGSO): the kernel refuses UDP_SEGMENT here.
			e.refuseGSO(err)
			e.sendPlain(&msgs[0])
			msgs, packets, bytes = msgs[1:], packets[1:], bytes[1:]
			continue
		case errors.Is(err, ErrClosed):
			for i := range msgs {
				e.stats.drops[encap.Closed].Add(uint64(packets[i]))
			}
			return
		default:
			e.logSendError(err)
		}
		e.stats.drops[reason].Add(uint64(packets[0]))
		msgs, packets, bytes = msgs[1:], packets[1:], bytes[1:]
	}
}

// refuseGSO turns UDP GSO off for good after the kernel refused a
// UDP_SEGMENT send with err: EIO from udp_send_skb when the route's device
// cannot checksum (wireguard-go's ErrUDPGSODisabled), or EINVAL for a
// message within the limits of one send and the path MTU (some kernels
// refuse UDP GSO over IPv6, say). Super-segments are cut into plain
// datagrams from then on.
func (e *Endpoint) refuseGSO(err error) {
	e.stats.gsoRefused.Add(1)
	if !e.gsoOff.Swap(true) {
		e.log.Warn("the kernel refused a UDP GSO send; sending one datagram per packet from now on",
			"tunnel", e.name, "err", err,
			"hint", "check the TX checksum offload of the outer route's device (ethtool -k), or set DisableGSO to silence this")
	}
}

// sendPlain sends the packets of m, a UDP GSO message, as one datagram
// each, and counts them. It allocates, but runs only when the kernel
// refuses UDP GSO, for good after the first time.
func (e *Endpoint) sendPlain(m *Message) {
	const chunk = maxGSOSegments
	var (
		msgs          [chunk]Message
		bufs          [chunk][1][]byte
		packets, size [chunk]int
	)
	b := m.Buffers[0]
	for len(b) > 0 {
		k := 0
		for ; k < chunk && len(b) > 0; k++ {
			p := b[:min(m.GSOSize, len(b))]
			b = b[len(p):]
			bufs[k][0] = p
			msgs[k] = Message{Buffers: bufs[k][:], Addr: m.Addr, TOS: m.TOS, TTL: m.TTL}
			packets[k], size[k] = 1, len(p)
		}
		e.send(msgs[:k], packets[:k], size[:k])
	}
}

// datagramSize is the size of the datagram m sends, or of its segments
// if it is a GSO message.
func datagramSize(m *Message) int {
	if m.GSOSize > 0 {
		return m.GSOSize
	}
	n := 0
	for _, b := range m.Buffers {
		n += len(b)
	}
	return n
}

var sendErrLog atomic.Int64

func (e *Endpoint) logSendError(err error) {
	now := time.Now().UnixNano()
	if last := sendErrLog.Load(); now-last > int64(time.Second) && sendErrLog.CompareAndSwap(last, now) {
		e.log.Warn("tunnel send error", "tunnel", e.name, "err", err)
	}
}
