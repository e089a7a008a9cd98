package service

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"sync"
	"syscall"
	"time"
)

// DefaultWarnInterval is the least time between two warnings of one
// WarnLimiter whose Interval is 0.
const DefaultWarnInterval = 10 * time.Second

// WarnLimiter logs the first of a series of like events (the dial failures
// of one service, say) at warn level and then at most one every Interval,
// each with "not_logged", the number of events it swallowed since the
// previous one, so that a target that is down for an hour costs a few
// hundred lines, not one per connection. Its zero value is ready; it is
// safe for concurrent use.
type WarnLimiter struct {
	// Interval is the least time between two warnings; 0 means
	// DefaultWarnInterval. Set it before the first Warn.
	Interval time.Duration
	// Now returns the current time; nil means time.Now (for tests).
	Now func() time.Time

	once sync.Once
	l    LogLimiter[struct{}]
}

// Warn logs msg and args on log at warn level unless the previous warning
// was less than Interval ago, in which case it only counts the event.
func (w *WarnLimiter) Warn(log *slog.Logger, msg string, args ...any) {
	w.once.Do(func() {
		w.l.Interval = w.Interval
		if w.l.Interval <= 0 {
			w.l.Interval = DefaultWarnInterval
		}
	})
	now := time.Now
	if w.Now != nil {
		now = w.Now
	}
	ok, n := w.l.Allow(struct{}{}, now())
	if !ok {
		return
	}
	if n > 0 {
		args = append(args, "not_logged", n)
	}
	log.Warn(msg, args...)
}

// DialFailureReason names why a dial failed, in the words a user searches
// for: "timeout", "connection refused", "host unreachable", "network
// unreachable", "connection reset" or, for anything else, the error text.
func DialFailureReason(err error) string {
	var te interface{ Timeout() bool }
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded),
		errors.Is(err, syscall.ETIMEDOUT), errors.As(err, &te) && te.Timeout():
		return "timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.EHOSTUNREACH):
		return "host unreachable"
	case errors.Is(err, syscall.ENETUNREACH):
		return "network unreachable"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset"
	}
	return err.Error()
}
