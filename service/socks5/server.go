// Package socks5 is a SOCKS version 5 server (RFC 1928) with optional
// username/password authentication (RFC 1929). It supports CONNECT and
// UDP ASSOCIATE with IPv4, IPv6 and domain-name addresses; BIND is answered
// with "command not supported".
//
// Clients reach the server on ClientNetwork (the host by default) and the
// server's outbound connections and datagrams go through Network, which in
// the daemon is the tunnel stack:
//
//	s := &socks5.Server{Network: st, Listen: "127.0.0.1:1080"}
//	if err := s.Start(ctx); err != nil { ... }
//	defer s.Close()
//
// # Names
//
// The tunnel has no DNS. A DOMAINNAME address that is an IP literal is used
// as is; any other name is resolved by Server.Resolve, by default the host's
// resolver, and the resulting address is then reached through Network. To
// resolve through the tunnel, set Resolve to a resolver that queries a DNS
// server over Network.
//
// # Replies
//
// Dial errors map to RFC 1928 §6 reply codes: connection refused → 0x05,
// network unreachable → 0x03, host unreachable or down, a name that does not
// resolve, and a connect timeout → 0x04 (rather than 0x06 "TTL expired",
// which clients report as an IP TTL problem), anything else → 0x01. Errors
// are recognised both as syscall errnos (the host) and by the messages of
// gVisor's gonet adapter (the tunnel stack), which are not errnos.
//
// # Limits
//
// One client cannot starve the others: MaxConns is shared, but one client
// IP address holds at most MaxConnsPerClient of it; every connection must
// finish its handshake within HandshakeTimeout; with Username/Password, a
// client (an IPv4 address or IPv6 /64) that sends MaxAuthFailures wrong
// credentials in a row is locked out for a growing AuthBackoff; and a UDP
// association relays only datagrams from the address and port its request
// named (RFC 1928 §7), or, for zeros, from the control connection's IP and
// the port of its first datagram. Refusals are counted in Stats and logged
// at Warn, rate limited.
//
// # Lifecycle
//
// The exported fields are configuration: set them before Start or Serve and
// do not change them afterwards. Close and Shutdown end everything the
// server started; a closed server cannot be restarted.
package socks5

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ipipstack/ipipstack/service"
)

// Defaults for the zero values of the option fields.
const (
	DefaultMaxConns         = 1024
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultDialTimeout      = 10 * time.Second

	// lingerTime bounds lingerClose, as net/http's rstAvoidanceDelay.
	lingerTime = 500 * time.Millisecond
)

// ErrServerClosed is returned by Serve and Start after Close or Shutdown.
var ErrServerClosed = errors.New("socks5: server closed")

// Server is a SOCKS5 server. Its zero value serves on the host without
// authentication once given a listener (Serve) or an address (Start).
type Server struct {
	// Network is where CONNECT dials and UDP ASSOCIATE sends. Nil means
	// service.Host{}.
	Network service.Network
	// ClientNetwork is where clients are: Start listens on it and UDP
	// ASSOCIATE binds its relay socket on it, next to the IP address the
	// client's control connection arrived at. Nil means service.Host{}. A
	// listener given to Serve must belong to it.
	ClientNetwork service.Network
	// Listen is the "host:port" address Start listens on.
	Listen string
	// Username and Password, if either is set, are required with method
	// 0x02 (RFC 1929); clients offering only "no authentication" are
	// refused. Both empty means method 0x00 only.
	Username, Password string
	// MaxConns caps concurrent client connections (a UDP association counts
	// as its control connection); one over the cap is accepted and closed
	// at once and counted in Stats.Rejected. Zero means DefaultMaxConns;
	// negative means no limit.
	MaxConns int
	// MaxConnsPerClient caps the concurrent connections of one client IP
	// address, so that one client cannot take all of MaxConns (idle
	// connections in their handshake are enough to try); one over it is
	// closed at once and counted in Stats.RejectedPerClient. Zero means a
	// quarter of MaxConns (at least 1), or no limit if MaxConns has none;
	// negative means no limit. Clients on the proxy's own host all share
	// its loopback address.
	MaxConnsPerClient int
	// MaxAuthFailures is how many wrong usernames or passwords a client
	// (an IPv4 address or an IPv6 /64) may send in a row before it is
	// locked out for AuthBackoff: while locked out, its greetings are
	// answered "no acceptable methods" and counted in Stats.AuthThrottled.
	// Each further lockout of the same client is twice as long, up to 64×
	// AuthBackoff; one failure is forgiven every AuthBackoff, and the right
	// password forgets them all. Zero means DefaultMaxAuthFailures;
	// negative turns the throttle off. Only used with Username/Password.
	MaxAuthFailures int
	// AuthBackoff is the first lockout of a client; see MaxAuthFailures.
	// Zero means DefaultAuthBackoff.
	AuthBackoff time.Duration
	// HandshakeTimeout bounds each client's greeting, authentication and
	// request, and the writing of each reply. Zero means
	// DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	// DialTimeout bounds each CONNECT (all addresses of a name together)
	// and each name resolution. Zero means DefaultDialTimeout.
	DialTimeout time.Duration
	// Resolve resolves DOMAINNAME addresses that are not IP literals; the
	// addresses are tried in order. Nil means net.DefaultResolver.LookupNetIP
	// on the host (see the package doc: the tunnel has no DNS).
	Resolve func(ctx context.Context, name string) ([]netip.Addr, error)
	// Logger receives per-client failures at Debug, and at Warn accept
	// errors and failed CONNECTs (each at most one every 10 s; see
	// service.AcceptErrors and service.WarnLimiter),
	// authentication failures and refusals by MaxConnsPerClient or the
	// authentication throttle; the Warn lines about clients are rate
	// limited (service.LogLimiter) and say how many went unlogged. Nil
	// discards them.
	Logger *slog.Logger

	stats counters

	perClient service.PerAddr // connections held by each client IP
	// Rate limits of the Warn lines about clients.
	limitLog, authLog, lockLog service.LogLimiter[netip.Addr]
	connectWarn                service.WarnLimiter // of failed CONNECTs
	throttle                   *authThrottle       // nil if off; set by init

	// initOnce sets up log and throttle, on first use.
	initOnce sync.Once
	log      *slog.Logger
	// life holds the listener, the client connections and the
	// goroutines; its Context parents every dial.
	life service.Lifecycle
}

type counters struct {
	accepted, rejected, handshakeErrors, authFailures atomic.Uint64
	rejectedPerClient, authThrottled, udpForeign      atomic.Uint64
	connects, connectFailures, associations           atomic.Uint64
	udpToTarget, udpFromTarget, udpDropped, udpFrags  atomic.Uint64
	udpBytesToTarget, udpBytesFromTarget              atomic.Uint64
	active, bytesToTarget, bytesFromTarget            atomic.Int64
}

// Stats are a server's counters since it started.
type Stats struct {
	Accepted        uint64 // client connections accepted and served (Rejected not included)
	Active          int64  // client connections open now
	Rejected        uint64 // connections closed at once because MaxConns was reached
	AcceptErrors    uint64 // failed accepts (out of file descriptors, most likely), retried with backoff
	HandshakeErrors uint64 // bad version, truncated or malformed message, timeout, unsupported command or address type
	AuthFailures    uint64 // no acceptable method offered, or wrong username/password
	Connects        uint64 // CONNECTs that succeeded
	ConnectFailures uint64 // CONNECTs whose resolution or dial failed
	BytesToTarget   int64  // CONNECT bytes from clients to targets
	BytesFromTarget int64  // CONNECT bytes from targets to clients

	UDPAssociations      uint64 // UDP ASSOCIATE requests granted
	UDPPacketsToTarget   uint64 // datagrams relayed to targets
	UDPPacketsFromTarget uint64 // datagrams relayed back to clients
	UDPBytesToTarget     uint64 // payload bytes relayed to targets
	UDPBytesFromTarget   uint64 // payload bytes relayed back to clients
	UDPFragments         uint64 // datagrams dropped because FRAG != 0
	UDPDropped           uint64 // other datagrams dropped: foreign source, bad header, resolve or send error
	UDPForeign           uint64 // the part of UDPDropped from a source other than the association's client

	RejectedPerClient uint64 // connections closed at once because their client IP had MaxConnsPerClient
	AuthThrottled     uint64 // greetings refused because the client was locked out after MaxAuthFailures
}

// Stats returns a snapshot of the counters. It is safe to call at any time.
func (s *Server) Stats() Stats {
	c := &s.stats
	return Stats{
		Accepted:             c.accepted.Load(),
		Active:               c.active.Load(),
		Rejected:             c.rejected.Load(),
		RejectedPerClient:    c.rejectedPerClient.Load(),
		AuthThrottled:        c.authThrottled.Load(),
		UDPForeign:           c.udpForeign.Load(),
		AcceptErrors:         s.life.AcceptErrors.Count(),
		HandshakeErrors:      c.handshakeErrors.Load(),
		AuthFailures:         c.authFailures.Load(),
		Connects:             c.connects.Load(),
		ConnectFailures:      c.connectFailures.Load(),
		BytesToTarget:        c.bytesToTarget.Load(),
		BytesFromTarget:      c.bytesFromTarget.Load(),
		UDPAssociations:      c.associations.Load(),
		UDPPacketsToTarget:   c.udpToTarget.Load(),
		UDPPacketsFromTarget: c.udpFromTarget.Load(),
		UDPBytesToTarget:     c.udpBytesToTarget.Load(),
		UDPBytesFromTarget:   c.udpBytesFromTarget.Load(),
		UDPFragments:         c.udpFrags.Load(),
		UDPDropped:           c.udpDropped.Load(),
	}
}

func (s *Server) init() {
	s.initOnce.Do(func() {
		s.log = service.LoggerOrDiscard(s.Logger).With("service", "socks5")
		if n := s.maxAuthFailures(); n > 0 && (s.Username != "" || s.Password != "") {
			s.throttle = newAuthThrottle(n, s.authBackoff())
		}
	})
}

// Start listens on ClientNetwork at Listen and serves in the background.
// A bind error is returned at once, wrapped as `socks5: listen tcp
// 127.0.0.1:1080: ...`. ctx only bounds Start itself; cancelling it later
// does not stop the server: call Close or Shutdown.
func (s *Server) Start(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("socks5: %w", err)
	}
	ln, err := service.ListenTCP(service.OrHost(s.ClientNetwork), s.Listen, "socks5")
	if err != nil {
		return err
	}
	if err := s.setListener(ln); err != nil {
		return err
	}
	go func() {
		if err := s.serve(); !errors.Is(err, ErrServerClosed) {
			s.log.Error("serving stopped", "err", err)
		}
	}()
	return nil
}

// Serve accepts clients on ln until Close or Shutdown, and then returns
// ErrServerClosed; it returns other accept errors only if they persist
// (temporary ones are retried with backoff). Serve takes ownership of ln.
// It may be called once, and not together with Start.
func (s *Server) Serve(ln net.Listener) error {
	if err := s.setListener(ln); err != nil {
		return err
	}
	return s.serve()
}

func (s *Server) setListener(ln net.Listener) error {
	s.init()
	switch err := s.life.Attach(context.Background(), ln); {
	case errors.Is(err, service.ErrClosed):
		return ErrServerClosed
	case err != nil:
		return fmt.Errorf("socks5: %w", err)
	}
	return nil
}

// Addr returns the address the server listens on, or nil before Start or
// Serve.
func (s *Server) Addr() net.Addr { return s.life.Addr() }

// Close stops accepting, closes every client connection and UDP
// association, and waits for all of the server's goroutines. It is
// idempotent.
func (s *Server) Close() error {
	if err := s.life.Close(); err != nil {
		return fmt.Errorf("socks5: %w", err)
	}
	return nil
}

// Shutdown stops accepting and waits for clients to finish on their own
// until ctx is done, then closes them as Close does. It returns ctx's error
// if clients had to be cut.
func (s *Server) Shutdown(ctx context.Context) error {
	if err := s.life.Shutdown(ctx); err != nil {
		return fmt.Errorf("socks5: %w", err)
	}
	return nil
}

// serve runs the accept loop on the listener setListener attached.
func (s *Server) serve() error {
	maxConns := s.MaxConns
	if maxConns == 0 {
		maxConns = DefaultMaxConns
	}
	err := s.life.Serve(s.log, func(c net.Conn) bool { return s.admit(c, maxConns) }, s.handle)
	if err == nil {
		return ErrServerClosed
	}
	return err
}

// admit takes c unless maxConns (if positive) connections are active or
// its client is over MaxConnsPerClient, and counts it either way.
func (s *Server) admit(c net.Conn, maxConns int) bool {
	if maxConns > 0 && s.stats.active.Load() >= int64(maxConns) {
		s.stats.rejected.Add(1)
		s.log.Debug("connection limit reached", "client", c.RemoteAddr(), "max", maxConns)
		c.Close()
		return false
	}
	if !s.admitClient(c, maxConns) {
		return false
	}
	s.stats.accepted.Add(1)
	s.stats.active.Add(1)
	return true
}

// admitClient takes a slot of MaxConnsPerClient for c, which handle gives
// back; over the limit it counts, logs and closes c and returns false.
func (s *Server) admitClient(c net.Conn, maxConns int) bool {
	ip, ok := clientIP(c)
	if !ok {
		return true
	}
	limit := s.MaxConnsPerClient
	if limit == 0 && maxConns > 0 {
		limit = max(1, maxConns/4)
	}
	if s.perClient.Acquire(ip, limit) {
		return true
	}
	s.stats.rejectedPerClient.Add(1)
	if ok, n := s.limitLog.Allow(ip, time.Now()); ok {
		s.log.Warn("client has too many connections; refusing more (further refusals of this client are not logged for a minute)",
			"client", ip, "max_per_client", limit, "unlogged", n)
	}
	c.Close()
	return false
}

// clientIP is c's remote IP, unmapped.
func clientIP(c net.Conn) (netip.Addr, bool) {
	ap, ok := service.AddrPort(c.RemoteAddr())
	return ap.Addr(), ok
}

func (s *Server) maxAuthFailures() int {
	if s.MaxAuthFailures == 0 {
		return DefaultMaxAuthFailures
	}
	return s.MaxAuthFailures
}

func (s *Server) authBackoff() time.Duration {
	if s.AuthBackoff > 0 {
		return s.AuthBackoff
	}
	return DefaultAuthBackoff
}

func (s *Server) handshakeTimeout() time.Duration {
	if s.HandshakeTimeout > 0 {
		return s.HandshakeTimeout
	}
	return DefaultHandshakeTimeout
}

func (s *Server) dialTimeout() time.Duration {
	if s.DialTimeout > 0 {
		return s.DialTimeout
	}
	return DefaultDialTimeout
}

// handle serves one client connection from greeting to the end of its
// relay or association.
func (s *Server) handle(c net.Conn) {
	defer s.stats.active.Add(-1)
	if ip, ok := clientIP(c); ok {
		defer s.perClient.Release(ip)
	}
	if !s.life.Conns.Track(c) {
		return
	}
	defer s.life.Conns.Untrack(c)
	defer c.Close()

	log := s.log.With("client", c.RemoteAddr())
	c.SetDeadline(time.Now().Add(s.handshakeTimeout()))
	req, err := s.handshake(c)
	if err != nil {
		log.Debug("handshake failed", "err", err)
		s.lingerClose(c)
		return
	}
	c.SetDeadline(time.Time{})
	log = log.With("cmd", req.Cmd, "dst", req.Dst)

	switch req.Cmd {
	case CmdConnect:
		s.connect(c, req.Dst, log)
	case CmdUDPAssociate:
		s.associate(c, req.Dst, log)
	default:
		s.stats.handshakeErrors.Add(1)
		log.Debug("command not supported")
		s.reply(c, ReplyCommandNotSupported, Addr{})
		s.lingerClose(c)
	}
}

// lingerClose closes c after a failed handshake so that the client reads
// the reply rather than a reset: closing a socket with unread input sends
// an RST (RFC 1122 §4.2.2.13), which can discard the reply in flight. It
// sends FIN first and discards the client's input for a moment, like
// net/http's closeWriteAndWait.
func (s *Server) lingerClose(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
		c.SetReadDeadline(time.Now().Add(min(lingerTime, s.handshakeTimeout())))
		io.Copy(io.Discard, io.LimitReader(c, 64<<10))
	}
	c.Close()
}

// handshake runs method selection, authentication and reads the request.
// On failure it has sent whatever reply the protocol has for it, counted
// it, and the caller closes the connection.
func (s *Server) handshake(c net.Conn) (Request, error) {
	var arr [MaxUserPassLen]byte // the largest client message before the relay
	b, err := readMsg(c, arr[:], GreetingNeed)
	if err != nil {
		s.stats.handshakeErrors.Add(1)
		return Request{}, fmt.Errorf("reading greeting: %w", err)
	}
	methods, _, err := ParseGreeting(b)
	if err != nil { // no reply: a client of another version cannot parse ours
		s.stats.handshakeErrors.Add(1)
		return Request{}, fmt.Errorf("greeting: %w", err)
	}
	method := byte(MethodNoAuth)
	if s.Username != "" || s.Password != "" {
		method = MethodUserPass
	}
	if method == MethodUserPass && s.lockedOut(c) {
		c.Write([]byte{Version, MethodNoAcceptable})
		return Request{}, errors.New("client locked out after failed authentications")
	}
	if bytes.IndexByte(methods, method) < 0 {
		s.stats.authFailures.Add(1)
		c.Write([]byte{Version, MethodNoAcceptable})
		return Request{}, fmt.Errorf("client offers methods %x, want %#x", methods, method)
	}
	if _, err := c.Write([]byte{Version, method}); err != nil {
		s.stats.handshakeErrors.Add(1)
		return Request{}, err
	}

	if method == MethodUserPass {
		b, err := readMsg(c, arr[:], UserPassNeed)
		if err != nil {
			s.stats.handshakeErrors.Add(1)
			return Request{}, fmt.Errorf("reading username/password: %w", err)
		}
		user, pass, _, err := ParseUserPass(b)
		if err != nil {
			s.stats.handshakeErrors.Add(1)
			c.Write([]byte{AuthVersion, AuthFailure})
			return Request{}, fmt.Errorf("username/password: %w", err)
		}
		if !s.credentialsOK(user, pass) {
			s.stats.authFailures.Add(1)
			s.authFailed(c)
			c.Write([]byte{AuthVersion, AuthFailure})
			return Request{}, errors.New("wrong username or password")
		}
		if ip, ok := clientIP(c); ok && s.throttle != nil {
			s.throttle.succeed(ip)
		}
		if _, err := c.Write([]byte{AuthVersion, AuthSuccess}); err != nil {
			s.stats.handshakeErrors.Add(1)
			return Request{}, err
		}
	}

	b, err = readMsg(c, arr[:], RequestNeed)
	if err != nil {
		s.stats.handshakeErrors.Add(1)
		return Request{}, fmt.Errorf("reading request: %w", err)
	}
	req, _, err := ParseRequest(b)
	if err != nil {
		s.stats.handshakeErrors.Add(1)
		rep := ReplyGeneralFailure
		if errors.Is(err, ErrAddressType) {
			rep = ReplyAddressTypeNotSupported
		}
		s.reply(c, rep, Addr{})
		return Request{}, fmt.Errorf("request: %w", err)
	}
	return req, nil
}

// lockedOut reports, counts and logs (rate limited) whether c's client is
// locked out by the authentication throttle.
func (s *Server) lockedOut(c net.Conn) bool {
	ip, ok := clientIP(c)
	if !ok || s.throttle == nil {
		return false
	}
	now := time.Now()
	locked, left := s.throttle.lockedOut(ip, now)
	if !locked {
		return false
	}
	s.stats.authThrottled.Add(1)
	if ok, n := s.lockLog.Allow(ip, now); ok {
		s.log.Warn("refusing a client locked out after failed authentications (further refusals of this client are not logged for a minute)",
			"client", ip, "locked_for", left.Round(time.Second), "unlogged", n)
	}
	return true
}

// authFailed records a wrong username or password from c's client with the
// throttle, and logs it at Warn, rate limited.
func (s *Server) authFailed(c net.Conn) {
	ip, ok := clientIP(c)
	if !ok {
		return
	}
	now := time.Now()
	var lockout time.Duration
	var failures int
	if s.throttle != nil {
		lockout, failures = s.throttle.fail(ip, now)
	}
	if ok, n := s.authLog.Allow(ip, now); ok {
		s.log.Warn("wrong username or password (further failures of this client are not logged for a minute)",
			"client", ip, "failures_in_a_row", failures, "locked_out_for", lockout, "unlogged", n)
	}
}

// credentialsOK compares in constant time, hashing first so that the
// lengths do not leak either.
func (s *Server) credentialsOK(user, pass []byte) bool {
	hu, hp := sha256.Sum256(user), sha256.Sum256(pass)
	wu, wp := sha256.Sum256([]byte(s.Username)), sha256.Sum256([]byte(s.Password))
	return subtle.ConstantTimeCompare(hu[:], wu[:])&subtle.ConstantTimeCompare(hp[:], wp[:]) == 1
}

// reply writes a reply within the handshake timeout. A zero bnd is sent
// as 0.0.0.0:0.
func (s *Server) reply(c net.Conn, rep Reply, bnd Addr) error {
	if bnd.Name == "" && !bnd.IP.IsValid() {
		bnd.IP = netip.IPv4Unspecified()
	}
	b, err := AppendReply(make([]byte, 0, MaxRequestLen), rep, bnd)
	if err != nil {
		return err
	}
	c.SetWriteDeadline(time.Now().Add(s.handshakeTimeout()))
	_, err = c.Write(b)
	c.SetWriteDeadline(time.Time{})
	return err
}

// readMsg reads one message into buf, as long as need says it is, without
// reading past its end (the relay must see every byte that follows).
func readMsg(c net.Conn, buf []byte, need func([]byte) int) ([]byte, error) {
	b := buf[:0]
	for {
		n := need(b)
		if n <= len(b) {
			return b, nil
		}
		if n > len(buf) {
			return nil, fmt.Errorf("%w: message of %d bytes", ErrMalformed, n)
		}
		if _, err := io.ReadFull(c, buf[len(b):n]); err != nil {
			return nil, err
		}
		b = buf[:n]
	}
}

// connect serves CONNECT: dial, reply, relay.
func (s *Server) connect(c net.Conn, dst Addr, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(s.life.Context(), s.dialTimeout())
	up, err := s.dial(ctx, dst)
	cancel()
	if err != nil {
		s.stats.connectFailures.Add(1)
		rep := replyFor(err)
		s.connectWarn.Warn(log, "CONNECT failed; replied with an error", "reason", service.DialFailureReason(err),
			"dial_timeout", s.dialTimeout(), "err", err, "reply", rep, "connect_failures_total", s.stats.connectFailures.Load())
		s.reply(c, rep, Addr{})
		s.lingerClose(c)
		return
	}
	if !s.life.Conns.Track(up) {
		return
	}
	defer s.life.Conns.Untrack(up)
	if err := s.reply(c, ReplySucceeded, AddrFromNetAddr(up.LocalAddr())); err != nil {
		up.Close()
		log.Debug("writing reply", "err", err)
		return
	}
	s.stats.connects.Add(1)
	if err := service.RelayCount(c, up, &s.stats.bytesToTarget, &s.stats.bytesFromTarget); err != nil {
		log.Debug("relay ended", "err", err)
	}
}

// dial connects to dst through Network, resolving a name first and trying
// its addresses in order.
func (s *Server) dial(ctx context.Context, dst Addr) (net.Conn, error) {
	ips, err := s.resolve(ctx, dst)
	if err != nil {
		return nil, err
	}
	var first error
	for _, ip := range ips {
		ap := netip.AddrPortFrom(ip, dst.Port).String()
		c, err := service.OrHost(s.Network).DialContext(ctx, service.NetworkFor("tcp", ap), ap)
		if err == nil {
			return c, nil
		}
		if first == nil {
			first = err
		}
		if ctx.Err() != nil {
			break
		}
	}
	return nil, first
}

// resolveError marks a failed name resolution, which replies "host
// unreachable".
type resolveError struct {
	name string
	err  error
}

func (e *resolveError) Error() string { return fmt.Sprintf("resolving %q: %v", e.name, e.err) }
func (e *resolveError) Unwrap() error { return e.err }

// resolve returns dst's IP, or the addresses of its name, unmapped.
func (s *Server) resolve(ctx context.Context, dst Addr) ([]netip.Addr, error) {
	if dst.Name == "" {
		return []netip.Addr{dst.IP.Unmap()}, nil
	}
	// An IP literal needs no DNS; curl and others send "[::1]" brackets
	// and all as a name.
	if ip, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(dst.Name, "["), "]")); err == nil {
		return []netip.Addr{ip.Unmap()}, nil
	}
	resolve := s.Resolve
	if resolve == nil {
		resolve = func(ctx context.Context, name string) ([]netip.Addr, error) {
			return net.DefaultResolver.LookupNetIP(ctx, "ip", name)
		}
	}
	ips, err := resolve(ctx, dst.Name)
	if err == nil && len(ips) == 0 {
		err = errors.New("no addresses")
	}
	if err != nil {
		return nil, &resolveError{dst.Name, err}
	}
	out := make([]netip.Addr, 0, len(ips))
	for _, ip := range ips {
		if ip.IsValid() {
			out = append(out, ip.Unmap())
		}
	}
	return out, nil
}

// replyFor maps a resolution or dial error to a reply code; see the
// package doc.
func replyFor(err error) Reply {
	var re *resolveError
	var ne net.Error
	switch {
	case errors.As(err, &re):
		return ReplyHostUnreachable
	case errors.Is(err, syscall.ECONNREFUSED):
		return ReplyConnectionRefused
	case errors.Is(err, syscall.ENETUNREACH), errors.Is(err, syscall.ENETDOWN):
		return ReplyNetworkUnreachable
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.EHOSTDOWN):
		return ReplyHostUnreachable
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded),
		errors.Is(err, syscall.ETIMEDOUT), errors.As(err, &ne) && ne.Timeout():
		return ReplyHostUnreachable
	}
	// gVisor's gonet adapter wraps tcpip errors as errors.New(String()).
	msg := err.Error()
	switch {
	case strings.Contains(msg, "connection was refused"), strings.Contains(msg, "connection refused"):
		return ReplyConnectionRefused
	case strings.Contains(msg, "network is unreachable"), strings.Contains(msg, "network is down"):
		return ReplyNetworkUnreachable
	case strings.Contains(msg, "no route to host"), strings.Contains(msg, "host is unreachable"),
		strings.Contains(msg, "host is down"), strings.Contains(msg, "timed out"):
		return ReplyHostUnreachable
	}
	return ReplyGeneralFailure
}
