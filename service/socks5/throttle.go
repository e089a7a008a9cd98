package socks5

import (
	"net/netip"
	"sync"
	"time"
)

// Defaults of the authentication throttle; see Server.MaxAuthFailures and
// Server.AuthBackoff.
const (
	DefaultMaxAuthFailures = 5
	DefaultAuthBackoff     = 10 * time.Second

	// maxBackoffDoublings caps a lockout at AuthBackoff << 6 (64×: about
	// 10 minutes by default), so that a user sharing an address with a
	// guesser is never locked out for long.
	maxBackoffDoublings = 6
	// maxThrottled bounds the throttle's memory under address churn: 4096
	// entries of about 80 bytes.
	maxThrottled = 4096
)

// authThrottle limits password guessing per client: a token bucket of
// burst failures per client, one forgiven every refill; a failure that
// empties the bucket locks the client out for a backoff that doubles with
// each lockout (up to maxBackoffDoublings) and refills the bucket. A
// client is an IPv4 address or an IPv6 /64, the smallest block a host
// usually gets (RFC 7421), so that a host cannot dodge the throttle by
// hopping through its own addresses.
//
// Memory is bounded: an entry expires once its client has had no failure
// for the longest lockout, and when the table is full an arbitrary entry
// makes room (a guesser controlling that many /64s gains burst more guesses
// per evicted entry, no more).
type authThrottle struct {
	burst   int
	refill  time.Duration
	backoff time.Duration

	mu sync.Mutex
	// +checklocks:mu
	clients map[netip.Prefix]*throttleEntry
	// +checklocks:mu
	lastSweep time.Time
}

type throttleEntry struct {
	failures int           // in the bucket, as of updated
	updated  time.Time     // last failure, or last refill accounted for
	until    time.Time     // locked out before this
	next     time.Duration // length of the next lockout
}

func newAuthThrottle(burst int, backoff time.Duration) *authThrottle {
	return &authThrottle{burst: burst, refill: backoff, backoff: backoff, clients: make(map[netip.Prefix]*throttleEntry)}
}

// throttleKey is the client block of ip: the address for IPv4, its /64 for
// IPv6.
func throttleKey(ip netip.Addr) netip.Prefix {
	ip = ip.Unmap()
	if ip.Is4() {
		return netip.PrefixFrom(ip, 32)
	}
	p, _ := ip.Prefix(64)
	return p
}

// lockedOut reports whether ip may not try to authenticate at now, and if
// so for how much longer.
func (t *authThrottle) lockedOut(ip netip.Addr, now time.Time) (bool, time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.clients[throttleKey(ip)]
	if e == nil || !now.Before(e.until) {
		return false, 0
	}
	return true, e.until.Sub(now)
}

// fail records a failed authentication of ip at now. It returns the
// lockout this failure started (0 if none) and the failures in the bucket.
func (t *authThrottle) fail(ip netip.Addr, now time.Time) (lockout time.Duration, failures int) {
	key := throttleKey(ip)
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.clients[key]
	if e == nil {
		t.makeRoom(now)
		e = &throttleEntry{updated: now, next: t.backoff}
		t.clients[key] = e
	}
	if now.After(e.until) && now.Sub(e.updated) > t.backoff<<maxBackoffDoublings {
		// Quiet for longer than the longest lockout: start over.
		*e = throttleEntry{updated: now, next: t.backoff}
	}
	// Forgive one failure per refill since the last update.
	if t.refill > 0 {
		if n := int(now.Sub(e.updated) / t.refill); n > 0 {
			e.failures = max(0, e.failures-n)
			e.updated = e.updated.Add(time.Duration(n) * t.refill)
		}
	}
	if e.failures == 0 {
		e.updated = now
	}
	e.failures++
	if e.failures < t.burst {
		return 0, e.failures
	}
	failures = e.failures
	lockout = e.next
	e.until = now.Add(lockout)
	e.failures, e.updated = 0, e.until
	if e.next < t.backoff<<maxBackoffDoublings {
		e.next *= 2
	}
	return lockout, failures
}

// succeed forgets ip's failures: the right password ends the suspicion.
func (t *authThrottle) succeed(ip netip.Addr) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.clients, throttleKey(ip))
}

// makeRoom keeps the table under maxThrottled entries: it drops expired
// entries, at most once per refill so that churn does not make every
// failure a full scan, and otherwise one arbitrary entry. t.mu must be
// held.
//
// +checklocks:t.mu
func (t *authThrottle) makeRoom(now time.Time) {
	if len(t.clients) < maxThrottled {
		return
	}
	expiry := t.backoff << maxBackoffDoublings
	if now.Sub(t.lastSweep) >= t.refill {
		t.lastSweep = now
		for k, e := range t.clients {
			if now.After(e.until) && now.Sub(e.updated) > expiry {
				delete(t.clients, k)
			}
		}
	}
	for k := range t.clients {
		if len(t.clients) < maxThrottled {
			break
		}
		delete(t.clients, k)
	}
}

// len returns the number of clients the throttle remembers.
func (t *authThrottle) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.clients)
}
