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
// so that a target that is down for an hour costs a few hundred lines, not
// one per connection. A line carries "not_logged", the number of events
// swallowed since the previous line; and when a burst ends, the last event
// it swallowed is logged once the Interval is over, with that count, so
// that no failure goes unmentioned. Its zero value is ready; it is safe for
// concurrent use.
type WarnLimiter struct {
	// Interval is the least time between two warnings; 0 means
	// DefaultWarnInterval. Set it before the first Warn.
	Interval time.Duration
	// Now and AfterFunc replace time.Now and time.AfterFunc when not nil
	// (for tests).
	Now       func() time.Time
	AfterFunc func(d time.Duration, f func())

	mu sync.Mutex
	// The fields below are guarded by mu.
	last       time.Time // of the last line
	suppressed uint64    // events swallowed since
	pending    bool      // a summary is scheduled
	// The last swallowed event, for the summary.
	log  *slog.Logger
	msg  string
	args []any
}

func (w *WarnLimiter) now() time.Time {
	if w.Now != nil {
		return w.Now()
	}
	return time.Now()
}

func (w *WarnLimiter) interval() time.Duration {
	if w.Interval > 0 {
		return w.Interval
	}
	return DefaultWarnInterval
}

// Warn logs msg and args on log at warn level unless the previous warning
// was less than Interval ago, in which case it keeps the event for the
// summary at the end of the Interval.
func (w *WarnLimiter) Warn(log *slog.Logger, msg string, args ...any) {
	t := w.now()
	w.mu.Lock()
	if !w.last.IsZero() && t.Sub(w.last) < w.interval() {
		w.suppressed++
		w.log, w.msg, w.args = log, msg, args
		if !w.pending {
			w.pending = true
			after := time.AfterFunc
			if w.AfterFunc != nil {
				after = func(d time.Duration, f func()) *time.Timer { w.AfterFunc(d, f); return nil }
			}
			after(w.last.Add(w.interval()).Sub(t), w.summary)
		}
		w.mu.Unlock()
		return
	}
	w.last = t
	n := w.suppressed
	w.suppressed, w.log, w.args = 0, nil, nil
	w.mu.Unlock()
	if n > 0 {
		args = append(args, "not_logged", n)
	}
	log.Warn(msg, args...)
}

// summary logs the last swallowed event, if any is left, with the number
// of the others.
func (w *WarnLimiter) summary() {
	w.mu.Lock()
	w.pending = false
	n := w.suppressed
	if n == 0 {
		w.mu.Unlock()
		return
	}
	log, msg, args := w.log, w.msg, w.args
	w.suppressed, w.log, w.args = 0, nil, nil
	w.last = w.now()
	w.mu.Unlock()
	if n > 1 {
		args = append(args[:len(args):len(args)], "not_logged", n-1)
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
