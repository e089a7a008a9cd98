package socks5

import (
	"context"
	"crypto/rand"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/internal/servicetest"
	"github.com/ipipstack/ipipstack/service"
)

// recorder is a Network that behaves like the tunnel stack in refusing
// the dual-stack "tcp"/"udp" networks, and records what was dialed.
type recorder struct {
	service.Host
	mu    sync.Mutex
	dials []string // "network address"
}

func (r *recorder) check(network string) error {
	if network == "tcp" || network == "udp" {
		return errors.New("recorder: " + network + " needs an address family")
	}
	return nil
}

func (r *recorder) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	r.mu.Lock()
	r.dials = append(r.dials, network+" "+address)
	r.mu.Unlock()
	if err := r.check(network); err != nil {
		return nil, err
	}
	return r.Host.DialContext(ctx, network, address)
}

func (r *recorder) ListenPacket(network, address string) (net.PacketConn, error) {
	if err := r.check(network); err != nil {
		return nil, err
	}
	return r.Host.ListenPacket(network, address)
}

func (r *recorder) Listen(network, address string) (net.Listener, error) {
	if err := r.check(network); err != nil {
		return nil, err
	}
	return r.Host.Listen(network, address)
}

func (r *recorder) Dials() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.dials...)
}

// stubResolver resolves the names in its map and fails for the rest,
// recording every lookup; no test touches real DNS.
type stubResolver struct {
	names map[string][]netip.Addr
	mu    sync.Mutex
	asked []string
}

func (r *stubResolver) Resolve(ctx context.Context, name string) ([]netip.Addr, error) {
	r.mu.Lock()
	r.asked = append(r.asked, name)
	r.mu.Unlock()
	if ips, ok := r.names[name]; ok {
		return ips, nil
	}
	return nil, &net.DNSError{Err: "no such host (stub)", Name: name, IsNotFound: true}
}

func (r *stubResolver) Asked() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.asked...)
}

func newStub() *stubResolver {
	return &stubResolver{names: map[string][]netip.Addr{
		"localhost": {netip.MustParseAddr("127.0.0.1")},
		"web.test":  {netip.MustParseAddr("127.0.0.1")},
		"v6.test":   {netip.MustParseAddr("::1")},
	}}
}

// startServer starts a server on a free loopback port with Network a fresh
// recorder and Resolve a fresh stub, and closes it on cleanup.
func startServer(t testing.TB, hook func(*Server)) *Server {
	t.Helper()
	s := &Server{
		Network:          &recorder{},
		Listen:           "127.0.0.1:0",
		Resolve:          newStub().Resolve,
		HandshakeTimeout: 2 * time.Second,
		DialTimeout:      5 * time.Second,
	}
	if hook != nil {
		hook(s)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// webServer serves body at /blob on a loopback listener of the given
// network ("tcp4" or "tcp6"), or skips if that loopback does not exist.
func webServer(t testing.TB, network string, body []byte) *httptest.Server {
	t.Helper()
	addr := "127.0.0.1:0"
	if network == "tcp6" {
		addr = "[::1]:0"
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Skipf("no %s loopback: %v", network, err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/blob" {
			http.NotFound(w, r)
			return
		}
		w.Write(body)
	}))
	srv.Listener.Close()
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	return srv
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// The helpers shared with the other service packages' tests.
var (
	checkNoLeaks = servicetest.CheckNoLeaks
	waitFor      = servicetest.WaitFor
	udpEcho      = servicetest.UDPEcho
)
