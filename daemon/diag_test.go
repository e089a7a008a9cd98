package daemon

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// chain3 is three daemons in a line, A — B — C, joined by UDP tunnels;
// B forwards, A routes C's link through B and C routes A's back.
func chain3(t *testing.T) (a, b, c *Daemon) {
	t.Helper()
	pab, pba, pbc, pcb := freeUDPPort(t), freeUDPPort(t), freeUDPPort(t), freeUDPPort(t)
	cfgA := parse(t, fmt.Sprintf(`
tunnel "b" {
  local     = "127.0.0.1:%d"
  remote    = "127.0.0.1:%d"
  addresses = ["10.98.1.1/30", "fd98:1::1/64"]
  routes    = ["10.98.2.0/30", "fd98:2::/64"]
}`, pab, pba))
	cfgB := parse(t, fmt.Sprintf(`
stack {
  forwarding = true
}
tunnel "a" {
  local     = "127.0.0.1:%d"
  remote    = "127.0.0.1:%d"
  addresses = ["10.98.1.2/30", "fd98:1::2/64"]
}
tunnel "c" {
  local     = "127.0.0.1:%d"
  remote    = "127.0.0.1:%d"
  addresses = ["10.98.2.1/30", "fd98:2::1/64"]
}`, pba, pab, pbc, pcb))
	cfgC := parse(t, fmt.Sprintf(`
tunnel "b" {
  local     = "127.0.0.1:%d"
  remote    = "127.0.0.1:%d"
  addresses = ["10.98.2.2/30", "fd98:2::2/64"]
  routes    = ["10.98.1.0/30", "fd98:1::/64"]
}`, pcb, pbc))
	c = startDaemon(t, cfgC, Options{Logger: testLogger(t, nil).With("peer", "C")})
	b = startDaemon(t, cfgB, Options{Logger: testLogger(t, nil).With("peer", "B")})
	a = startDaemon(t, cfgA, Options{Logger: testLogger(t, nil).With("peer", "A")})
	return a, b, c
}

// diag posts to the handler and returns the status and the lines of the
// body.
func diag(t *testing.T, d *Daemon, method, target string) (int, []string) {
	t.Helper()
	rec := httptest.NewRecorder()
	d.Handler().ServeHTTP(rec, httptest.NewRequestWithContext(t.Context(), method, target, nil))
	return rec.Code, strings.Split(strings.TrimSpace(rec.Body.String()), "\n")
}

func TestDiagPing(t *testing.T) {
	a, _, _ := chain3(t)
	for _, dst := range []string{"10.98.2.2", "fd98:2::2"} {
		if raceEnabled && !strings.Contains(dst, ":") {
			t.Logf("%s: skipped under -race (gVisor IPv4 forwarding, see raceEnabled)", dst)
			continue
		}
		code, lines := diag(t, a, http.MethodPost, "/v1/ping?addr="+dst+"&count=3&interval=200ms&timeout=2s")
		if code != http.StatusOK || len(lines) != 3 {
			t.Fatalf("POST /v1/ping %s = %d\n%s", dst, code, strings.Join(lines, "\n"))
		}
		for i, l := range lines {
			var r PingReply
			if err := json.Unmarshal([]byte(l), &r); err != nil {
				t.Fatalf("line %q: %v", l, err)
			}
			if r.Seq != i+1 || r.Addr != dst || r.Error != "" || r.RTTSeconds <= 0 {
				t.Errorf("reply %d = %+v, want seq %d from %s with an RTT", i, r, i+1, dst)
			}
		}
	}
}

func TestDiagTraceroute(t *testing.T) {
	a, _, _ := chain3(t)
	for _, tc := range []struct{ dst, router string }{{"10.98.2.2", "10.98.1.2"}, {"fd98:2::2", "fd98:1::2"}} {
		if raceEnabled && !strings.Contains(tc.dst, ":") {
			t.Logf("%s: skipped under -race (gVisor IPv4 forwarding, see raceEnabled)", tc.dst)
			continue
		}
		code, lines := diag(t, a, http.MethodPost, "/v1/traceroute?addr="+tc.dst+"&max_hops=5&wait=2s")
		if code != http.StatusOK || len(lines) != 2 {
			t.Fatalf("POST /v1/traceroute %s = %d\n%s", tc.dst, code, strings.Join(lines, "\n"))
		}
		var hops []TraceHop
		for _, l := range lines {
			var h TraceHop
			if err := json.Unmarshal([]byte(l), &h); err != nil {
				t.Fatalf("line %q: %v", l, err)
			}
			hops = append(hops, h)
		}
		if h := hops[0]; h.TTL != 1 || h.Addr != tc.router || h.Reached {
			t.Errorf("hop 1 = %+v, want router B at %s", h, tc.router)
		}
		if h := hops[1]; h.TTL != 2 || h.Addr != tc.dst || !h.Reached {
			t.Errorf("hop 2 = %+v, want %s reached", h, tc.dst)
		}
	}
}

func TestDiagBadRequests(t *testing.T) {
	a, _, _ := chain3(t)
	for _, tc := range []struct {
		method, target string
		code           int
	}{
		{http.MethodGet, "/v1/ping?addr=10.98.2.2", http.StatusMethodNotAllowed},
		{http.MethodPost, "/v1/ping", http.StatusBadRequest},
		{http.MethodPost, "/v1/ping?addr=example.com", http.StatusBadRequest},
		{http.MethodPost, "/v1/ping?addr=10.98.2.2&count=1000", http.StatusBadRequest},
		{http.MethodPost, "/v1/ping?addr=10.98.2.2&interval=1ms", http.StatusBadRequest},
		{http.MethodPost, "/v1/traceroute?addr=10.98.2.2&max_hops=65", http.StatusBadRequest},
		{http.MethodPost, "/v1/traceroute?addr=10.98.2.2&wait=1h", http.StatusBadRequest},
	} {
		if code, body := diag(t, a, tc.method, tc.target); code != tc.code {
			t.Errorf("%s %s = %d %q, want %d", tc.method, tc.target, code, body, tc.code)
		}
	}
	// Every slot busy: the next one is refused, not queued.
	for range maxDiagnostics {
		a.slots() <- struct{}{}
	}
	if code, _ := diag(t, a, http.MethodPost, "/v1/ping?addr=10.98.2.2&count=1"); code != http.StatusTooManyRequests {
		t.Errorf("ping with every slot busy = %d, want 429", code)
	}
	for range maxDiagnostics {
		<-a.slots()
	}
	if code, _ := diag(t, a, http.MethodPost, "/v1/ping?addr=fd98:2::2&count=1"); code != http.StatusOK {
		t.Errorf("ping with the slots free again = %d, want 200", code)
	}
}
