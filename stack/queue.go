package stack

import (
	"sync"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/link/qdisc/fifo"
	gvstack "gvisor.dev/gvisor/pkg/tcpip/stack"
)

// lazyQueue is the queue in front of a tunnel's NIC (gVisor's
// QueueingDiscipline). It behaves as gVisor's fifo discipline with one
// queue: writers' packets are written to the link in order, in batches of
// up to fifo.BatchSize from one goroutine, so that many writers share a
// WritePackets call; a full queue drops the packet with
// ErrNoBufferSpace, which the NIC counts (TunnelStats.QueueDrops).
//
// Unlike fifo it costs an idle tunnel nothing: fifo allocates its ring of
// limit packets (32 KiB for nicQueueLen) and parks a goroutine for the
// NIC's whole life. Here the queue is a slice that grows with use, and the
// goroutine that drains it starts with the first packet written to an
// empty queue and returns once it has emptied it; a slice that grew past
// keptQueueCap packets is released then too.
type lazyQueue struct {
	lower gvstack.LinkWriter
	limit int // packets queued at most, besides the batch being written

	// mu guards the fields below.
	mu sync.Mutex
	// pkts[head:] are the queued packets, oldest first; the queue holds a
	// reference to each.
	pkts []*gvstack.PacketBuffer
	head int
	// draining is set while a drain goroutine runs; it alone uses batch.
	draining bool
	closed   bool
	batch    gvstack.PacketBufferList
	// done is waited for by Close: the drain goroutine, if any.
	done sync.WaitGroup
}

// keptQueueCap is how many packets' room a drained queue keeps, so that
// a steady flow of small bursts allocates nothing (a fifo.BatchSize batch
// and some); a larger slice is released when the queue drains.
const keptQueueCap = 64

var _ gvstack.QueueingDiscipline = (*lazyQueue)(nil)

func newLazyQueue(lower gvstack.LinkWriter, limit int) *lazyQueue {
	return &lazyQueue{lower: lower, limit: limit}
}

// WritePacket implements stack.QueueingDiscipline.WritePacket. The queue
// takes a reference to pkt if it returns nil.
func (q *lazyQueue) WritePacket(pkt *gvstack.PacketBuffer) tcpip.Error {
	q.mu.Lock()
	defer q.mu.Unlock()
	switch {
	case q.closed:
		return &tcpip.ErrClosedForSend{}
	case len(q.pkts)-q.head >= q.limit:
		return &tcpip.ErrNoBufferSpace{}
	}
	if q.head > 0 && len(q.pkts) == cap(q.pkts) {
		// Reuse the room of what was written before growing.
		n := copy(q.pkts, q.pkts[q.head:])
		clear(q.pkts[n:])
		q.pkts, q.head = q.pkts[:n], 0
	}
	q.pkts = append(q.pkts, pkt.IncRef())
	if !q.draining {
		q.draining = true
		q.done.Add(1)
		go q.drain()
	}
	return nil
}

// drain writes the queued packets to the link until the queue is empty
// or closed.
func (q *lazyQueue) drain() {
	defer q.done.Done()
	q.mu.Lock()
	for !q.closed && q.head < len(q.pkts) {
		end := min(q.head+fifo.BatchSize, len(q.pkts))
		for i := q.head; i < end; i++ {
			q.batch.PushBack(q.pkts[i]) // the batch takes the queue's reference
			q.pkts[i] = nil
		}
		q.head = end
		q.mu.Unlock()
		q.lower.WritePackets(q.batch) // errors are the link's to count
		q.batch.Reset()               // drops the references
		q.mu.Lock()
	}
	if q.head == len(q.pkts) {
		q.pkts, q.head = q.pkts[:0], 0
		if cap(q.pkts) > keptQueueCap {
			// Back to the kept size, not nil: the next burst would
			// otherwise grow it again from one packet.
			q.pkts = make([]*gvstack.PacketBuffer, 0, keptQueueCap)
		}
	}
	q.draining = false
	q.mu.Unlock()
}

// Close implements stack.QueueingDiscipline.Close: later writes fail,
// the drain goroutine returns after the batch it is writing, and the
// packets still queued are dropped.
func (q *lazyQueue) Close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	q.done.Wait()
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, p := range q.pkts[q.head:] {
		p.DecRef()
	}
	q.pkts, q.head = nil, 0
}
