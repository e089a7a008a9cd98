package daemon

import (
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/config"
)

// startOne starts a daemon with a tunnel to a peer that never answers, a
// TCP forward, a SOCKS5 proxy and the status server, all on 127.0.0.1 and
// port 0; extra is appended to its config.
func startOne(t *testing.T, opts Options) *Daemon {
	t.Helper()
	cfg := parse(t, fmt.Sprintf(`
status {
  listen = "127.0.0.1:1"
}
tunnel "p" {
  local     = "127.0.0.1:%d"
  remote    = "127.0.0.1:%d"
  addresses = ["10.99.0.1/30"]
}
forward "web" {
  listen = "127.0.0.1:2"
  target = "10.99.0.2:80"
}
socks5 "proxy" {
  listen = "127.0.0.1:3"
}`, freeUDPPort(t), freeUDPPort(t)))
	loop0 := netip.MustParseAddrPort("127.0.0.1:0")
	cfg.Status.Listen, cfg.Forwards[0].Listen, cfg.SOCKS5[0].Listen = loop0, loop0, loop0
	if opts.Logger == nil {
		opts.Logger = testLogger(t, nil)
	}
	return startDaemon(t, cfg, opts)
}

var _ = config.DefaultMaxConnections

// /metrics carries the Go runtime's and the process's standard series next
// to the daemon's own.
func TestMetricsRuntimeAndProcess(t *testing.T) {
	d := startOne(t, Options{})
	hc := &http.Client{Timeout: 5 * time.Second}
	defer hc.CloseIdleConnections()
	metrics := string(get(t, hc, "http://"+d.StatusAddr().String()+"/metrics"))
	value := func(name string) float64 {
		t.Helper()
		m := regexp.MustCompile(`(?m)^` + name + ` (\S+)$`).FindStringSubmatch(metrics)
		if m == nil {
			t.Fatalf("/metrics has no %s series:\n%s", name, metrics)
		}
		v, err := strconv.ParseFloat(m[1], 64)
		if err != nil {
			t.Fatalf("%s = %q: %v", name, m[1], err)
		}
		return v
	}
	// The daemon runs at least its accept loops and the status server.
	if g := value("go_goroutines"); g < 3 {
		t.Errorf("go_goroutines = %v, want at least 3", g)
	}
	// Three listeners, a tunnel socket and the HTTP connection at least,
	// and no more than the test process has now (plus slack for sockets
	// opened since).
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	if n := value("process_open_fds"); n < 5 || n > float64(len(ents)+16) {
		t.Errorf("process_open_fds = %v, want 5..%d (/proc/self/fd has %d entries)", n, len(ents)+16, len(ents))
	}
	if rss := value("process_resident_memory_bytes"); rss < 1<<20 || rss > 1<<40 {
		t.Errorf("process_resident_memory_bytes = %v, want between 1 MiB and 1 TiB", rss)
	}
}
