package service

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"syscall"
	"testing"
	"time"
)

func TestWarnLimiterOneWarningThenSummary(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		},
	}))
	now := time.Unix(1000, 0)
	var scheduled []time.Duration
	var fire func()
	w := &WarnLimiter{Interval: 10 * time.Second, Now: func() time.Time { return now },
		AfterFunc: func(d time.Duration, f func()) { scheduled = append(scheduled, d); fire = f }}
	for i := range 100 {
		w.Warn(log, "dial failed", "n", i)
	}
	// The burst is over: the summary comes when the interval ends.
	now = now.Add(10 * time.Second)
	fire()
	// One more, soon after the summary: it waits for the next one, alone.
	now = now.Add(5 * time.Second)
	w.Warn(log, "dial failed", "n", 100)
	now = now.Add(5 * time.Second)
	fire()
	fire() // a late timer finds nothing to say
	// After a quiet interval, the next event is logged at once.
	now = now.Add(time.Minute)
	w.Warn(log, "dial failed", "n", 101)
	want := "level=WARN msg=\"dial failed\" n=0\n" +
		"level=WARN msg=\"dial failed\" n=99 not_logged=98\n" +
		"level=WARN msg=\"dial failed\" n=100\n" +
		"level=WARN msg=\"dial failed\" n=101\n"
	if got := buf.String(); got != want {
		t.Errorf("log =\n%s\nwant\n%s", got, want)
	}
	if want := []time.Duration{10 * time.Second, 5 * time.Second}; fmt.Sprint(scheduled) != fmt.Sprint(want) {
		t.Errorf("summaries scheduled in %v, want %v", scheduled, want)
	}
}

func TestDialFailureReason(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{&net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}, "connection refused"},
		{fmt.Errorf("x: %w", context.DeadlineExceeded), "timeout"},
		{&net.OpError{Op: "dial", Err: syscall.EHOSTUNREACH}, "host unreachable"},
		{errors.New("no route"), "no route"},
	} {
		if got := DialFailureReason(tc.err); got != tc.want {
			t.Errorf("DialFailureReason(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}
