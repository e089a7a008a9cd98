package service

import (
	"net/netip"
	"testing"
	"time"
)

func TestPerAddr(t *testing.T) {
	var p PerAddr
	a := netip.MustParseAddr("192.0.2.1")
	mapped := netip.MustParseAddr("::ffff:192.0.2.1")
	b := netip.MustParseAddr("2001:db8::1")
	for i, want := range []bool{true, true, false} {
		if got := p.Acquire(a, 2); got != want {
			t.Errorf("Acquire(%v, 2) #%d = %v, want %v", a, i+1, got, want)
		}
	}
	if p.Acquire(mapped, 2) {
		t.Errorf("Acquire(%v, 2) = true: a mapped address must count as its IPv4 address", mapped)
	}
	if !p.Acquire(b, 2) || !p.Acquire(b, 0) || !p.Acquire(b, -1) {
		t.Errorf("Acquire(%v) refused under its limit or with none", b)
	}
	p.Release(mapped)
	if !p.Acquire(a, 2) {
		t.Errorf("Acquire(%v, 2) after a Release = false, want true", a)
	}
	p.Release(a)
	p.Release(a)
	for range 3 {
		p.Release(b)
	}
	if n := p.Len(); n != 0 {
		t.Errorf("Len() = %d after releasing everything, want 0", n)
	}
}

func TestLogLimiter(t *testing.T) {
	t0 := time.Unix(1e9, 0)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	l := LogLimiter[string]{Interval: time.Minute, Burst: 2}
	for _, tc := range []struct {
		key            string
		at             time.Duration
		ok             bool
		wantSuppressed uint64
	}{
		{"a", 0, true, 0},
		{"a", time.Second, false, 0},              // same key within the interval
		{"b", time.Second, true, 1},               // first of b, reports the one lost
		{"c", 2 * time.Second, false, 0},          // burst of 2 used up
		{"a", 59 * time.Second, false, 0},         // burst still used up
		{"c", time.Minute + time.Second, true, 2}, // new window; c@2s and a@59s lost
		{"a", 2 * time.Minute, true, 0},
	} {
		ok, n := l.Allow(tc.key, at(tc.at))
		if ok != tc.ok || n != tc.wantSuppressed {
			t.Errorf("Allow(%q, +%v) = %v, %d; want %v, %d", tc.key, tc.at, ok, n, tc.ok, tc.wantSuppressed)
		}
	}
}
