package httpproxy

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/internal/servicetest"
	"github.com/ipipstack/ipipstack/service"
)

// recorder is the host network, recording what was dialed.
type recorder struct {
	service.Host
	mu    sync.Mutex
	dials []string
	// block, if set, makes DialContext wait for ctx (a dial that times out).
	block bool
}

func (r *recorder) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	r.mu.Lock()
	r.dials = append(r.dials, network+" "+address)
	r.mu.Unlock()
	if r.block {
		<-ctx.Done()
		return nil, &net.OpError{Op: "dial", Net: network, Err: ctx.Err()}
	}
	// Like the tunnel stack without DNS: no test may ask the host's
	// resolver.
	if host, _, _ := net.SplitHostPort(address); net.ParseIP(host) == nil {
		return nil, fmt.Errorf("recorder: %q is not an IP address; no DNS here", host)
	}
	return r.Host.DialContext(ctx, network, address)
}

func (r *recorder) Dials() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.dials...)
}

func startServer(t testing.TB, hook func(*Server)) (*Server, *recorder) {
	t.Helper()
	rec := &recorder{}
	s := &Server{Network: rec, Listen: "127.0.0.1:0", DialTimeout: 5 * time.Second}
	if hook != nil {
		hook(s)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s, rec
}

// client is an http.Client that uses s as its proxy, with user:pass if
// user is not empty.
func client(t testing.TB, s *Server, user, pass string) *http.Client {
	u := &url.URL{Scheme: "http", Host: s.Addr().String()}
	if user != "" {
		u.User = url.UserPassword(user, pass)
	}
	tr := &http.Transport{Proxy: http.ProxyURL(u), DisableKeepAlives: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 20 * time.Second}
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// connectRaw sends a CONNECT for target to s and returns the conn and
// the response to it.
func connectRaw(t testing.TB, s *Server, target, auth string) (net.Conn, *bufio.Reader, *http.Response) {
	t.Helper()
	c, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	req := "CONNECT " + target + " HTTP/1.1\r\nHost: " + target + "\r\n"
	if auth != "" {
		req += "Proxy-Authorization: " + auth + "\r\n"
	}
	if _, err := io.WriteString(c, req+"\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		t.Fatalf("reading the CONNECT response: %v", err)
	}
	return c, br, resp
}

// sinkServer accepts one connection, hashes all it reads, then writes
// reply and closes; the hash is sent on the returned channel.
func sinkServer(t testing.TB, reply []byte) (net.Listener, <-chan [32]byte) {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	sum := make(chan [32]byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		h := sha256.New()
		io.Copy(h, c)
		var s [32]byte
		copy(s[:], h.Sum(nil))
		sum <- s
		c.Write(reply)
	}()
	return ln, sum
}

// TestConnectRelay: CONNECT relays both directions byte-exact, with the
// client's half-close reaching the target before the target answers, and
// the bytes are counted.
func TestConnectRelay(t *testing.T) {
	servicetest.CheckNoLeaks(t)
	s, rec := startServer(t, nil)
	up, down := randomBytes(3<<20+17), randomBytes(1<<20+5)
	ln, sum := sinkServer(t, down)
	c, br, resp := connectRaw(t, s, ln.Addr().String(), "")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("CONNECT = %s, want 200", resp.Status)
	}
	if _, err := c.Write(up); err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(br)
	if err != nil {
		t.Fatalf("reading the reply: %v", err)
	}
	if g := <-sum; g != sha256.Sum256(up) {
		t.Errorf("target got SHA-256 %x, want %x", g, sha256.Sum256(up))
	}
	if sha256.Sum256(got) != sha256.Sum256(down) {
		t.Errorf("client got %d bytes differing from the target's %d", len(got), len(down))
	}
	c.Close()
	servicetest.WaitFor(t, "the tunnel to close", func() bool { return s.Stats().Active == 0 })
	st := s.Stats()
	if st.Connects != 1 || st.Accepted != 1 || st.BytesToTarget != int64(len(up)) || st.BytesFromTarget != int64(len(down)) {
		t.Errorf("Stats() = %+v, want 1 connect, 1 accepted, %d bytes to and %d from the target", st, len(up), len(down))
	}
	if d := rec.Dials(); len(d) != 1 || d[0] != "tcp4 "+ln.Addr().String() {
		t.Errorf("dials = %q, want [tcp4 %s]", d, ln.Addr())
	}
}

// TestConnectEarlyData: bytes the client sends right behind the CONNECT
// request (as a TLS client that does not wait does) reach the target.
func TestConnectEarlyData(t *testing.T) {
	s, _ := startServer(t, nil)
	ln, sum := sinkServer(t, []byte("ok"))
	c, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	early := []byte("early bytes behind the request")
	io.WriteString(c, "CONNECT "+ln.Addr().String()+" HTTP/1.1\r\nHost: x\r\n\r\n"+string(early))
	c.(*net.TCPConn).CloseWrite()
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT = %v, %v", resp, err)
	}
	if g := <-sum; g != sha256.Sum256(early) {
		t.Errorf("target did not get the early bytes")
	}
	if b, _ := io.ReadAll(br); string(b) != "ok" {
		t.Errorf("reply = %q, want ok", b)
	}
}

// TestForwardGET: an absolute-URI GET and POST reach the target with the
// hop-by-hop headers removed, and the response comes back whole.
func TestForwardGET(t *testing.T) {
	servicetest.CheckNoLeaks(t)
	body := randomBytes(1<<20 + 3)
	var mu sync.Mutex
	var seen []http.Header
	var posted [32]byte
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Header.Clone())
		mu.Unlock()
		if r.Method == http.MethodPost {
			b, _ := io.ReadAll(r.Body)
			posted = sha256.Sum256(b)
			w.WriteHeader(http.StatusCreated)
			return
		}
		w.Write(body)
	}))
	defer backend.Close()
	s, rec := startServer(t, func(s *Server) { s.Username, s.Password = "u", "p" })
	hc := client(t, s, "u", "p")
	req, _ := http.NewRequest(http.MethodGet, backend.URL+"/blob", nil)
	req.Header.Set("Connection", "X-Hop")
	req.Header.Set("X-Hop", "must not pass")
	req.Header.Set("Keep-Alive", "timeout=5")
	req.Header.Set("X-End", "passes")
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 || sha256.Sum256(got) != sha256.Sum256(body) {
		t.Fatalf("GET = %s, %d bytes, %v; want 200 and the %d bytes served", resp.Status, len(got), err, len(body))
	}
	mu.Lock()
	h := seen[0]
	mu.Unlock()
	for _, k := range []string{"X-Hop", "Keep-Alive", "Proxy-Authorization", "Proxy-Connection"} {
		if v := h.Get(k); v != "" {
			t.Errorf("target saw %s: %q; hop-by-hop headers must not be forwarded", k, v)
		}
	}
	if h.Get("X-End") != "passes" {
		t.Errorf("target header = %v, want X-End: passes", h)
	}

	up := randomBytes(200 << 10)
	resp, err = hc.Post(backend.URL+"/up", "application/octet-stream", strings.NewReader(string(up)))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated || posted != sha256.Sum256(up) {
		t.Errorf("POST = %s, target got SHA-256 %x; want 201 and %x", resp.Status, posted, sha256.Sum256(up))
	}
	servicetest.WaitFor(t, "connections to close", func() bool { return s.Stats().Active == 0 })
	st := s.Stats()
	if st.Requests != 2 || st.BytesFromTarget != int64(len(body)) || st.BytesToTarget != int64(len(up)) || st.AuthFailures != 0 {
		t.Errorf("Stats() = %+v, want 2 requests, %d bytes from and %d to the target", st, len(body), len(up))
	}
	if d := rec.Dials(); len(d) == 0 || d[0] != "tcp4 "+strings.TrimPrefix(backend.URL, "http://") {
		t.Errorf("dials = %q", d)
	}
}

// TestBasicAuth: missing or wrong credentials get 407 with a Basic
// challenge and dial nothing; the right ones pass, for GET and CONNECT.
func TestBasicAuth(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hi") }))
	defer backend.Close()
	s, rec := startServer(t, func(s *Server) { s.Username, s.Password = "alice", "s3cret" })
	for _, tc := range []struct {
		name, user, pass string
		want             int
	}{
		{"none", "", "", http.StatusProxyAuthRequired},
		{"wrong password", "alice", "guess", http.StatusProxyAuthRequired},
		{"wrong user", "bob", "s3cret", http.StatusProxyAuthRequired},
		{"right", "alice", "s3cret", http.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := client(t, s, tc.user, tc.pass).Get(backend.URL + "/")
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Fatalf("GET = %s %q, want %d", resp.Status, b, tc.want)
			}
			if tc.want == http.StatusProxyAuthRequired {
				if h := resp.Header.Get("Proxy-Authenticate"); h != `Basic realm="ipipstack", charset="UTF-8"` {
					t.Errorf("Proxy-Authenticate = %q", h)
				}
			}
		})
	}
	if st := s.Stats(); st.AuthFailures != 3 || st.Requests != 1 {
		t.Errorf("Stats() = %+v, want 3 auth failures, 1 request", st)
	}
	if n := len(rec.Dials()); n != 1 {
		t.Errorf("%d dials, want 1: refused requests must dial nothing", n)
	}
	ln, _ := sinkServer(t, nil)
	_, _, resp := connectRaw(t, s, ln.Addr().String(), "Basic "+base64.StdEncoding.EncodeToString([]byte("alice:nope")))
	if resp.StatusCode != http.StatusProxyAuthRequired {
		t.Errorf("CONNECT with a wrong password = %s, want 407", resp.Status)
	}
	_, _, resp = connectRaw(t, s, ln.Addr().String(), "basic "+base64.StdEncoding.EncodeToString([]byte("alice:s3cret")))
	if resp.StatusCode != http.StatusOK {
		t.Errorf("CONNECT with the right password = %s, want 200", resp.Status)
	}
}

// TestDialFailure: a refused dial is 502, a dial that times out 504, each
// with a body that says why, and counted.
func TestDialFailure(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	s, _ := startServer(t, nil)
	resp, err := client(t, s, "", "").Get("http://" + closed + "/")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(string(b), "dialing "+closed+" through the tunnel") ||
		!strings.Contains(string(b), "refused") {
		t.Errorf("GET a closed port = %s %q, want 502 saying the dial was refused", resp.Status, b)
	}
	_, _, resp = connectRaw(t, s, closed, "")
	if resp.StatusCode != http.StatusBadGateway {
		t.Errorf("CONNECT a closed port = %s, want 502", resp.Status)
	}
	if st := s.Stats(); st.DialFailures != 2 || st.Timeouts != 0 {
		t.Errorf("Stats() = %+v, want 2 dial failures, no timeouts", st)
	}

	slow, rec := startServer(t, func(s *Server) { s.DialTimeout = 100 * time.Millisecond })
	rec.block = true
	_, _, resp = connectRaw(t, slow, "10.99.0.2:22", "")
	b, _ = io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusGatewayTimeout || !strings.Contains(string(b), "10.99.0.2:22") {
		t.Errorf("CONNECT that times out = %s %q, want 504 naming the target", resp.Status, b)
	}
	if st := slow.Stats(); st.DialFailures != 1 || st.Timeouts != 1 {
		t.Errorf("Stats() = %+v, want 1 dial failure, 1 timeout", st)
	}
}

// TestBadRequests: what a proxy cannot serve gets 400 and dials nothing.
func TestBadRequests(t *testing.T) {
	s, rec := startServer(t, nil)
	for _, tc := range []struct{ name, req string }{
		{"origin form", "GET / HTTP/1.1\r\nHost: example\r\n\r\n"},
		{"https absolute", "GET https://10.0.0.1/ HTTP/1.1\r\nHost: 10.0.0.1\r\n\r\n"},
		{"connect without port", "CONNECT 10.0.0.1 HTTP/1.1\r\nHost: 10.0.0.1\r\n\r\n"},
		{"connect port 0", "CONNECT 10.0.0.1:0 HTTP/1.1\r\nHost: 10.0.0.1:0\r\n\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", s.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			io.WriteString(c, tc.req)
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != http.StatusBadRequest {
				t.Errorf("%q = %s, want 400", tc.req, resp.Status)
			}
		})
	}
	if st := s.Stats(); st.BadRequests != 4 || len(rec.Dials()) != 0 {
		t.Errorf("Stats() = %+v, dials %q; want 4 bad requests and no dial", st, rec.Dials())
	}
}

// TestLimits: connections over MaxConns and over MaxConnsPerClient are
// closed at once and counted; slots come back when connections close.
func TestLimits(t *testing.T) {
	for _, tc := range []struct {
		name      string
		max, per  int
		perClient bool
	}{
		{"max_connections", 2, -1, false},
		{"max_connections_per_client", 10, 2, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := startServer(t, func(s *Server) { s.MaxConns, s.MaxConnsPerClient = tc.max, tc.per })
			var held []net.Conn
			for range 2 {
				c, err := net.Dial("tcp", s.Addr().String())
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				held = append(held, c)
			}
			servicetest.WaitFor(t, "2 active", func() bool { return s.Stats().Active == 2 })
			over, err := net.Dial("tcp", s.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer over.Close()
			over.SetDeadline(time.Now().Add(10 * time.Second))
			io.WriteString(over, "GET http://10.0.0.1/ HTTP/1.1\r\nHost: 10.0.0.1\r\n\r\n")
			if n, err := over.Read(make([]byte, 1)); err == nil {
				t.Fatalf("connection over the limit read %d bytes, want it closed", n)
			}
			st := s.Stats()
			rejected := st.Rejected
			if tc.perClient {
				rejected = st.RejectedPerClient
			}
			if rejected != 1 || st.Accepted != 2 {
				t.Errorf("Stats() = %+v, want 1 rejected by %s, 2 accepted", st, tc.name)
			}
			held[0].Close()
			servicetest.WaitFor(t, "a slot to come back", func() bool { return s.Stats().Active == 1 })
			c, err := net.Dial("tcp", s.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			servicetest.WaitFor(t, "the new connection admitted", func() bool { return s.Stats().Accepted == 3 })
		})
	}
}

// TestShutdownCutsTunnels: Close ends a CONNECT tunnel in progress and
// returns with nothing left running.
func TestShutdownCutsTunnels(t *testing.T) {
	servicetest.CheckNoLeaks(t)
	s, _ := startServer(t, nil)
	ln, _ := sinkServer(t, nil)
	c, br, resp := connectRaw(t, s, ln.Addr().String(), "")
	if resp.StatusCode != 200 {
		t.Fatal(resp.Status)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := s.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown with a tunnel open = %v, want the deadline", err)
	}
	if _, err := br.ReadByte(); err == nil {
		t.Error("tunnel still open after Shutdown")
	}
	c.Close()
	if st := s.Stats(); st.Active != 0 {
		t.Errorf("Active = %d after Shutdown", st.Active)
	}
}

// TestForwardResponseHopHeaders: the hop-by-hop fields of a target's
// response, and those its Connection field names, do not reach the
// client. The target is raw TCP: net/http's server rewrites Connection.
func TestForwardResponseHopHeaders(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nConnection: X-Secret, close\r\nX-Secret: hop\r\nKeep-Alive: timeout=5\r\n"+
			"Proxy-Authenticate: Basic realm=\"target\"\r\nX-Kept: end-to-end\r\nContent-Length: 2\r\n\r\nok")
	}()
	s, _ := startServer(t, nil)
	resp, err := client(t, s, "", "").Get("http://" + ln.Addr().String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "ok" {
		t.Errorf("body = %q, want ok", b)
	}
	for _, k := range []string{"X-Secret", "Keep-Alive", "Proxy-Authenticate"} {
		if v := resp.Header.Get(k); v != "" {
			t.Errorf("client saw %s: %q; hop-by-hop fields must not be forwarded", k, v)
		}
	}
	if resp.Header.Get("X-Kept") != "end-to-end" {
		t.Errorf("response header = %v, want X-Kept kept", resp.Header)
	}
}

// TestNamesPassThrough: host names in CONNECT and in URLs reach the
// Network as they are, unresolved, and its refusal is a 502 that says
// why.
func TestNamesPassThrough(t *testing.T) {
	s, rec := startServer(t, nil)
	_, _, resp := connectRaw(t, s, "web.test:8443", "")
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(string(b), "no DNS here") {
		t.Errorf("CONNECT web.test:8443 = %s %q, want 502 with the Network's error", resp.Status, b)
	}
	resp, err := client(t, s, "", "").Get("http://db.test/x")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway {
		t.Errorf("GET http://db.test/x = %s, want 502", resp.Status)
	}
	if d := rec.Dials(); fmt.Sprint(d) != "[tcp web.test:8443 tcp db.test:80]" {
		t.Errorf("dials = %q, want the names as given, with the network left to the Network", d)
	}
}

// flakyListener fails its first fails accepts with err.
type flakyListener struct {
	net.Listener
	fails int
	err   error
}

func (l *flakyListener) Accept() (net.Conn, error) {
	if l.fails > 0 {
		l.fails--
		return nil, l.err
	}
	return l.Listener.Accept()
}

// TestAcceptBackoff: accepts failing with EMFILE are counted, logged once
// and retried, and the server then serves.
func TestAcceptBackoff(t *testing.T) {
	inner, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var logs servicetest.LogBuffer
	emfile := &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	s := &Server{Network: &recorder{}, Logger: logs.Logger()}
	done := make(chan error, 1)
	go func() { done <- s.Serve(&flakyListener{Listener: inner, fails: 4, err: emfile}) }()
	defer func() {
		s.Close()
		if err := <-done; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve = %v, want ErrServerClosed", err)
		}
	}()
	c, err := net.Dial("tcp", inner.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("after 4 failed accepts: %v, %v; want the 400 of a served request", resp, err)
	}
	if st := s.Stats(); st.AcceptErrors != 4 {
		t.Errorf("AcceptErrors = %d, want 4", st.AcceptErrors)
	}
	if n := len(logs.Lines("WARN", "accept failed")); n != 1 {
		t.Errorf("%d accept warnings for a burst of 4, want 1", n)
	}
}
