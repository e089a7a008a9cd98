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
	w := &WarnLimiter{Interval: 10 * time.Second, Now: func() time.Time { return now }}
	for i := range 100 {
		w.Warn(log, "dial failed", "n", i)
	}
	now = now.Add(10 * time.Second)
	w.Warn(log, "dial failed", "n", 100)
	want := "level=WARN msg=\"dial failed\" n=0\n" +
		"level=WARN msg=\"dial failed\" n=100 not_logged=99\n"
	if got := buf.String(); got != want {
		t.Errorf("log =\n%s\nwant\n%s", got, want)
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
