package daemon

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/internal/servicetest"
)

// peerOf returns the watched state of d's tunnel name.
func peerOf(t testing.TB, d *Daemon, name string) PeerStatus {
	t.Helper()
	for _, ts := range d.Status().Tunnels {
		if ts.Name == name && ts.PeerState != nil {
			return *ts.PeerState
		}
	}
	t.Fatalf("tunnel %q has no peer state", name)
	return PeerStatus{}
}

// getPath returns the status code and body of path on d's handler.
func getPath(d *Daemon, path string) (int, string) {
	rec := httptest.NewRecorder()
	d.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	body, _ := io.ReadAll(rec.Result().Body)
	return rec.Code, string(body)
}

// TestKeepalivePeerDownAndUp watches A's peer through its keepalive: up
// while B answers, down once B is shut down, up again once B restarts;
// /readyz, /status and /metrics follow, and each change is logged.
func TestKeepalivePeerDownAndUp(t *testing.T) {
	var logA servicetest.LogBuffer
	p := newPair(t, pairOptions{aTunnel: `keepalive = "1s"`, logBufferA: &logA})
	const patience = 30 * time.Second
	waitFor(t, patience, "peer up", func() bool { return peerOf(t, p.a, "b").State == PeerUp })
	ps := peerOf(t, p.a, "b")
	if ps.Address != "10.99.0.2" || ps.Keepalive != 1 || ps.Replies == 0 || ps.RTT == nil || *ps.RTT <= 0 {
		t.Errorf("peer state %+v: want address 10.99.0.2, keepalive 1s, a reply and its RTT", ps)
	}
	if code, body := getPath(p.a, "/readyz"); code != http.StatusOK || body != "ready\n" {
		t.Errorf("/readyz = %d %q, want 200 ready", code, body)
	}
	if code, _ := getPath(p.a, "/healthz"); code != http.StatusOK {
		t.Errorf("/healthz = %d, want 200", code)
	}
	_, metrics := getPath(p.a, "/metrics")
	for _, re := range []string{`(?m)^ipipstack_tunnel_up\{tunnel="b"\} 1$`, `(?m)^ipipstack_tunnel_rtt_seconds\{tunnel="b"\} [0-9.e-]+$`,
		`(?m)^ipipstack_tunnel_peer_state\{state="up",tunnel="b"\} 1$`} {
		if !regexp.MustCompile(re).MatchString(metrics) {
			t.Errorf("/metrics has no line matching %s", re)
		}
	}
	// B's tunnel has no keepalive: its peer is up from A's probes, and
	// never makes B unready.
	waitFor(t, patience, "B sees A up", func() bool { return peerOf(t, p.b, "a").State == PeerUp })

	cfgB := p.b.cfg
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.b.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, patience, "peer down", func() bool { return peerOf(t, p.a, "b").State == PeerDown })
	code, body := getPath(p.a, "/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "tunnel b: peer 10.99.0.2 is down") {
		t.Errorf("/readyz with B down = %d %q, want 503 naming tunnel b", code, body)
	}
	if st := p.a.Status(); st.Ready {
		t.Error("Status().Ready with the peer down")
	}
	if !strings.Contains(logA.String(), "peer down") {
		t.Error("A logged no \"peer down\" line")
	}
	_, metrics = getPath(p.a, "/metrics")
	if !regexp.MustCompile(`(?m)^ipipstack_tunnel_up\{tunnel="b"\} 0$`).MatchString(metrics) {
		t.Error("/metrics does not show ipipstack_tunnel_up 0 with the peer down")
	}

	startDaemon(t, cfgB, Options{Logger: testLogger(t, nil).With("peer", "B2")})
	waitFor(t, patience, "peer up again", func() bool { return peerOf(t, p.a, "b").State == PeerUp })
	if code, _ := getPath(p.a, "/readyz"); code != http.StatusOK {
		t.Errorf("/readyz after B restarted = %d, want 200", code)
	}
	if n := strings.Count(logA.String(), "peer up"); n < 2 {
		t.Errorf("A logged \"peer up\" %d times, want 2 (at start and after the restart)", n)
	}
}
