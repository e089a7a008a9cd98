// Package forward implements port forwards between two service.Networks:
// TCP (one outbound connection per accepted connection) and UDP (one
// outbound socket per client address).
//
// A local forward listens on the host and dials into the tunnel; a reverse
// forward listens in the tunnel and dials on the host. Both are the same
// code with the From and To networks swapped:
//
//	local := &forward.TCP{Name: "db", From: service.Host{}, Listen: "127.0.0.1:5432",
//		To: st, Target: "10.0.0.2:5432"}
//	reverse := &forward.TCP{Name: "web", From: st, Listen: "10.0.0.1:80",
//		To: service.Host{}, Target: "127.0.0.1:8080"}
//
// # Usage
//
// Fill in the exported fields, call Start (which binds and returns bind
// errors at once), read Stats whenever you like, and end with Close, or
// Shutdown to let active connections drain first. The exported fields must
// not change after Start. A forward cannot be restarted after Close.
//
// Addresses given as IP literals are narrowed to "tcp4"/"tcp6" or
// "udp4"/"udp6" (service.NetworkFor), because the tunnel stack has no
// dual-stack wildcard socket. A Target name is resolved by the To network:
// the tunnel stack looks it up through its Config.DNS servers (and refuses
// it without them).
package forward

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ipipstack/ipipstack/service"
)

// Defaults for the zero values of the option fields.
const (
	DefaultMaxConns    = 1024
	DefaultMaxSessions = 1024
	DefaultDialTimeout = 10 * time.Second
	DefaultIdleTimeout = 60 * time.Second
)

// ErrClosed is returned by Start on a forward that was already started or
// closed.
var ErrClosed = errors.New("forward: already started or closed")

// TCP forwards TCP connections accepted on From at Listen to Target on To.
type TCP struct {
	// Name identifies the forward in errors and logs.
	Name string
	// From is where the forward listens. Nil means service.Host{}.
	From service.Network
	// Listen is the "host:port" address to listen on in From. Port 0 picks
	// a free port; see Addr.
	Listen string
	// To is where the forward dials. Nil means service.Host{}.
	To service.Network
	// Target is the "host:port" address dialed in To for every connection.
	Target string
	// MaxConns caps concurrent connections; a connection over the cap is
	// accepted and closed at once and counted in Stats.Rejected. Zero means
	// DefaultMaxConns; negative means no limit.
	MaxConns int
	// DialTimeout bounds each dial of Target. Zero means DefaultDialTimeout.
	DialTimeout time.Duration
	// IdleTimeout closes a connection on which nothing was read in either
	// direction for this long. Zero means never.
	IdleTimeout time.Duration
	// Logger receives connection errors at Debug, and dial failures and
	// accept errors at Warn (each at most one every 10 s, with the number
	// not logged; see service.WarnLimiter and service.AcceptErrors). Nil
	// discards them.
	Logger *slog.Logger

	dialWarn service.WarnLimiter

	accepted, rejected, dialFailures, idleClosed atomic.Uint64
	active                                       atomic.Int64
	bytesToTarget, bytesFromTarget               atomic.Int64
	acceptErrs                                   service.AcceptErrors

	// ctx is cancelled by a forced close; it parents every dial.
	ctx    context.Context
	cancel context.CancelFunc
	log    *slog.Logger
	wg     sync.WaitGroup  // the accept loop and every connection goroutine
	connWG sync.WaitGroup  // connection goroutines only, for Shutdown
	conns  service.ConnSet // closed by forceClose

	mu sync.Mutex
	// The fields below are guarded by mu.
	ln      net.Listener
	started bool
	closing bool
}

// TCPStats are a TCP forward's counters since Start.
type TCPStats struct {
	Accepted        uint64 // connections accepted and served (Rejected not included)
	Active          int64  // connections open now
	Rejected        uint64 // connections closed at once because MaxConns was reached
	DialFailures    uint64 // dials of Target that failed
	BytesToTarget   int64  // bytes copied from accepted connections to Target
	BytesFromTarget int64  // bytes copied from Target back to accepted connections
	IdleClosed      uint64 // connections closed after IdleTimeout without traffic
	// AcceptErrors counts failed accepts (out of file descriptors, most
	// likely); the forward retries them with backoff.
	AcceptErrors uint64
}

// Start binds Listen on From and serves in background goroutines. A bind
// error is returned at once, wrapped as `forward "name": listen tcp
// 127.0.0.1:8080: ...`. ctx only bounds Start itself (Network.Listen takes
// no context) and passes its values on to dials; cancelling it later does
// not stop the forward: call Close or Shutdown.
func (f *TCP) Start(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("forward %q: %w", f.Name, err)
	}
	f.mu.Lock()
	if f.started {
		f.mu.Unlock()
		return fmt.Errorf("forward %q: %w", f.Name, ErrClosed)
	}
	f.started = true
	f.mu.Unlock()

	from := orHost(f.From)
	network := service.NetworkFor("tcp", f.Listen)
	ln, err := from.Listen(network, f.Listen)
	if err != nil {
		return listenError(f.Name, "tcp", f.Listen, err)
	}
	f.mu.Lock()
	if f.closing { // Close ran while we were binding.
		f.mu.Unlock()
		ln.Close()
		return fmt.Errorf("forward %q: %w", f.Name, ErrClosed)
	}
	f.log = logger(f.Logger).With("forward", f.Name, "proto", "tcp")
	f.ctx, f.cancel = context.WithCancel(context.WithoutCancel(ctx))
	f.ln = ln
	f.mu.Unlock()

	f.wg.Add(1)
	go f.acceptLoop(ln)
	return nil
}

// Addr returns the address the forward listens on, or nil before Start.
func (f *TCP) Addr() net.Addr {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ln == nil {
		return nil
	}
	return f.ln.Addr()
}

// Stats returns a snapshot of the counters. It is safe to call at any time.
func (f *TCP) Stats() TCPStats {
	return TCPStats{
		Accepted:        f.accepted.Load(),
		Active:          f.active.Load(),
		Rejected:        f.rejected.Load(),
		DialFailures:    f.dialFailures.Load(),
		BytesToTarget:   f.bytesToTarget.Load(),
		BytesFromTarget: f.bytesFromTarget.Load(),
		IdleClosed:      f.idleClosed.Load(),
		AcceptErrors:    f.acceptErrs.Count(),
	}
}

// Close stops accepting, closes every active connection and waits for all
// of the forward's goroutines to return. It is idempotent.
func (f *TCP) Close() error {
	err := f.stopAccepting()
	f.forceClose()
	f.wg.Wait()
	return err
}

// Shutdown stops accepting and waits for active connections to finish on
// their own until ctx is done, then closes them as Close does. It returns
// ctx's error if connections had to be cut.
func (f *TCP) Shutdown(ctx context.Context) error {
	err := f.stopAccepting()
	cerr := service.Drain(ctx, &f.connWG, func() {
		f.forceClose()
		f.wg.Wait()
	})
	if cerr != nil {
		return fmt.Errorf("forward %q: shutdown: %w", f.Name, cerr)
	}
	return err
}

// stopAccepting marks the forward closing and closes the listener.
func (f *TCP) stopAccepting() error {
	f.mu.Lock()
	f.started = true // a never-started forward can no longer start
	if f.closing {
		f.mu.Unlock()
		return nil
	}
	f.closing = true
	ln := f.ln
	f.mu.Unlock()
	if ln == nil {
		return nil
	}
	if err := ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("forward %q: %w", f.Name, err)
	}
	return nil
}

// forceClose cancels dials and closes every tracked connection.
func (f *TCP) forceClose() {
	f.mu.Lock()
	if f.cancel != nil {
		f.cancel()
	}
	f.mu.Unlock()
	f.conns.CloseAll()
}

func (f *TCP) acceptLoop(ln net.Listener) {
	defer f.wg.Done()
	maxConns := f.MaxConns
	if maxConns == 0 {
		maxConns = DefaultMaxConns
	}
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			f.mu.Lock()
			closing := f.closing
			f.mu.Unlock()
			if closing || errors.Is(err, net.ErrClosed) {
				return
			}
			backoff = f.acceptErrs.Failed(f.log, err, backoff)
			select {
			case <-time.After(backoff):
			case <-f.ctx.Done():
				return
			}
			continue
		}
		backoff = 0
		if maxConns > 0 && f.active.Load() >= int64(maxConns) {
			f.rejected.Add(1)
			f.log.Debug("connection limit reached", "client", c.RemoteAddr(), "max", maxConns)
			c.Close()
			continue
		}
		f.accepted.Add(1)
		f.active.Add(1)
		f.wg.Add(1)
		f.connWG.Add(1)
		go f.serve(c)
	}
}

func (f *TCP) serve(c net.Conn) {
	defer f.wg.Done()
	defer f.connWG.Done()
	defer f.active.Add(-1)
	if !f.conns.Track(c) {
		return
	}
	defer f.conns.Untrack(c)

	timeout := f.DialTimeout
	if timeout <= 0 {
		timeout = DefaultDialTimeout
	}
	ctx, cancel := context.WithTimeout(f.ctx, timeout)
	up, err := orHost(f.To).DialContext(ctx, service.NetworkFor("tcp", f.Target), f.Target)
	cancel()
	if err != nil {
		f.dialFailures.Add(1)
		f.dialWarn.Warn(f.log, "dial failed; closing the client's connection", "target", f.Target,
			"reason", service.DialFailureReason(err), "dial_timeout", timeout, "client", c.RemoteAddr(),
			"err", err, "dial_failures_total", f.dialFailures.Load())
		c.Close()
		return
	}
	if !f.conns.Track(up) {
		c.Close()
		return
	}
	defer f.conns.Untrack(up)
	if f.IdleTimeout > 0 {
		var last atomic.Int64
		last.Store(time.Now().UnixNano())
		done := make(chan struct{})
		defer close(done)
		go f.watchIdle(&last, done, c, up)
		c, up = activityConn{c, &last}, activityConn{up, &last}
	}
	err = service.RelayCount(c, up, &f.bytesToTarget, &f.bytesFromTarget)
	if err != nil {
		f.log.Debug("relay ended", "client", c.RemoteAddr(), "err", err)
	}
}

// watchIdle closes a and b once nothing was read from either for
// IdleTimeout, and returns when done is closed.
func (f *TCP) watchIdle(last *atomic.Int64, done <-chan struct{}, a, b net.Conn) {
	tick := time.NewTicker(max(f.IdleTimeout/4, time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-done:
			return
		case now := <-tick.C:
			if now.Sub(time.Unix(0, last.Load())) >= f.IdleTimeout {
				f.idleClosed.Add(1)
				f.log.Debug("connection idle, closing", "client", a.RemoteAddr(), "idle_timeout", f.IdleTimeout)
				a.Close()
				b.Close()
				return
			}
		}
	}
}

// activityConn records when it last read anything.
type activityConn struct {
	net.Conn
	last *atomic.Int64
}

func (a activityConn) Read(p []byte) (int, error) {
	n, err := a.Conn.Read(p)
	if n > 0 {
		a.last.Store(time.Now().UnixNano())
	}
	return n, err
}

// CloseWrite passes a half-close on, so that Relay sees the same
// capabilities as on the conn inside.
func (a activityConn) CloseWrite() error {
	if cw, ok := a.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return a.Conn.Close()
}

func orHost(n service.Network) service.Network {
	if n == nil {
		return service.Host{}
	}
	return n
}

func logger(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}

// listenError wraps a Listen error as `forward "name": listen tcp addr: ...`.
// Host errors are *net.OpError and say "listen tcp4 addr" for the narrowed
// network; the copy wrapped here says plain proto ("tcp", "udp") as the user
// wrote no family. Other Networks' errors get the prefix added.
func listenError(name, proto, addr string, err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "listen" {
		cp := *op
		cp.Net = proto
		return fmt.Errorf("forward %q: %w", name, &cp)
	}
	return fmt.Errorf("forward %q: listen %s %s: %w", name, proto, addr, err)
}

// nextBackoff doubles d from 5 ms up to 1 s, as net/http does for
// temporary accept errors.
func nextBackoff(d time.Duration) time.Duration {
	if d == 0 {
		return 5 * time.Millisecond
	}
	return min(2*d, time.Second)
}
