// Package httpproxy is a forward HTTP proxy: CONNECT to any port (RFC 9110
// §9.3.6) and absolute-URI requests for plain HTTP (RFC 9112 §3.2.2), with
// optional Basic authentication (RFC 9110 §11.7.1, Proxy-Authorization).
//
// Clients reach the server on ClientNetwork (the host by default) and the
// server's outbound connections go through Network, which in the daemon is
// the tunnel stack:
//
//	s := &httpproxy.Server{Network: st, Listen: "127.0.0.1:3128"}
//	if err := s.Start(ctx); err != nil { ... }
//	defer s.Close()
//
// The server side (parsing requests, keep-alive, header limits) is net/http's
// http.Server; CONNECT hijacks the client connection and relays bytes with
// service.RelayCount, and a plain request is forwarded through an
// http.Transport whose dials go through Network.
//
// # Names
//
// Host names in CONNECT authorities and URLs are passed to
// Network.DialContext as they come and never resolved with the host's
// resolver: the tunnel stack resolves them through its own DNS servers when
// it has some, and refuses them otherwise (the client gets a 502 saying so).
//
// # Replies
//
// A dial that fails gets 502 Bad Gateway, and one that times out (or a
// target that does not send its response header within
// ResponseHeaderTimeout) 504 Gateway Timeout, each with a one-line text body
// saying what failed. Wrong or missing credentials get 407 with
// Proxy-Authenticate. Requests that are neither CONNECT nor absolute-URI
// http:// requests get 400.
//
// Each plain request gets its own connection to the target, closed once
// the response is relayed; keep-alive applies between the client and the
// proxy only.
//
// Hop-by-hop headers (RFC 9110 §7.6.1: Connection and the fields it names,
// Proxy-Connection, Keep-Alive, Proxy-Authenticate, Proxy-Authorization, TE,
// Trailer, Transfer-Encoding, Upgrade) are removed from forwarded requests
// and responses, so the credentials for the proxy never reach the target.
//
// # Limits
//
// MaxConns caps the client connections held at once and MaxConnsPerClient
// those of one client IP address; connections over either are closed at
// once and counted. Request headers must arrive within ReadHeaderTimeout
// and fit in MaxHeaderBytes. Refusals and authentication failures are
// counted in Stats and logged at Warn, rate limited (service.LogLimiter);
// failed accepts back off and are logged at most once every 10 s
// (service.AcceptErrors).
//
// # Lifecycle
//
// The exported fields are configuration: set them before Start or Serve and
// do not change them afterwards. Close and Shutdown end everything the
// server started; a closed server cannot be restarted.
package httpproxy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ipipstack/ipipstack/service"
)

// Defaults for the zero values of the option fields.
const (
	DefaultMaxConns              = 1024
	DefaultReadHeaderTimeout     = 10 * time.Second
	DefaultDialTimeout           = 10 * time.Second
	DefaultResponseHeaderTimeout = 60 * time.Second
	DefaultIdleTimeout           = 2 * time.Minute
	// DefaultMaxHeaderBytes bounds a request's header: 64 KiB, ample for
	// any browser or curl request and a sixteenth of net/http's default.
	DefaultMaxHeaderBytes = 64 << 10
)

// Realm is the realm of the Proxy-Authenticate challenge.
const Realm = "ipipstack"

// ErrServerClosed is returned by Serve and Start after Close or Shutdown.
var ErrServerClosed = errors.New("httpproxy: server closed")

// Server is an HTTP forward proxy. Its zero value serves on the host
// without authentication once given a listener (Serve) or an address
// (Start).
type Server struct {
	// Network is where the proxy dials targets. Nil means service.Host{}.
	Network service.Network
	// ClientNetwork is where clients are: Start listens on it. Nil means
	// service.Host{}.
	ClientNetwork service.Network
	// Listen is the "host:port" address Start listens on.
	Listen string
	// Username and Password, if either is set, are required in every
	// request's Proxy-Authorization header (the Basic scheme). Both empty
	// means no authentication.
	Username, Password string
	// MaxConns caps concurrent client connections; one over the cap is
	// accepted and closed at once and counted in Stats.Rejected. Zero
	// means DefaultMaxConns; negative means no limit.
	MaxConns int
	// MaxConnsPerClient caps the concurrent connections of one client IP
	// address; one over it is closed at once and counted in
	// Stats.RejectedPerClient. Zero means a quarter of MaxConns (at least
	// 1), or no limit if MaxConns has none; negative means no limit.
	MaxConnsPerClient int
	// ReadHeaderTimeout bounds the reading of each request's header (the
	// http.Server field). Zero means DefaultReadHeaderTimeout.
	ReadHeaderTimeout time.Duration
	// MaxHeaderBytes bounds each request's header (the http.Server
	// field). Zero means DefaultMaxHeaderBytes.
	MaxHeaderBytes int
	// IdleTimeout closes a client's keep-alive connection idle that long
	// between requests. Zero means DefaultIdleTimeout.
	IdleTimeout time.Duration
	// DialTimeout bounds each dial of a target (with name resolution, if
	// Network resolves). Zero means DefaultDialTimeout.
	DialTimeout time.Duration
	// ResponseHeaderTimeout bounds the wait for a plain HTTP target's
	// response header once the request is sent. Zero means
	// DefaultResponseHeaderTimeout.
	ResponseHeaderTimeout time.Duration
	// Logger receives per-request failures at Debug, and at Warn accept
	// errors (at most one every 10 s), authentication failures and
	// refusals by MaxConnsPerClient, rate limited. Nil discards them.
	Logger *slog.Logger

	stats     counters
	perClient service.PerAddr
	// Rate limits of the Warn lines about clients.
	limitLog, authLog service.LogLimiter[netip.Addr]

	initOnce  sync.Once
	log       *slog.Logger
	srv       *http.Server
	transport *http.Transport
	// life holds the listener, the hijacked client conns and their
	// targets (Conns), and counts srv's Serve and every handler (Enter);
	// its Context parents every dial.
	life     service.Lifecycle
	tunnelWG sync.WaitGroup // CONNECT relays only, for Shutdown
}

type counters struct {
	accepted, rejected, rejectedPerClient, authFailures atomic.Uint64
	badRequests, requests, connects, dialFailures       atomic.Uint64
	timeouts                                            atomic.Uint64
	active, bytesToTarget, bytesFromTarget              atomic.Int64
}

// Stats are a server's counters since it started.
type Stats struct {
	Accepted          uint64 // client connections accepted (Rejected not included)
	Active            int64  // client connections open now
	Rejected          uint64 // connections closed at once because MaxConns was reached
	RejectedPerClient uint64 // connections closed at once because their client IP had MaxConnsPerClient
	AcceptErrors      uint64 // failed accepts (out of file descriptors, most likely), retried with backoff
	AuthFailures      uint64 // requests answered 407: missing or wrong credentials
	BadRequests       uint64 // requests answered 400: not CONNECT nor an absolute http:// URI, bad authority
	Requests          uint64 // plain HTTP requests forwarded and answered by their target
	Connects          uint64 // CONNECTs that succeeded
	DialFailures      uint64 // dials of a target that failed (502 or 504), CONNECT or plain
	Timeouts          uint64 // the part of DialFailures, and targets too slow to answer, answered 504
	BytesToTarget     int64  // bytes from clients to targets (CONNECT payload and request bodies)
	BytesFromTarget   int64  // bytes from targets to clients (CONNECT payload and response bodies)
}

// Stats returns a snapshot of the counters. It is safe to call at any time.
func (s *Server) Stats() Stats {
	c := &s.stats
	return Stats{
		Accepted:          c.accepted.Load(),
		Active:            c.active.Load(),
		Rejected:          c.rejected.Load(),
		RejectedPerClient: c.rejectedPerClient.Load(),
		AcceptErrors:      s.life.AcceptErrors.Count(),
		AuthFailures:      c.authFailures.Load(),
		BadRequests:       c.badRequests.Load(),
		Requests:          c.requests.Load(),
		Connects:          c.connects.Load(),
		DialFailures:      c.dialFailures.Load(),
		Timeouts:          c.timeouts.Load(),
		BytesToTarget:     c.bytesToTarget.Load(),
		BytesFromTarget:   c.bytesFromTarget.Load(),
	}
}

func (s *Server) init() {
	s.initOnce.Do(func() {
		s.log = service.LoggerOrDiscard(s.Logger).With("service", "http_proxy")
		s.transport = &http.Transport{
			Proxy:                 nil, // never a proxy behind the proxy
			DialContext:           s.dialTarget,
			ResponseHeaderTimeout: orDefault(s.ResponseHeaderTimeout, DefaultResponseHeaderTimeout),
			// One connection to the target per request, closed when its
			// response is done: an idle pool would hold connections (and
			// the slots of the target's side, such as a peer's reverse
			// forward) after the client has gone, and past a shutdown.
			DisableKeepAlives: true,
			// The client asked for the encoding it wants; pass the
			// response through as it comes.
			DisableCompression: true,
		}
		s.srv = &http.Server{
			Handler:           s,
			ReadHeaderTimeout: orDefault(s.ReadHeaderTimeout, DefaultReadHeaderTimeout),
			MaxHeaderBytes:    s.maxHeaderBytes(),
			IdleTimeout:       orDefault(s.IdleTimeout, DefaultIdleTimeout),
			// http.Server logs malformed requests and TLS noise per
			// connection; keep them at Debug.
			ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
			BaseContext: func(net.Listener) context.Context {
				return s.life.Context()
			},
		}
	})
}

func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

func (s *Server) maxHeaderBytes() int {
	if s.MaxHeaderBytes > 0 {
		return s.MaxHeaderBytes
	}
	return DefaultMaxHeaderBytes
}

func (s *Server) maxConns() int {
	if s.MaxConns == 0 {
		return DefaultMaxConns
	}
	return s.MaxConns
}

func (s *Server) maxConnsPerClient() int {
	if s.MaxConnsPerClient == 0 && s.maxConns() > 0 {
		return max(1, s.maxConns()/4)
	}
	return s.MaxConnsPerClient
}

// Start listens on ClientNetwork at Listen and serves in the background.
// A bind error is returned at once, wrapped as `httpproxy: listen tcp
// 127.0.0.1:3128: ...`. ctx only bounds Start itself; cancelling it later
// does not stop the server: call Close or Shutdown.
func (s *Server) Start(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("httpproxy: %w", err)
	}
	ln, err := service.ListenTCP(service.OrHost(s.ClientNetwork), s.Listen, "httpproxy")
	if err != nil {
		return err
	}
	if err := s.setListener(ln); err != nil {
		return err
	}
	go func() {
		if err := s.serve(ln); !errors.Is(err, ErrServerClosed) {
			s.log.Error("serving stopped", "err", err)
		}
	}()
	return nil
}

// Serve accepts clients on ln until Close or Shutdown, and then returns
// ErrServerClosed. Serve takes ownership of ln. It may be called once, and
// not together with Start.
func (s *Server) Serve(ln net.Listener) error {
	if err := s.setListener(ln); err != nil {
		return err
	}
	return s.serve(ln)
}

func (s *Server) setListener(ln net.Listener) error {
	s.init()
	switch err := s.life.Attach(context.Background(), ln); {
	case errors.Is(err, service.ErrClosed):
		return ErrServerClosed
	case err != nil:
		return fmt.Errorf("httpproxy: %w", err)
	}
	return nil
}

// serve runs srv on ln, which setListener attached.
func (s *Server) serve(ln net.Listener) error {
	defer s.life.Leave()
	err := s.srv.Serve(&limitListener{Listener: service.RetryListener(ln, &s.life.AcceptErrors, s.log), s: s})
	if errors.Is(err, http.ErrServerClosed) || s.life.Closing() {
		return ErrServerClosed
	}
	return fmt.Errorf("httpproxy: %w", err)
}

// Addr returns the address the server listens on, or nil before Start or
// Serve.
func (s *Server) Addr() net.Addr { return s.life.Addr() }

// Close stops accepting, closes every client connection and CONNECT
// tunnel, and waits for the server's goroutines. It is idempotent.
func (s *Server) Close() error {
	s.init()
	lerr := s.life.StopAccepting()
	err := s.srv.Close()
	s.forceClose()
	s.life.Wait()
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("httpproxy: %w", err)
	}
	return lerr
}

// Shutdown stops accepting and waits until ctx is done for requests in
// flight and CONNECT tunnels to finish on their own, then closes them as
// Close does. It returns ctx's error if clients had to be cut.
func (s *Server) Shutdown(ctx context.Context) error {
	s.init()
	lerr := s.life.StopAccepting()
	cut := func() {
		s.srv.Close()
		s.forceClose()
		s.life.Wait()
	}
	herr := s.srv.Shutdown(ctx)
	if herr != nil {
		// ctx ran out with requests still in flight: one of them may
		// yet reach connect and add to tunnelWG, which must not happen
		// while Drain waits on it. Cut now; life.Wait covers every
		// handler.
		cut()
		if errors.Is(herr, net.ErrClosed) {
			return lerr
		}
		return fmt.Errorf("httpproxy: shutdown: %w", herr)
	}
	if cerr := service.Drain(ctx, &s.tunnelWG, cut); cerr != nil {
		return fmt.Errorf("httpproxy: shutdown: %w", cerr)
	}
	return lerr
}

// forceClose cancels dials, makes new handlers return at once, and closes
// every hijacked connection and its target.
func (s *Server) forceClose() {
	s.life.ForceClose()
	s.transport.CloseIdleConnections()
}

// limitListener admits connections within MaxConns and MaxConnsPerClient,
// closing (and counting) the others, and wraps those it admits so that
// their slots are given back when they close.
type limitListener struct {
	net.Listener
	s *Server
}

func (l *limitListener) Accept() (net.Conn, error) {
	s := l.s
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if m := s.maxConns(); m > 0 && s.stats.active.Load() >= int64(m) {
			s.stats.rejected.Add(1)
			s.log.Debug("connection limit reached", "client", c.RemoteAddr(), "max", m)
			c.Close()
			continue
		}
		ip, ok := clientIP(c)
		if ok {
			limit := s.maxConnsPerClient()
			if !s.perClient.Acquire(ip, limit) {
				s.stats.rejectedPerClient.Add(1)
				if ok, n := s.limitLog.Allow(ip, time.Now()); ok {
					s.log.Warn("client has too many connections; refusing more (further refusals of this client are not logged for a minute)",
						"client", ip, "max_per_client", limit, "unlogged", n)
				}
				c.Close()
				continue
			}
		}
		s.stats.accepted.Add(1)
		s.stats.active.Add(1)
		return &clientConn{Conn: c, s: s, ip: ip, hasIP: ok}, nil
	}
}

// clientConn is an admitted client connection; closing it gives back its
// slots.
type clientConn struct {
	net.Conn
	s     *Server
	ip    netip.Addr
	hasIP bool
	once  sync.Once
}

func (c *clientConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.s.stats.active.Add(-1)
		if c.hasIP {
			c.s.perClient.Release(c.ip)
		}
	})
	return err
}

// CloseWrite sends a FIN if the underlying conn can, so that a CONNECT
// relay propagates half-close.
func (c *clientConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Close()
}

// clientIP is c's remote IP, unmapped.
func clientIP(c net.Conn) (netip.Addr, bool) {
	ap, ok := service.AddrPort(c.RemoteAddr())
	return ap.Addr(), ok
}

// ServeHTTP implements http.Handler: it authenticates and dispatches one
// proxy request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// Count the handler in what Close waits for, unless a forced close
	// has begun (http.Server does not wait for its handlers).
	if !s.life.Enter() {
		return
	}
	defer s.life.Leave()
	log := s.log.With("client", r.RemoteAddr, "method", r.Method, "target", r.Host)
	if !s.authorized(r) {
		s.stats.authFailures.Add(1)
		s.authFailed(r)
		w.Header().Set("Proxy-Authenticate", `Basic realm="`+Realm+`", charset="UTF-8"`)
		httpError(w, http.StatusProxyAuthRequired, "proxy authentication required: send Proxy-Authorization: Basic with the username and password of this proxy")
		return
	}
	if r.Method == http.MethodConnect {
		s.connect(w, r, log)
		return
	}
	s.forward(w, r, log)
}

// authorized checks r's Proxy-Authorization, in constant time, hashing
// first so that the lengths do not leak either.
func (s *Server) authorized(r *http.Request) bool {
	if s.Username == "" && s.Password == "" {
		return true
	}
	user, pass, ok := proxyBasicAuth(r.Header.Get("Proxy-Authorization"))
	if !ok {
		return false
	}
	hu, hp := sha256.Sum256([]byte(user)), sha256.Sum256([]byte(pass))
	wu, wp := sha256.Sum256([]byte(s.Username)), sha256.Sum256([]byte(s.Password))
	return subtle.ConstantTimeCompare(hu[:], wu[:])&subtle.ConstantTimeCompare(hp[:], wp[:]) == 1
}

// proxyBasicAuth parses "Basic base64(user:pass)" (RFC 7617; the scheme
// is case-insensitive).
func proxyBasicAuth(h string) (user, pass string, ok bool) {
	scheme, cred, found := strings.Cut(strings.TrimSpace(h), " ")
	if !found || !strings.EqualFold(scheme, "Basic") {
		return "", "", false
	}
	b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(cred))
	if err != nil {
		return "", "", false
	}
	return strings.Cut(string(b), ":")
}

// authFailed logs a 407 at Warn, rate limited per client; a request
// without credentials is the normal first step of a client and is only
// logged at Debug.
func (s *Server) authFailed(r *http.Request) {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return
	}
	ip := ap.Addr().Unmap()
	if r.Header.Get("Proxy-Authorization") == "" {
		s.log.Debug("request without credentials; answering 407", "client", ip)
		return
	}
	if ok, n := s.authLog.Allow(ip, time.Now()); ok {
		s.log.Warn("wrong proxy username or password (further failures of this client are not logged for a minute)",
			"client", ip, "unlogged", n)
	}
}

// httpError writes a short text/plain error reply.
func httpError(w http.ResponseWriter, code int, msg string) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	fmt.Fprintf(w, "ipipstack http_proxy: %s\n", msg)
}

// targetAddr validates a "host:port" authority and returns it as the
// Network wants it (IPv6 literals bracketed, zone-free).
func targetAddr(authority string) (string, error) {
	host, port, err := net.SplitHostPort(authority)
	if err != nil {
		return "", fmt.Errorf("target %q is not host:port", authority)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return "", fmt.Errorf("target %q has no valid port (1-65535)", authority)
	}
	if host == "" {
		return "", fmt.Errorf("target %q has no host", authority)
	}
	return net.JoinHostPort(host, port), nil
}

// dialTarget dials address through Network within DialTimeout; a failure
// comes back as a *dialError.
func (s *Server) dialTarget(ctx context.Context, _, address string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, orDefault(s.DialTimeout, DefaultDialTimeout))
	defer cancel()
	c, err := service.OrHost(s.Network).DialContext(ctx, service.NetworkFor("tcp", address), address)
	if err != nil {
		return nil, &dialError{addr: address, err: err}
	}
	if sn, ok := ctx.Value(snifferKey{}).(*headerSniffer); ok {
		c = &sniffConn{Conn: c, s: sn}
	}
	return c, nil
}

// dialError is a failed dial of a target.
type dialError struct {
	addr string
	err  error
}

func (e *dialError) Error() string {
	return fmt.Sprintf("dialing %s through the tunnel: %v", e.addr, e.err)
}
func (e *dialError) Unwrap() error { return e.err }

// isTimeout reports whether err is a deadline or timeout.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) ||
		errors.Is(err, syscall.ETIMEDOUT) || (errors.As(err, &ne) && ne.Timeout()) ||
		// gVisor's gonet adapter wraps tcpip errors as errors.New(String()).
		strings.Contains(err.Error(), "timed out")
}

// gatewayError answers a failed dial or upstream: 504 for a timeout, 502
// otherwise.
func (s *Server) gatewayError(w http.ResponseWriter, err error, log *slog.Logger) {
	code := http.StatusBadGateway
	if isTimeout(err) {
		code = http.StatusGatewayTimeout
		s.stats.timeouts.Add(1)
	}
	log.Debug("target failed", "err", err, "status", code)
	httpError(w, code, err.Error())
}

// connect serves CONNECT: dial, 200, hijack, relay.
func (s *Server) connect(w http.ResponseWriter, r *http.Request, log *slog.Logger) {
	// Counted before the hijack, while Shutdown still waits for this
	// request, so that its Drain sees the tunnel.
	s.tunnelWG.Add(1)
	defer s.tunnelWG.Done()
	addr, err := targetAddr(r.Host)
	if err != nil {
		s.stats.badRequests.Add(1)
		httpError(w, http.StatusBadRequest, "CONNECT: "+err.Error())
		return
	}
	// Not r.Context(): net/http cancels that when the client half-closes,
	// and a client may send its data and shut down writing before the
	// tunnel is up (printf ... | nc). DialTimeout bounds the dial.
	up, err := s.dialTarget(s.life.Context(), "tcp", addr)
	if err != nil {
		s.stats.dialFailures.Add(1)
		s.gatewayError(w, err, log)
		return
	}
	rc := http.NewResponseController(w)
	w.WriteHeader(http.StatusOK)
	if err := rc.Flush(); err != nil {
		up.Close()
		log.Debug("writing 200 to CONNECT", "err", err)
		return
	}
	c, brw, err := rc.Hijack()
	if err != nil {
		up.Close()
		log.Debug("hijacking the client connection", "err", err)
		return
	}
	c.SetDeadline(time.Time{}) // http.Server's read header deadline
	s.stats.connects.Add(1)
	// A client may send its first bytes (a TLS ClientHello) right behind
	// the CONNECT request, where the server's reader has them already.
	var client net.Conn = c
	if n := brw.Reader.Buffered(); n > 0 {
		client = &prefixConn{Conn: c, r: io.MultiReader(io.LimitReader(brw.Reader, int64(n)), c)}
	}
	if !s.life.Conns.Track(c) {
		up.Close()
		return
	}
	defer s.life.Conns.Untrack(c)
	if !s.life.Conns.Track(up) {
		c.Close()
		return
	}
	defer s.life.Conns.Untrack(up)
	if err := service.RelayCount(client, up, &s.stats.bytesToTarget, &s.stats.bytesFromTarget); err != nil {
		log.Debug("relay ended", "err", err)
	}
}

// prefixConn is a conn whose first bytes come from r.
type prefixConn struct {
	net.Conn
	r io.Reader
}

func (c *prefixConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// CloseWrite sends a FIN if the underlying conn can.
func (c *prefixConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Close()
}

// hopHeaders are the hop-by-hop fields of RFC 9110 §7.6.1 and the
// historical ones still sent (Proxy-Connection, Keep-Alive), which a proxy
// must not forward.
var hopHeaders = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// removeHopHeaders deletes the hop-by-hop fields from h, those named in
// its Connection field first.
func removeHopHeaders(h http.Header) {
	for _, v := range h.Values("Connection") {
		for _, name := range strings.Split(v, ",") {
			if name = strings.TrimSpace(name); name != "" {
				h.Del(name)
			}
		}
	}
	for _, name := range hopHeaders {
		h.Del(name)
	}
}

// forward serves an absolute-URI request for plain HTTP.
func (s *Server) forward(w http.ResponseWriter, r *http.Request, log *slog.Logger) {
	if !r.URL.IsAbs() || r.URL.Host == "" {
		s.stats.badRequests.Add(1)
		httpError(w, http.StatusBadRequest, "this is a proxy: send CONNECT host:port, or an absolute URI (GET http://host/path)")
		return
	}
	if r.URL.Scheme != "http" {
		s.stats.badRequests.Add(1)
		httpError(w, http.StatusBadRequest, fmt.Sprintf("scheme %q is not proxied: use http://, or CONNECT for https", r.URL.Scheme))
		return
	}
	hostport := r.URL.Host
	if r.URL.Port() == "" {
		hostport = net.JoinHostPort(r.URL.Hostname(), "80")
	}
	if _, err := targetAddr(hostport); err != nil {
		s.stats.badRequests.Add(1)
		httpError(w, http.StatusBadRequest, err.Error())
		return
	}
	out := r.Clone(r.Context())
	out.RequestURI = ""
	out.Close = false
	out.Header = r.Header.Clone()
	removeHopHeaders(out.Header)
	if r.Body != nil && r.Body != http.NoBody {
		out.Body = &countReader{r: r.Body, n: &s.stats.bytesToTarget}
	}
	if _, ok := out.Header["User-Agent"]; !ok {
		// Keep the client's absence of User-Agent; http.Transport would
		// add its own.
		out.Header.Set("User-Agent", "")
	}
	// net/http deletes a response's Connection field when it says
	// "close", and with it the names of the other hop-by-hop fields it
	// lists; the sniffer keeps the raw header to find them.
	sn := &headerSniffer{}
	out = out.WithContext(context.WithValue(out.Context(), snifferKey{}, sn))
	resp, err := s.transport.RoundTrip(out)
	if err != nil {
		var de *dialError
		if errors.As(err, &de) {
			s.stats.dialFailures.Add(1)
		}
		if r.Context().Err() != nil {
			log.Debug("client went away", "err", err)
			return
		}
		s.gatewayError(w, err, log)
		return
	}
	defer resp.Body.Close()
	s.stats.requests.Add(1)
	for _, name := range sn.connectionTokens() {
		resp.Header.Del(name)
	}
	removeHopHeaders(resp.Header)
	h := w.Header()
	for k, vv := range resp.Header {
		h[k] = append(h[k][:0:0], vv...)
	}
	w.WriteHeader(resp.StatusCode)
	if err := s.copyBody(w, resp.Body); err != nil {
		log.Debug("copying the response", "err", err)
		// Abort so that the client sees a truncated response as one.
		panic(http.ErrAbortHandler)
	}
}

// copyBody copies a response body to the client, flushing after each read
// so that streamed responses (server-sent events, long polls) flow.
func (s *Server) copyBody(w http.ResponseWriter, body io.Reader) error {
	rc := http.NewResponseController(w)
	buf := make([]byte, 32<<10)
	for {
		n, err := body.Read(buf)
		if n > 0 {
			m, werr := w.Write(buf[:n])
			s.stats.bytesFromTarget.Add(int64(m))
			if werr != nil {
				return werr
			}
			rc.Flush()
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// countReader counts the bytes read through it.
type countReader struct {
	r io.ReadCloser
	n *atomic.Int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

func (c *countReader) Close() error { return c.r.Close() }

// snifferKey is the context key of a request's *headerSniffer.
type snifferKey struct{}

// headerSniffer keeps the first header block read from a target's
// connection (up to DefaultMaxHeaderBytes).
type headerSniffer struct {
	mu sync.Mutex
	// The fields below are guarded by mu.
	buf  []byte
	done bool
}

func (h *headerSniffer) record(p []byte) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.done {
		return
	}
	from := max(0, len(h.buf)-3)
	h.buf = append(h.buf, p...)
	if i := bytes.Index(h.buf[from:], []byte("\r\n\r\n")); i >= 0 {
		h.buf, h.done = h.buf[:from+i+2], true
	} else if len(h.buf) > DefaultMaxHeaderBytes {
		h.buf, h.done = nil, true
	}
}

// connectionTokens returns the field names listed in the Connection
// fields of the recorded header.
func (h *headerSniffer) connectionTokens() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	lines := strings.Split(string(h.buf), "\r\n")
	for _, l := range lines[min(1, len(lines)):] { // after the status line
		k, v, ok := strings.Cut(l, ":")
		if !ok || !strings.EqualFold(strings.TrimSpace(k), "Connection") {
			continue
		}
		for _, tok := range strings.Split(v, ",") {
			if tok = strings.TrimSpace(tok); tok != "" && !strings.EqualFold(tok, "close") {
				out = append(out, tok)
			}
		}
	}
	return out
}

// sniffConn shows what it reads to a headerSniffer.
type sniffConn struct {
	net.Conn
	s *headerSniffer
}

func (c *sniffConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.s.record(p[:n])
	}
	return n, err
}
