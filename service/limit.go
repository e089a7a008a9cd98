package service

import (
	"net/netip"
	"sync"
	"time"
)

// PerAddr counts what each client address holds (connections, sessions)
// so that one address cannot take every slot of a service's global cap.
// Its memory is bounded by what is held: an address's entry goes when its
// count returns to zero. The zero value is ready to use and safe for
// concurrent use.
type PerAddr struct {
	mu sync.Mutex
	// n is guarded by mu.
	n map[netip.Addr]int
}

// Acquire takes one slot for a, unless a already holds limit of them;
// limit ≤ 0 means no limit. It reports whether it took the slot, which the
// caller gives back with Release. a is unmapped first, so an IPv4 client
// is one client whether it arrived on an IPv4 or a dual-stack socket.
func (p *PerAddr) Acquire(a netip.Addr, limit int) bool {
	a = a.Unmap()
	p.mu.Lock()
	defer p.mu.Unlock()
	if limit > 0 && p.n[a] >= limit {
		return false
	}
	if p.n == nil {
		p.n = make(map[netip.Addr]int)
	}
	p.n[a]++
	return true
}

// Release gives back a slot taken by Acquire.
func (p *PerAddr) Release(a netip.Addr) {
	a = a.Unmap()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.n[a] <= 1 {
		delete(p.n, a)
		return
	}
	p.n[a]--
}

// Len returns the number of addresses holding a slot.
func (p *PerAddr) Len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.n)
}

// Defaults of LogLimiter's zero fields.
const (
	DefaultLogInterval = time.Minute
	DefaultLogBurst    = 10
	defaultLogKeys     = 4096
)

// LogLimiter decides which of many similar events (a refusal, a failed
// login) get a log line, so that a flood of them cannot flood the log: the
// first event of each key gets one, then at most one per key every
// Interval, and never more than Burst lines in an Interval over all keys.
// It remembers at most a few thousand keys; when full it forgets them all
// (which at worst lets one more line per key through). The zero value is
// ready to use and safe for concurrent use.
type LogLimiter[K comparable] struct {
	// Interval is the window of both limits. Zero means DefaultLogInterval.
	Interval time.Duration
	// Burst caps the lines of all keys together in an Interval. Zero means
	// DefaultLogBurst.
	Burst int

	mu sync.Mutex
	// The fields below are guarded by mu.
	last       map[K]time.Time // when each key last got a line
	window     time.Time       // start of the current window of Burst
	lines      int             // lines given in the current window
	suppressed uint64          // events without a line since the last line
}

// Allow reports whether the event of key at now gets a log line, and if it
// does, how many events went without one since the previous line (to be
// logged with it, so that nothing is lost silently).
func (l *LogLimiter[K]) Allow(key K, now time.Time) (ok bool, suppressed uint64) {
	interval := l.Interval
	if interval <= 0 {
		interval = DefaultLogInterval
	}
	burst := l.Burst
	if burst <= 0 {
		burst = DefaultLogBurst
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.window) >= interval {
		l.window, l.lines = now, 0
	}
	if t, seen := l.last[key]; (seen && now.Sub(t) < interval) || l.lines >= burst {
		l.suppressed++
		return false, 0
	}
	if l.last == nil || len(l.last) >= defaultLogKeys {
		l.last = make(map[K]time.Time)
	}
	l.last[key] = now
	l.lines++
	suppressed, l.suppressed = l.suppressed, 0
	return true, suppressed
}
