package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"
)

// Errors of Lifecycle.Attach, which services turn into their own
// (forward.ErrClosed, socks5.ErrServerClosed, ...).
var (
	// ErrClosed: Close or Shutdown has begun; the service cannot start.
	ErrClosed = errors.New("service closed")
	// ErrServing: the service already has a listener.
	ErrServing = errors.New("server already serving")
)

// Lifecycle is the life the TCP services (forward.TCP, socks5.Server,
// httpproxy.Server) share, from their listener to their last connection:
//
//   - Claim (optional) and Attach take the one listener a service has;
//   - Serve runs the accept loop on it, retrying failed accepts with
//     backoff (AcceptErrors) and running a handler goroutine per admitted
//     connection, or the service runs a server of its own (http.Server)
//     and counts its handlers with Enter and Leave;
//   - handlers register what they hold in Conns and dial with Context;
//   - Close stops accepting, cuts everything and waits; Shutdown first
//     lets the handlers of Serve finish until its ctx is done.
//
// Services that compose Close and Shutdown with more steps (httpproxy's
// http.Server) use StopAccepting, ForceClose and Wait directly.
//
// Its zero value is ready. A Lifecycle cannot be restarted after Close or
// Shutdown; every method is safe for concurrent use.
type Lifecycle struct {
	// Conns holds the connections of the service's handlers: a forced
	// close closes them.
	Conns ConnSet
	// AcceptErrors counts the failed accepts of Serve; a service that
	// wraps its listener in RetryListener passes it there.
	AcceptErrors AcceptErrors

	// wg counts Serve's loop (from Attach), its handlers and the
	// goroutines between Enter and Leave: Close waits for it.
	wg sync.WaitGroup
	// handlers counts Serve's handlers only: Shutdown waits for it.
	handlers sync.WaitGroup

	mu sync.Mutex
	// ctx is cancelled by a forced close; it parents the service's dials.
	// +checklocks:mu
	ctx context.Context
	// +checklocks:mu
	cancel context.CancelFunc
	// +checklocks:mu
	ln net.Listener
	// claimed: Claim or Attach ran.
	// +checklocks:mu
	claimed bool
	// closing: no more accepts (StopAccepting ran).
	// +checklocks:mu
	closing bool
	// stopped: no more handlers (ForceClose ran).
	// +checklocks:mu
	stopped bool
}

// initLocked makes ctx, a child of parent without its cancellation (only
// its values), if there is none yet.
//
// +checklocks:l.mu
func (l *Lifecycle) initLocked(parent context.Context) {
	if l.ctx == nil {
		l.ctx, l.cancel = context.WithCancel(context.WithoutCancel(parent))
	}
}

// Claim reserves the lifecycle for one start before the service binds,
// so that a second Start fails without binding: it returns ErrClosed after
// StopAccepting, ErrServing after another Claim or Attach. ctx's values,
// but not its cancellation, reach the handlers through Context. A service
// whose socket is not a net.Listener (forward.UDP) uses Claim without
// Attach, and Enter and Leave for its goroutines.
func (l *Lifecycle) Claim(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.closing:
		return ErrClosed
	case l.claimed:
		return ErrServing
	}
	l.claimed = true
	l.initLocked(ctx)
	return nil
}

// Attach gives the service its listener ln and takes ownership of it; the
// caller must then call Serve, or run its own server on ln and call Leave
// when that returns (Attach counts it as entered). ctx's values, but not
// its cancellation, reach the handlers through Context. If the service is
// closing (ErrClosed) or already has a listener (ErrServing), Attach
// closes ln and returns the error.
func (l *Lifecycle) Attach(ctx context.Context, ln net.Listener) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.closing:
		ln.Close()
		return ErrClosed
	case l.ln != nil:
		ln.Close()
		return ErrServing
	}
	l.claimed = true
	l.initLocked(ctx)
	l.ln = ln
	l.wg.Add(1)
	return nil
}

// Addr returns the listener's address, or nil before Attach.
func (l *Lifecycle) Addr() net.Addr {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ln == nil {
		return nil
	}
	return l.ln.Addr()
}

// Context returns the context of the service's dials, cancelled by a
// forced close (Close, or Shutdown once its ctx is done).
func (l *Lifecycle) Context() context.Context {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.initLocked(context.Background())
	return l.ctx
}

// Closing reports whether StopAccepting has run.
func (l *Lifecycle) Closing() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.closing
}

// Serve accepts on the listener given to Attach until StopAccepting, and
// then returns nil. Each connection goes to admit, which either takes it
// (true) or closes it itself (false, over a limit); an admitted one is
// served by handle in a goroutine of its own, which Shutdown waits for.
// A connection accepted after StopAccepting is closed unserved.
// Failed accepts are counted in AcceptErrors and retried with backoff
// (logged on log, rate limited). If the listener is closed by someone
// else, Serve returns its error.
func (l *Lifecycle) Serve(log *slog.Logger, admit func(net.Conn) bool, handle func(net.Conn)) error {
	defer l.wg.Done()
	l.mu.Lock()
	ln := l.ln
	l.mu.Unlock()
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if l.Closing() {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			backoff = l.AcceptErrors.Failed(log, err, backoff)
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-l.Context().Done():
				t.Stop()
				return nil
			}
			continue
		}
		backoff = 0
		if !l.countHandler() { // StopAccepting ran since Accept returned
			c.Close()
			return nil
		}
		if !admit(c) {
			l.handlers.Done()
			l.wg.Done()
			continue
		}
		go func() {
			defer l.wg.Done()
			defer l.handlers.Done()
			handle(c)
		}()
	}
}

// countHandler counts a handler in wg and handlers, unless StopAccepting
// has run. Counting under mu orders every Add before Shutdown's wait on
// handlers, as sync.WaitGroup requires of an Add from zero.
func (l *Lifecycle) countHandler() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closing {
		return false
	}
	l.wg.Add(1)
	l.handlers.Add(1)
	return true
}

// Enter counts a goroutine of the service that Serve did not start (an
// http.Server handler) in what Close waits for, and returns true; the
// goroutine calls Leave when it ends. Once a forced close has begun it
// returns false, and the goroutine must return without Leave.
func (l *Lifecycle) Enter() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stopped {
		return false
	}
	l.wg.Add(1)
	return true
}

// Leave ends what Enter (or Attach, for a server of the service's own)
// began.
func (l *Lifecycle) Leave() { l.wg.Done() }

// Close stops accepting, cuts every connection (ForceClose) and waits for
// all of the service's goroutines. It is idempotent; its error is the
// listener's Close error.
func (l *Lifecycle) Close() error {
	err := l.StopAccepting()
	l.ForceClose()
	l.Wait()
	return err
}

// Shutdown stops accepting and waits for Serve's handlers to finish on
// their own until ctx is done, then closes what is left as Close does. It
// returns "shutdown: " and ctx's error if connections had to be cut, and
// otherwise the listener's Close error.
func (l *Lifecycle) Shutdown(ctx context.Context) error {
	err := l.StopAccepting()
	if cerr := Drain(ctx, &l.handlers, l.cut); cerr != nil {
		return fmt.Errorf("shutdown: %w", cerr)
	}
	return err
}

// cut is the end of a Close: ForceClose, then Wait.
func (l *Lifecycle) cut() {
	l.ForceClose()
	l.Wait()
}

// StopAccepting marks the service closing, so that it can no longer start
// and Serve returns, and closes the listener. It returns the listener's
// Close error, other than net.ErrClosed, the first time, and nil after.
func (l *Lifecycle) StopAccepting() error {
	l.mu.Lock()
	if l.closing {
		l.mu.Unlock()
		return nil
	}
	l.closing = true
	ln := l.ln
	l.mu.Unlock()
	if ln == nil {
		return nil
	}
	if err := ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		return err
	}
	return nil
}

// ForceClose cancels Context, makes Enter refuse, and closes every
// connection in Conns.
func (l *Lifecycle) ForceClose() {
	l.mu.Lock()
	l.stopped = true
	l.initLocked(context.Background())
	l.cancel()
	l.mu.Unlock()
	l.Conns.CloseAll()
}

// Wait waits for Serve, its handlers and every goroutine between Enter
// and Leave.
func (l *Lifecycle) Wait() { l.wg.Wait() }
