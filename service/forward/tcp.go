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

	// life holds the listener, the connections and the goroutines; its
	// Context parents every dial.
	life service.Lifecycle
	log  *slog.Logger // set by Start before the accept loop starts
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
	if err := claim(ctx, f.Name, &f.life); err != nil {
		return err
	}
	ln, err := service.OrHost(f.From).Listen(service.NetworkFor("tcp", f.Listen), f.Listen)
	if err != nil {
		return listenError(f.Name, "tcp", f.Listen, err)
	}
	if err := f.life.Attach(ctx, ln); err != nil { // Close ran while we were binding.
		return fmt.Errorf("forward %q: %w", f.Name, ErrClosed)
	}
	f.log = service.LoggerOrDiscard(f.Logger).With("forward", f.Name, "proto", "tcp")
	maxConns := f.MaxConns
	if maxConns == 0 {
		maxConns = DefaultMaxConns
	}
	go func() {
		if err := f.life.Serve(f.log, func(c net.Conn) bool { return f.admit(c, maxConns) }, f.serve); err != nil {
			f.log.Error("forward stopped accepting", "err", err, "hint", "the listener failed; reload or restart to listen again")
		}
	}()
	return nil
}

// Addr returns the address the forward listens on, or nil before Start.
func (f *TCP) Addr() net.Addr { return f.life.Addr() }

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
		AcceptErrors:    f.life.AcceptErrors.Count(),
	}
}

// Close stops accepting, closes every active connection and waits for all
// of the forward's goroutines to return. It is idempotent.
func (f *TCP) Close() error {
	return closeError(f.Name, f.life.Close())
}

// Shutdown stops accepting and waits for active connections to finish on
// their own until ctx is done, then closes them as Close does. It returns
// ctx's error if connections had to be cut.
func (f *TCP) Shutdown(ctx context.Context) error {
	return closeError(f.Name, f.life.Shutdown(ctx))
}

// admit takes c unless maxConns (if positive) connections are active, and
// counts it either way.
func (f *TCP) admit(c net.Conn, maxConns int) bool {
	if maxConns > 0 && f.active.Load() >= int64(maxConns) {
		f.rejected.Add(1)
		f.log.Debug("connection limit reached", "client", c.RemoteAddr(), "max", maxConns)
		c.Close()
		return false
	}
	f.accepted.Add(1)
	f.active.Add(1)
	return true
}

func (f *TCP) serve(c net.Conn) {
	defer f.active.Add(-1)
	if !f.life.Conns.Track(c) {
		return
	}
	defer f.life.Conns.Untrack(c)

	timeout := f.DialTimeout
	if timeout <= 0 {
		timeout = DefaultDialTimeout
	}
	ctx, cancel := context.WithTimeout(f.life.Context(), timeout)
	up, err := service.OrHost(f.To).DialContext(ctx, service.NetworkFor("tcp", f.Target), f.Target)
	cancel()
	if err != nil {
		f.dialFailures.Add(1)
		f.dialWarn.Warn(f.log, "dial failed; closing the client's connection", "target", f.Target,
			"reason", service.DialFailureReason(err), "dial_timeout", timeout, "client", c.RemoteAddr(),
			"err", err, "dial_failures_total", f.dialFailures.Load())
		c.Close()
		return
	}
	if !f.life.Conns.Track(up) {
		c.Close()
		return
	}
	defer f.life.Conns.Untrack(up)
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

// claim checks ctx and reserves life for the one Start of forward name: a
// second Start, or one after Close, fails with ErrClosed without binding.
func claim(ctx context.Context, name string, life *service.Lifecycle) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("forward %q: %w", name, err)
	}
	if err := life.Claim(ctx); err != nil {
		return fmt.Errorf("forward %q: %w", name, ErrClosed)
	}
	return nil
}

// closeError wraps an error of Close or Shutdown with the forward's name.
func closeError(name string, err error) error {
	if err != nil {
		return fmt.Errorf("forward %q: %w", name, err)
	}
	return nil
}

// nextBackoff doubles d from 5 ms up to 1 s, as net/http does for
// temporary accept errors.
func nextBackoff(d time.Duration) time.Duration {
	if d == 0 {
		return 5 * time.Millisecond
	}
	return min(2*d, time.Second)
}
