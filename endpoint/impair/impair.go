// Package impair is an endpoint.Transport that wraps a real one and makes
// its link worse, like Linux netem and tbf: it loses, reorders, duplicates
// and corrupts datagrams, delays them with jitter and limits their rate.
//
// # Usage
//
//	tr, err := endpoint.ListenUDP(local, endpoint.SocketOptions{})
//	conn := impair.Wrap(tr, impair.Options{Loss: 0.05, Reorder: 0.05, Seed: 1})
//	s, err := stack.New(stack.Config{Tunnels: []stack.Tunnel{{..., Conn: conn}}})
//
// Impairments apply on the send side only: WriteBatch impairs what it is
// given before the inner transport sends it, and Receivers returns the inner
// transport's receivers unchanged. Wrap both ends of a tunnel to impair both
// directions.
//
// The pipeline for each datagram written, in order:
//
//  1. loss: dropped with probability Loss;
//  2. duplication: sent twice with probability Duplicate; each copy goes
//     through the following stages on its own;
//  3. corruption: one random bit of the datagram (the inner packet, for
//     FramingUDP) is flipped with probability Corrupt;
//  4. reordering: held back with probability Reorder and released after the
//     next ReorderGap datagrams, or after ReorderTimeout if none come;
//  5. rate limit: a token bucket of RateBurst bytes filled at Rate bits/s;
//     datagrams over the rate wait in a queue of at most RateQueue bytes
//     and are dropped beyond it (tail drop, like tbf's limit);
//  6. delay: each datagram leaves Delay ± Jitter (uniform) after it passed
//     the rate limit. Jitter reorders datagrams whose departure times
//     cross, as netem does.
//
// Conn is not an endpoint.Offloader, so an endpoint writes it one datagram
// per Message; a Message with GSOSize set is cut into its datagrams, which
// are impaired one by one.
//
// Without Delay, Jitter or Rate, datagrams are sent by the caller of
// WriteBatch; otherwise one goroutine sends them when they are due. It is
// also the goroutine that releases held datagrams after ReorderTimeout, and
// it stops in Close.
//
// Decisions are drawn from a pseudo-random generator seeded with Seed: the
// same Seed and the same sequence of writes (one writer) give the same
// losses, duplicates, corruptions and holds. When datagrams leave can still
// vary with timing (ReorderTimeout releases, jitter drawn for them).
// Datagrams reach the inner transport in the order they were decided.
package impair

import (
	"container/heap"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ipipstack/ipipstack/endpoint"
)

// Options say how to impair the link. The zero value impairs nothing.
type Options struct {
	// Seed seeds the random decisions; 0 is a seed like any other.
	Seed uint64
	// Loss, Reorder, Duplicate and Corrupt are probabilities, 0..1, per
	// datagram.
	Loss, Reorder, Duplicate, Corrupt float64
	// ReorderGap is how many later datagrams overtake a held one; 0
	// means 1.
	ReorderGap int
	// ReorderTimeout releases a held datagram when no later one comes;
	// 0 means 5 ms.
	ReorderTimeout time.Duration
	// Delay is added to every datagram; Jitter varies it uniformly within
	// ±Jitter (never below zero).
	Delay, Jitter time.Duration
	// Rate limits the bits per second sent, counting the bytes of each
	// datagram as given to WriteBatch (no outer headers); 0 means no
	// limit.
	Rate int64
	// RateBurst is the token bucket's depth in bytes; 0 means 10 ms at
	// Rate, at least 64 KiB.
	RateBurst int
	// RateQueue is how many bytes may wait for tokens; beyond it
	// datagrams are dropped (Stats.RateDropped). 0 means 100 ms at Rate,
	// at least 64 KiB; -1 queues nothing (a policer).
	RateQueue int
}

// Validate reports the first option out of range.
func (o *Options) Validate() error {
	for _, p := range []struct {
		name string
		v    float64
	}{{"loss", o.Loss}, {"reorder", o.Reorder}, {"duplicate", o.Duplicate}, {"corrupt", o.Corrupt}} {
		if !(p.v >= 0 && p.v <= 1) { // also catches NaN
			return fmt.Errorf("impair: %s %v is not a probability in 0..1", p.name, p.v)
		}
	}
	switch {
	case o.ReorderGap < 0:
		return fmt.Errorf("impair: negative reorder gap %d", o.ReorderGap)
	case o.ReorderTimeout < 0, o.Delay < 0, o.Jitter < 0:
		return errors.New("impair: negative duration")
	case o.Rate < 0:
		return fmt.Errorf("impair: negative rate %d", o.Rate)
	case o.RateBurst < 0:
		return fmt.Errorf("impair: negative rate burst %d", o.RateBurst)
	case o.RateQueue < -1:
		return fmt.Errorf("impair: rate queue %d: want -1, 0 or a size in bytes", o.RateQueue)
	}
	return nil
}

// Stats counts what a Conn did. Every datagram written is counted in
// Datagrams, and ends up Lost, RateDropped or handed to the inner transport
// (Sent, which also counts duplicates), or is still in flight.
type Stats struct {
	Datagrams   uint64 // datagrams given to WriteBatch
	Sent        uint64 // datagrams handed to the inner transport
	Lost        uint64 // dropped by Loss
	Duplicated  uint64 // extra copies made by Duplicate
	Corrupted   uint64 // datagrams with a bit flipped
	Reordered   uint64 // datagrams held back
	Delayed     uint64 // datagrams sent by the delay goroutine
	RateDropped uint64 // dropped because the rate queue was full
	SendErrors  uint64 // inner WriteBatch failures, other than ErrClosed
}

// Conn is an impaired endpoint.Transport. Its methods are safe for
// concurrent use.
type Conn struct {
	inner   endpoint.Transport
	opt     Options
	timed   bool // Delay, Jitter or Rate: datagrams leave from the pump
	burst   time.Duration
	qlimit  time.Duration
	holdGap int
	holdTO  time.Duration

	// sendMu serializes sends, so that datagrams reach the inner
	// transport in the order decided under mu: it is taken before mu is
	// released.
	sendMu sync.Mutex
	// mu guards the fields below.
	mu     sync.Mutex
	rng    *rand.Rand
	held   []heldPkt
	queue  pktHeap
	seq    uint64
	tat    time.Time // GCRA theoretical arrival time of the rate limit
	closed bool

	wake chan struct{}
	done chan struct{}
	wg   sync.WaitGroup

	stats struct {
		datagrams, sent, lost, duplicated, corrupted, reordered,
		delayed, rateDropped, sendErrors atomic.Uint64
	}
}

var _ endpoint.Transport = (*Conn)(nil)

// maxHeld bounds the datagrams held back for reordering at once.
const maxHeld = 64

type pkt struct {
	b    *[]byte
	addr netip.AddrPort
	tos  uint8
	ttl  uint8
}

type heldPkt struct {
	pkt
	left     int // datagrams still to overtake it
	deadline time.Time
}

type timedPkt struct {
	pkt
	at  time.Time
	seq uint64
}

type pktHeap []timedPkt

func (h pktHeap) Len() int { return len(h) }
func (h pktHeap) Less(i, j int) bool {
	if !h[i].at.Equal(h[j].at) {
		return h[i].at.Before(h[j].at)
	}
	return h[i].seq < h[j].seq
}
func (h pktHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *pktHeap) Push(x any)   { *h = append(*h, x.(timedPkt)) }
func (h *pktHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	old[len(old)-1] = timedPkt{}
	*h = old[:len(old)-1]
	return x
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 2048); return &b }}

func getBuf() *[]byte { return bufPool.Get().(*[]byte) }
func putBuf(b *[]byte) {
	*b = (*b)[:0]
	bufPool.Put(b)
}

// Wrap returns inner impaired by opts. The Conn owns inner and closes it in
// Close. It panics if opts is invalid (see Options.Validate), a
// programmer's error: configuration is validated before it gets here.
func Wrap(inner endpoint.Transport, opts Options) *Conn {
	if err := opts.Validate(); err != nil {
		panic(err)
	}
	c := &Conn{
		inner:   inner,
		opt:     opts,
		timed:   opts.Delay > 0 || opts.Jitter > 0 || opts.Rate > 0,
		holdGap: opts.ReorderGap,
		holdTO:  opts.ReorderTimeout,
		rng:     rand.New(rand.NewPCG(opts.Seed, opts.Seed^0x9e3779b97f4a7c15)),
		wake:    make(chan struct{}, 1),
		done:    make(chan struct{}),
	}
	if c.holdGap == 0 {
		c.holdGap = 1
	}
	if c.holdTO == 0 {
		c.holdTO = 5 * time.Millisecond
	}
	if r := opts.Rate; r > 0 {
		burst := opts.RateBurst
		if burst == 0 {
			burst = max(64<<10, int(r/8/100))
		}
		q := opts.RateQueue
		if q == 0 {
			q = max(64<<10, int(r/8/10))
		}
		c.burst = bytesTime(burst, r)
		if q > 0 {
			c.qlimit = bytesTime(q, r)
		}
	}
	if c.timed || opts.Reorder > 0 {
		c.wg.Add(1)
		go c.pump()
	}
	return c
}

// bytesTime is how long n bytes take at rate bits/s.
func bytesTime(n int, rate int64) time.Duration {
	return time.Duration(float64(n) * 8 / float64(rate) * float64(time.Second))
}

// Inner returns the wrapped transport.
func (c *Conn) Inner() endpoint.Transport { return c.inner }

// Framing implements endpoint.Transport.Framing.
func (c *Conn) Framing() endpoint.Framing { return c.inner.Framing() }

// Receivers implements endpoint.Transport.Receivers: the inner transport's,
// not impaired.
func (c *Conn) Receivers() []endpoint.Receiver { return c.inner.Receivers() }

// LocalAddr implements endpoint.Transport.LocalAddr.
func (c *Conn) LocalAddr() netip.AddrPort { return c.inner.LocalAddr() }

// Close implements endpoint.Transport.Close: it stops the delay goroutine,
// discards datagrams still held or queued, and closes the inner transport.
func (c *Conn) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	close(c.done)
	c.mu.Unlock()
	c.wg.Wait()
	c.mu.Lock()
	for _, h := range c.held {
		putBuf(h.b)
	}
	for _, q := range c.queue {
		putBuf(q.b)
	}
	c.held, c.queue = nil, nil
	c.mu.Unlock()
	return c.inner.Close()
}

// Stats returns a snapshot of the counters.
func (c *Conn) Stats() Stats {
	s := &c.stats
	return Stats{
		Datagrams:   s.datagrams.Load(),
		Sent:        s.sent.Load(),
		Lost:        s.lost.Load(),
		Duplicated:  s.duplicated.Load(),
		Corrupted:   s.corrupted.Load(),
		Reordered:   s.reordered.Load(),
		Delayed:     s.delayed.Load(),
		RateDropped: s.rateDropped.Load(),
		SendErrors:  s.sendErrors.Load(),
	}
}

// WriteBatch implements endpoint.Transport.WriteBatch. The datagrams are
// copied; msgs may be reused when it returns. It reports every message as
// sent (lost ones too, as a lossy wire would) unless the Conn or the inner
// transport is closed; other errors of the inner transport are counted in
// Stats.SendErrors.
func (c *Conn) WriteBatch(msgs []endpoint.Message) (int, error) {
	var now []pkt
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return 0, endpoint.ErrClosed
	}
	t := time.Now()
	for i := range msgs {
		m := &msgs[i]
		if m.GSOSize <= 0 {
			now = c.impair(now, m, m.Buffers, t)
			continue
		}
		// A GSO super-datagram (not asked for, since Conn is no
		// endpoint.Offloader, but allowed): impair each datagram.
		all := getBuf()
		for _, seg := range m.Buffers {
			*all = append(*all, seg...)
		}
		for off := 0; off < len(*all); off += m.GSOSize {
			piece := [][]byte{(*all)[off:min(off+m.GSOSize, len(*all))]}
			now = c.impair(now, m, piece, t)
		}
		putBuf(all)
	}
	c.sendMu.Lock()
	c.mu.Unlock()
	err := c.send(now)
	c.sendMu.Unlock()
	if errors.Is(err, endpoint.ErrClosed) {
		return 0, err
	}
	return len(msgs), nil
}

// impair runs one datagram, segs, with m's address and outer fields,
// through the stages before the rate limit, and appends what is to be sent
// at once to now.
// +checklocks:c.mu
func (c *Conn) impair(now []pkt, m *endpoint.Message, segs [][]byte, t time.Time) []pkt {
	c.stats.datagrams.Add(1)
	if c.opt.Loss > 0 && c.rng.Float64() < c.opt.Loss {
		c.stats.lost.Add(1)
		return now
	}
	copies := 1
	if c.opt.Duplicate > 0 && c.rng.Float64() < c.opt.Duplicate {
		c.stats.duplicated.Add(1)
		copies = 2
	}
	for range copies {
		b := getBuf()
		for _, seg := range segs {
			*b = append(*b, seg...)
		}
		p := pkt{b: b, addr: m.Addr, tos: m.TOS, ttl: m.TTL}
		if c.opt.Corrupt > 0 && len(*b) > 0 && c.rng.Float64() < c.opt.Corrupt {
			bit := c.rng.IntN(len(*b) * 8)
			(*b)[bit/8] ^= 1 << (bit % 8)
			c.stats.corrupted.Add(1)
		}
		if c.opt.Reorder > 0 && len(c.held) < maxHeld && c.rng.Float64() < c.opt.Reorder {
			c.held = append(c.held, heldPkt{pkt: p, left: c.holdGap, deadline: t.Add(c.holdTO)})
			c.stats.reordered.Add(1)
			c.kick()
			continue
		}
		now = c.emit(now, p, t)
		now = c.overtake(now, t)
	}
	return now
}

// overtake counts one datagram past each held one and emits those that
// have been overtaken enough.
// +checklocks:c.mu
func (c *Conn) overtake(now []pkt, t time.Time) []pkt {
	if len(c.held) == 0 {
		return now
	}
	keep := c.held[:0]
	var due []pkt
	for _, h := range c.held {
		if h.left--; h.left <= 0 {
			due = append(due, h.pkt)
		} else {
			keep = append(keep, h)
		}
	}
	clear(c.held[len(keep):])
	c.held = keep
	for _, p := range due {
		now = c.emit(now, p, t)
	}
	return now
}

// emit passes p to the rate limit and delay stages, or to now if there are
// none.
// +checklocks:c.mu
func (c *Conn) emit(now []pkt, p pkt, t time.Time) []pkt {
	if !c.timed {
		return append(now, p)
	}
	at := t
	if c.opt.Rate > 0 {
		// GCRA, the virtual-clock form of a token bucket: tat is when
		// the bucket would be full again; a datagram may leave once
		// tat is within burst of now.
		if c.tat.Before(t) {
			c.tat = t
		}
		leave := c.tat.Add(-c.burst)
		if leave.Before(t) {
			leave = t
		}
		if leave.Sub(t) > c.qlimit {
			c.stats.rateDropped.Add(1)
			putBuf(p.b)
			return now
		}
		c.tat = c.tat.Add(bytesTime(len(*p.b), c.opt.Rate))
		at = leave
	}
	d := c.opt.Delay
	if j := c.opt.Jitter; j > 0 {
		d += time.Duration(c.rng.Int64N(int64(2*j)+1)) - j
		d = max(d, 0)
	}
	at = at.Add(d)
	c.seq++
	heap.Push(&c.queue, timedPkt{pkt: p, at: at, seq: c.seq})
	c.kick()
	return now
}

// kick wakes the pump to look at its deadlines again.
func (c *Conn) kick() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// send hands ps to the inner transport and recycles their buffers.
func (c *Conn) send(ps []pkt) error {
	if len(ps) == 0 {
		return nil
	}
	var arr [64]endpoint.Message
	var segs [64][1][]byte
	var err error
	for len(ps) > 0 {
		n := min(len(ps), len(arr))
		msgs := arr[:n]
		for i := range n {
			segs[i][0] = *ps[i].b
			msgs[i] = endpoint.Message{Buffers: segs[i][:], Addr: ps[i].addr, TOS: ps[i].tos, TTL: ps[i].ttl}
		}
		for off := 0; off < n; {
			k, e := c.inner.WriteBatch(msgs[off:])
			c.stats.sent.Add(uint64(k))
			off += k
			if e == nil && off == n {
				break
			}
			if errors.Is(e, endpoint.ErrClosed) {
				err = e
				break
			}
			if off < n { // msgs[off] failed; skip it as the endpoint does
				c.stats.sendErrors.Add(1)
				off++
			}
		}
		for i := range n {
			putBuf(ps[i].b)
			segs[i][0] = nil
		}
		ps = ps[n:]
		if err != nil {
			for _, p := range ps {
				putBuf(p.b)
			}
			return err
		}
	}
	return nil
}

// pump sends queued datagrams when they are due and releases held ones
// whose timeout passed.
func (c *Conn) pump() {
	defer c.wg.Done()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var due []pkt
	for {
		c.mu.Lock()
		t := time.Now()
		if len(c.held) > 0 {
			keep := c.held[:0]
			var expired []pkt
			for _, h := range c.held {
				if !h.deadline.After(t) {
					expired = append(expired, h.pkt)
				} else {
					keep = append(keep, h)
				}
			}
			clear(c.held[len(keep):])
			c.held = keep
			for _, p := range expired {
				due = c.emit(due, p, t)
			}
		}
		n := 0
		for c.queue.Len() > 0 && !c.queue[0].at.After(t) {
			due = append(due, heap.Pop(&c.queue).(timedPkt).pkt)
			n++
		}
		var next time.Time
		if c.queue.Len() > 0 {
			next = c.queue[0].at
		}
		for _, h := range c.held {
			if next.IsZero() || h.deadline.Before(next) {
				next = h.deadline
			}
		}
		c.sendMu.Lock()
		c.mu.Unlock()
		c.stats.delayed.Add(uint64(n))
		if len(due) > 0 {
			c.send(due)
			clear(due)
			due = due[:0]
		}
		c.sendMu.Unlock()
		wait := time.Hour
		if !next.IsZero() {
			wait = max(time.Until(next), 0)
		}
		timer.Reset(wait)
		select {
		case <-c.done:
			return
		case <-c.wake:
		case <-timer.C:
		}
	}
}
