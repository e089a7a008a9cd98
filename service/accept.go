package service

import (
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Accept retry pacing, as net/http's Server.Serve does for temporary
// accept errors.
const (
	acceptDelayMin = 5 * time.Millisecond
	acceptDelayMax = time.Second
	// acceptLogInterval is the least time between two warnings of one
	// listener: out of descriptors, Accept fails once per retry.
	acceptLogInterval = 10 * time.Second
)

// AcceptErrors counts and reports the failures of one accept loop, so that
// a listener that cannot accept (typically because the process ran out of
// file descriptors, EMFILE or ENFILE) backs off and retries instead of
// spinning or giving up, and says so without flooding the log. Its zero
// value is ready; it is safe for concurrent use.
type AcceptErrors struct {
	n atomic.Uint64

	mu sync.Mutex
	// The fields below are guarded by mu.
	lastLog    time.Time
	suppressed uint64
}

// Failed counts err and returns how long to wait before accepting again,
// given the previous wait (0 after a success): 5 ms, doubling up to 1 s.
// It logs a warning on log at most once every 10 s, with the number of
// failures since the last one.
func (a *AcceptErrors) Failed(log *slog.Logger, err error, prev time.Duration) time.Duration {
	a.n.Add(1)
	delay := min(max(2*prev, acceptDelayMin), acceptDelayMax)
	a.mu.Lock()
	now := time.Now()
	if !a.lastLog.IsZero() && now.Sub(a.lastLog) < acceptLogInterval {
		a.suppressed++
		a.mu.Unlock()
		return delay
	}
	a.lastLog = now
	suppressed := a.suppressed
	a.suppressed = 0
	a.mu.Unlock()
	args := []any{"err", err, "retry_in", delay, "failures_total", a.n.Load()}
	if suppressed > 0 {
		args = append(args, "not_logged", suppressed)
	}
	if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
		args = append(args, "hint", "the process is out of file descriptors: raise its limit (ulimit -n, systemd LimitNOFILE=) or lower max_connections; accepting resumes by itself once descriptors are free")
	}
	log.Warn("accept failed; retrying", args...)
	return delay
}

// Count returns the number of failures so far.
func (a *AcceptErrors) Count() uint64 { return a.n.Load() }

// RetryListener wraps ln so that Accept retries failed accepts itself,
// counted and paced by errs and logged on log (see AcceptErrors.Failed),
// and only returns a connection or, once the listener is closed, its
// error. It is for servers whose own accept loop gives up or does not
// count, like http.Server. Closing the returned listener closes ln and
// ends a wait between retries.
func RetryListener(ln net.Listener, errs *AcceptErrors, log *slog.Logger) net.Listener {
	return &retryListener{Listener: ln, errs: errs, log: log, done: make(chan struct{})}
}

type retryListener struct {
	net.Listener
	errs      *AcceptErrors
	log       *slog.Logger
	done      chan struct{}
	closeOnce sync.Once
}

func (l *retryListener) Accept() (net.Conn, error) {
	var delay time.Duration
	for {
		c, err := l.Listener.Accept()
		if err == nil {
			return c, nil
		}
		select {
		case <-l.done:
			return nil, err
		default:
		}
		if errors.Is(err, net.ErrClosed) {
			return nil, err
		}
		delay = l.errs.Failed(l.log, err, delay)
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-l.done:
			t.Stop()
			return nil, net.ErrClosed
		}
	}
}

func (l *retryListener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return l.Listener.Close()
}
