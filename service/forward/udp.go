package forward

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ipipstack/ipipstack/service"
)

// MaxDatagram is the largest UDP payload forwarded: the 16-bit IP length
// field's limit. Larger payloads (IPv6 jumbograms) do not occur here.
const MaxDatagram = 65535

// UDP forwards UDP datagrams received on From at Listen to Target on To.
//
// Each client address gets a session: a socket connected to Target on To
// (To.DialContext("udp", Target), which works on the tunnel stack without a
// wildcard bind), and a goroutine relaying Target's replies back to the
// client from the Listen address. A session ends after IdleTimeout without
// a datagram in either direction.
//
// Datagrams are read one at a time; a new client's first datagram waits for
// its session to be dialed, which for an IP-literal Target does not touch
// the network.
type UDP struct {
	// Name identifies the forward in errors and logs.
	Name string
	// From is where the forward listens. Nil means service.Host{}.
	From service.Network
	// Listen is the "host:port" address to listen on in From. Port 0 picks
	// a free port; see Addr.
	Listen string
	// To is where the forward sends. Nil means service.Host{}.
	To service.Network
	// Target is the "host:port" address datagrams are sent to in To.
	Target string
	// MaxSessions caps concurrent sessions; datagrams from new clients over
	// the cap are dropped and counted in Stats.Rejected. Zero means
	// DefaultMaxSessions; negative means no limit.
	MaxSessions int
	// MaxSessionsPerSource caps the concurrent sessions of one client IP
	// address (whatever its ports), so that one address flooding source
	// ports cannot take every session; datagrams that would open one more
	// are dropped and counted in Stats.RejectedPerSource. Zero means a
	// quarter of MaxSessions (at least 1), or no limit if MaxSessions has
	// none; negative means no limit. Clients on one host (all of them, for
	// a forward listening on loopback) share one address: raise it for a
	// client that uses a new port per request, like a DNS resolver.
	MaxSessionsPerSource int
	// IdleTimeout ends a session with no traffic either way for this long.
	// Zero means DefaultIdleTimeout.
	IdleTimeout time.Duration
	// DialTimeout bounds the dial that opens a session. Zero means
	// DefaultDialTimeout.
	DialTimeout time.Duration
	// Logger receives session errors at Debug, and read errors, dial
	// failures (at most one every 10 s, with the number not logged) and
	// refusals by MaxSessionsPerSource at Warn (the latter rate limited:
	// the first of each source, then once a minute). Nil discards them.
	Logger *slog.Logger

	dialWarn service.WarnLimiter

	created, expired, rejected, dialFailures, dropped atomic.Uint64
	rejectedPerSource                                 atomic.Uint64
	packetsTo, packetsFrom, bytesTo, bytesFrom        atomic.Uint64
	active                                            atomic.Int64

	perSource service.PerAddr                // sessions of each client IP
	sourceLog service.LogLimiter[netip.Addr] // of refusals by MaxSessionsPerSource

	// life is claimed by Start; its Context, cancelled by Close, parents
	// every dial, and it counts the read loop and every session goroutine
	// (Enter and Leave).
	life  service.Lifecycle
	log   *slog.Logger
	epoch time.Time // session activity is measured from here (monotonic)
	idle  time.Duration

	mu sync.Mutex
	// The fields below are guarded by mu. (No +checklocks: checklocks
	// matches annotations to fields by position and miscounts after the
	// multi-name counter fields above.)
	pc       net.PacketConn
	sessions map[string]*udpSession // by client address
}

// udpSession is one client's socket towards Target.
type udpSession struct {
	key    string
	client net.Addr
	ip     netip.Addr // client's, holding a slot of UDP.perSource if valid
	conn   net.Conn
	last   atomic.Int64 // time of the last datagram, as nanoseconds since UDP.epoch
}

// UDPStats are a UDP forward's counters since Start.
type UDPStats struct {
	Sessions          int64  // sessions open now
	SessionsCreated   uint64 // sessions opened
	SessionsExpired   uint64 // sessions ended by IdleTimeout
	Rejected          uint64 // datagrams dropped because MaxSessions was reached
	RejectedPerSource uint64 // datagrams dropped because their source address had MaxSessionsPerSource
	DialFailures      uint64 // session dials that failed (the datagram is dropped)
	Dropped           uint64 // datagrams lost to send errors either way
	PacketsToTarget   uint64 // datagrams sent to Target
	PacketsFromTarget uint64 // datagrams sent back to clients
	BytesToTarget     uint64 // payload bytes sent to Target
	BytesFromTarget   uint64 // payload bytes sent back to clients
}

// Start binds Listen on From and serves in background goroutines. A bind
// error is returned at once, wrapped as `forward "name": listen udp
// 127.0.0.1:5353: ...`. As for TCP.Start, ctx only bounds Start itself.
func (f *UDP) Start(ctx context.Context) error {
	if err := claim(ctx, f.Name, &f.life); err != nil {
		return err
	}
	pc, err := service.OrHost(f.From).ListenPacket(service.NetworkFor("udp", f.Listen), f.Listen)
	if err != nil {
		return listenError(f.Name, "udp", f.Listen, err)
	}

	f.mu.Lock()
	if !f.life.Enter() { // Close ran while we were binding.
		f.mu.Unlock()
		pc.Close()
		return fmt.Errorf("forward %q: %w", f.Name, ErrClosed)
	}
	f.log = service.LoggerOrDiscard(f.Logger).With("forward", f.Name, "proto", "udp")
	f.epoch = time.Now()
	f.idle = f.IdleTimeout
	if f.idle <= 0 {
		f.idle = DefaultIdleTimeout
	}
	f.pc = pc
	f.sessions = make(map[string]*udpSession)
	f.mu.Unlock()

	go f.readLoop(pc)
	return nil
}

// Addr returns the address the forward listens on, or nil before Start.
func (f *UDP) Addr() net.Addr {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.pc == nil {
		return nil
	}
	return f.pc.LocalAddr()
}

// Stats returns a snapshot of the counters. It is safe to call at any time.
func (f *UDP) Stats() UDPStats {
	return UDPStats{
		Sessions:          f.active.Load(),
		SessionsCreated:   f.created.Load(),
		SessionsExpired:   f.expired.Load(),
		Rejected:          f.rejected.Load(),
		RejectedPerSource: f.rejectedPerSource.Load(),
		DialFailures:      f.dialFailures.Load(),
		Dropped:           f.dropped.Load(),
		PacketsToTarget:   f.packetsTo.Load(),
		PacketsFromTarget: f.packetsFrom.Load(),
		BytesToTarget:     f.bytesTo.Load(),
		BytesFromTarget:   f.bytesFrom.Load(),
	}
}

// Close closes the listening socket and every session, and waits for all
// of the forward's goroutines to return. It is idempotent.
func (f *UDP) Close() error {
	f.life.StopAccepting() // no listener: only marks the forward closing
	f.life.ForceClose()    // cancels dials; no session can start after it
	f.mu.Lock()
	pc := f.pc
	sessions := make([]*udpSession, 0, len(f.sessions))
	for _, s := range f.sessions {
		sessions = append(sessions, s)
	}
	f.mu.Unlock()

	var err error
	if pc != nil {
		if cerr := pc.Close(); cerr != nil && !errors.Is(cerr, net.ErrClosed) {
			err = fmt.Errorf("forward %q: %w", f.Name, cerr)
		}
	}
	for _, s := range sessions {
		s.conn.Close()
	}
	f.life.Wait()
	return err
}

// Shutdown is Close: UDP has no connections to drain. It exists so that
// the daemon can stop every forward the same way.
func (f *UDP) Shutdown(context.Context) error { return f.Close() }

func (f *UDP) readLoop(pc net.PacketConn) {
	defer f.life.Leave()
	buf := make([]byte, MaxDatagram)
	var backoff time.Duration
	for {
		n, addr, err := pc.ReadFrom(buf)
		if err != nil {
			if f.life.Closing() || errors.Is(err, net.ErrClosed) {
				return
			}
			backoff = nextBackoff(backoff)
			f.log.Warn("read failed", "err", err, "retry_in", backoff)
			select {
			case <-time.After(backoff):
			case <-f.life.Context().Done():
				return
			}
			continue
		}
		backoff = 0
		s := f.session(pc, addr)
		if s == nil {
			continue
		}
		s.touch(f.epoch)
		if _, err := s.conn.Write(buf[:n]); err != nil {
			// A session expiring between lookup and write lands here too;
			// the datagram is lost like any other UDP datagram.
			f.dropped.Add(1)
			f.log.Debug("send to target failed", "client", addr, "err", err)
			continue
		}
		f.packetsTo.Add(1)
		f.bytesTo.Add(uint64(n))
	}
}

// session returns the session for client, opening one if needed. It
// returns nil, after counting why, if the datagram must be dropped.
func (f *UDP) session(pc net.PacketConn, client net.Addr) *udpSession {
	key := client.String()
	f.mu.Lock()
	s := f.sessions[key]
	n := len(f.sessions)
	f.mu.Unlock()
	if s != nil {
		return s
	}
	maxSessions := f.MaxSessions
	if maxSessions == 0 {
		maxSessions = DefaultMaxSessions
	}
	if maxSessions > 0 && n >= maxSessions {
		f.rejected.Add(1)
		f.log.Debug("session limit reached", "client", client, "max", maxSessions)
		return nil
	}
	ip, ok := f.acquireSource(client, maxSessions)
	if !ok {
		return nil
	}

	timeout := f.DialTimeout
	if timeout <= 0 {
		timeout = DefaultDialTimeout
	}
	ctx, cancel := context.WithTimeout(f.life.Context(), timeout)
	conn, err := service.OrHost(f.To).DialContext(ctx, service.NetworkFor("udp", f.Target), f.Target)
	cancel()
	if err != nil {
		f.releaseSource(ip)
		f.dialFailures.Add(1)
		f.dialWarn.Warn(f.log, "dial failed; dropping the client's datagram", "target", f.Target,
			"reason", service.DialFailureReason(err), "dial_timeout", timeout, "client", client,
			"err", err, "dial_failures_total", f.dialFailures.Load())
		return nil
	}
	s = &udpSession{key: key, client: client, ip: ip, conn: conn}
	s.touch(f.epoch)

	// Only the read loop adds sessions, so nobody raced us to key; but
	// Close may have run during the dial.
	f.mu.Lock()
	if !f.life.Enter() {
		f.mu.Unlock()
		conn.Close()
		f.releaseSource(ip)
		return nil
	}
	f.sessions[key] = s
	f.mu.Unlock()
	f.created.Add(1)
	f.active.Add(1)
	go f.sessionLoop(pc, s)
	return s
}

// sessionLoop relays Target's replies to the client until the session has
// been idle for f.idle or its conn is closed.
func (f *UDP) sessionLoop(pc net.PacketConn, s *udpSession) {
	defer f.life.Leave()
	defer f.remove(s)
	buf := make([]byte, MaxDatagram)
	s.conn.SetReadDeadline(time.Now().Add(f.idle))
	for {
		n, err := s.conn.Read(buf)
		if err != nil {
			var ne net.Error
			switch {
			case errors.As(err, &ne) && ne.Timeout():
				// The deadline is only a wake-up: traffic towards Target
				// also counts as activity.
				left := time.Duration(s.last.Load()) + f.idle - time.Since(f.epoch)
				if left > 0 {
					s.conn.SetReadDeadline(time.Now().Add(left))
					continue
				}
				f.expired.Add(1)
				f.log.Debug("session expired", "client", s.client)
				return
			case errors.Is(err, syscall.ECONNREFUSED):
				// An ICMP port unreachable from Target for an earlier
				// datagram (Linux reports it on connected UDP sockets).
				f.dropped.Add(1)
				continue
			default:
				if !errors.Is(err, net.ErrClosed) {
					f.log.Debug("session read failed", "client", s.client, "err", err)
				}
				return
			}
		}
		s.touch(f.epoch)
		if _, err := pc.WriteTo(buf[:n], s.client); err != nil {
			f.dropped.Add(1)
			f.log.Debug("send to client failed", "client", s.client, "err", err)
			continue
		}
		f.packetsFrom.Add(1)
		f.bytesFrom.Add(uint64(n))
	}
}

func (f *UDP) remove(s *udpSession) {
	f.mu.Lock()
	if f.sessions[s.key] == s {
		delete(f.sessions, s.key)
	}
	f.mu.Unlock()
	s.conn.Close()
	f.releaseSource(s.ip)
	f.active.Add(-1)
}

// acquireSource takes a slot of MaxSessionsPerSource for client's IP,
// which releaseSource gives back; over the limit it counts and logs (rate
// limited) the drop and returns false. A client without an IP is not
// limited and gets the zero Addr.
func (f *UDP) acquireSource(client net.Addr, maxSessions int) (netip.Addr, bool) {
	ap, ok := service.AddrPort(client)
	if !ok {
		return netip.Addr{}, true
	}
	limit := f.MaxSessionsPerSource
	if limit == 0 && maxSessions > 0 {
		limit = max(1, maxSessions/4)
	}
	ip := ap.Addr()
	if f.perSource.Acquire(ip, limit) {
		return ip, true
	}
	f.rejectedPerSource.Add(1)
	if ok, n := f.sourceLog.Allow(ip, time.Now()); ok {
		f.log.Warn("source address has too many sessions; dropping datagrams that would open more (not logged again for this source for a minute)",
			"client", ip, "max_per_source", limit, "unlogged", n)
	}
	return netip.Addr{}, false
}

func (f *UDP) releaseSource(ip netip.Addr) {
	if ip.IsValid() {
		f.perSource.Release(ip)
	}
}

func (s *udpSession) touch(epoch time.Time) {
	s.last.Store(int64(time.Since(epoch)))
}
