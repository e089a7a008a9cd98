package cli

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/daemon"
)

// TestStatusNotReady checks that status prints the peer states and exits
// ExitNotReady, with the reason on stderr, when the daemon is not ready,
// with or without --json.
func TestStatusNotReady(t *testing.T) {
	rtt := 0.0015
	st := daemon.Status{
		NotReady: []string{"tunnel b: peer 10.99.0.2 is down"},
		Tunnels: []daemon.TunnelStatus{{Name: "b", PeerState: &daemon.PeerStatus{State: daemon.PeerDown,
			Since: time.Now().Add(-5 * time.Second), Address: "10.99.0.2", Keepalive: 25, RTT: &rtt, Probes: 9, Replies: 4}}},
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(st)
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	out, errOut, code := cli(t, t.Context(), "status", "--addr", addr)
	if code != ExitNotReady || !strings.Contains(errOut, "not ready: tunnel b: peer 10.99.0.2 is down") {
		t.Errorf("status of an unready daemon = %d, stderr %q; want %d naming the peer", code, errOut, ExitNotReady)
	}
	for _, want := range []string{"b       down        5s ago  25s        10.99.0.2  1.5ms  4/9", "NOT READY:\n  tunnel b: peer 10.99.0.2 is down"} {
		if !strings.Contains(out, want) {
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}
	if _, _, code := cli(t, t.Context(), "status", "--addr", addr, "--json"); code != ExitNotReady {
		t.Errorf("status --json of an unready daemon = %d, want %d", code, ExitNotReady)
	}
}
