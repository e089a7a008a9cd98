package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/ipipstack/ipipstack/config"
	"github.com/ipipstack/ipipstack/daemon"
	"github.com/ipipstack/ipipstack/internal/servicetest"
)

func cli(t *testing.T, ctx context.Context, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var o, e bytes.Buffer
	code = Main(ctx, args, &o, &e)
	return o.String(), e.String(), code
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func freeUDPPort(t *testing.T) int {
	t.Helper()
	return servicetest.FreePort(t)
}

func TestExitCodes(t *testing.T) {
	good := writeFile(t, "good.hcl", `tunnel "t" {
  local     = "127.0.0.1:4700"
  remote    = "127.0.0.1:4701"
  addresses = ["10.99.0.1/30"]
}`)
	bad := writeFile(t, "bad.hcl", `tunnel "t" {
  local = "127.0.0.1:4700"
}`)
	tests := []struct {
		args []string
		code int
		out  string // in stdout
		err  string // in stderr
	}{
		{nil, ExitUsage, "", "Usage: ipipstack <command>"},
		{[]string{"--help"}, ExitOK, "Exit status:", ""},
		{[]string{"-h"}, ExitOK, "Commands:", ""},
		{[]string{"help"}, ExitOK, "Commands:", ""},
		{[]string{"help", "run"}, ExitOK, "Usage: ipipstack run", ""},
		{[]string{"help", "nope"}, ExitUsage, "", "unknown command"},
		{[]string{"nope"}, ExitUsage, "", `unknown command "nope"`},
		{[]string{"--nope"}, ExitUsage, "", "unknown flag --nope"},
		{[]string{"--version"}, ExitOK, "gvisor", ""},
		{[]string{"check", "-c", good}, ExitOK, good + ": OK\n1 tunnel (t), 0 forwards", ""},
		{[]string{"check", "--config", good}, ExitOK, ": OK", ""},
		{[]string{"check", "-c", bad}, ExitUsage, "", bad + ":1:"},
		{[]string{"check"}, ExitUsage, "", "missing -c FILE"},
		{[]string{"check", "-c"}, ExitUsage, "", "flag needs an argument"},
		{[]string{"check", "-c", good, "more"}, ExitUsage, "", `unexpected argument "more"`},
		{[]string{"run", "--help"}, ExitOK, "--drain-timeout", ""},
		{[]string{"run", "-c", good, "--log-format", "xml"}, ExitUsage, "", "invalid --log-format"},
		{[]string{"run", "-c", good, "--drain-timeout", "-1s"}, ExitUsage, "", "must not be negative"},
		{[]string{"run", "-c", bad}, ExitUsage, "", "invalid configuration (2 errors)"},
		{[]string{"status", "-c", good}, ExitUsage, "", "has no status block"},
		{[]string{"status", "--addr", "nonsense"}, ExitUsage, "", "want HOST:PORT"},
		{[]string{"status", "--timeout", "0s"}, ExitUsage, "", "--timeout must be positive"},
		{[]string{"demo", "--size", "-1"}, ExitUsage, "", "--size must be"},
	}
	for _, tt := range tests {
		out, errOut, code := cli(t, t.Context(), tt.args...)
		if code != tt.code || !strings.Contains(out, tt.out) || !strings.Contains(errOut, tt.err) {
			t.Errorf("ipipstack %s = %d\nstdout:\n%s\nstderr:\n%s\nwant %d, stdout with %q, stderr with %q",
				strings.Join(tt.args, " "), code, out, errOut, tt.code, tt.out, tt.err)
		}
	}
}

// TestHelpListsFlags: every flag a command accepts appears in its help,
// and every command's help has a usage line, a description and an example.
func TestHelpListsFlags(t *testing.T) {
	accepted := map[string][]string{
		"run":        {"-c", "--config", "--log-format", "--log-level", "--drain-timeout"},
		"check":      {"-c", "--config"},
		"status":     {"-c", "--config", "--addr", "--json", "--timeout"},
		"reload":     {"-c", "--config", "--pid", "--timeout"},
		"version":    nil,
		"demo":       {"--size"},
		"ping":       {"-c", "--config", "--addr", "--count", "--interval", "--timeout"},
		"traceroute": {"-c", "--config", "--addr", "--max-hops", "--wait"},
		"nc":         {"-c", "--config", "--socks5", "--timeout"},
	}
	for _, c := range commands {
		var b bytes.Buffer
		writeHelp(&b, c)
		h := b.String()
		for _, want := range []string{"Usage: ipipstack " + c.name, "Example:\n  ipipstack " + c.name, "-h, --help"} {
			if !strings.Contains(h, want) {
				t.Errorf("help of %s lacks %q:\n%s", c.name, want, h)
			}
		}
		flags, ok := accepted[c.name]
		if !ok {
			t.Errorf("command %s is not covered by this test", c.name)
		}
		for _, f := range flags {
			if !strings.Contains(h, f) {
				t.Errorf("help of %s lacks %s", c.name, f)
			}
			// The flag is really accepted: with a bogus value it fails on
			// the value, not as an unknown flag.
			_, errOut, _ := cli(t, t.Context(), c.name, f+"=")
			if strings.Contains(errOut, "not defined") {
				t.Errorf("%s %s: %s", c.name, f, errOut)
			}
		}
	}
}

func TestLogOverrides(t *testing.T) {
	tests := []struct {
		format, level string
		wantF         *config.LogFormat
		wantL         *config.LogLevel
		wantErr       bool
	}{
		{"", "", nil, nil, false},
		{"json", "debug", ptr(config.LogJSON), ptr(config.LogDebug), false},
		{"text", "warn", ptr(config.LogText), ptr(config.LogWarn), false},
		{"", "error", nil, ptr(config.LogError), false},
		{"yaml", "", nil, nil, true},
		{"", "trace", nil, nil, true},
	}
	for _, tt := range tests {
		f, l, err := logOverrides(tt.format, tt.level)
		if (err != nil) != tt.wantErr {
			t.Errorf("logOverrides(%q, %q) error = %v, want error %v", tt.format, tt.level, err, tt.wantErr)
			continue
		}
		if diff := cmp.Diff(tt.wantF, f); diff != "" {
			t.Errorf("logOverrides(%q, %q) format (-want +got):\n%s", tt.format, tt.level, diff)
		}
		if diff := cmp.Diff(tt.wantL, l); diff != "" {
			t.Errorf("logOverrides(%q, %q) level (-want +got):\n%s", tt.format, tt.level, diff)
		}
	}
}

// TestRunInProcess: run brings the daemon up with the flags' log settings
// and exits 0 when its context ends; status reads its status server.
func TestRunInProcess(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	statusAddr := ln.Addr().String()
	ln.Close()
	file := writeFile(t, "run.hcl", fmt.Sprintf(`
log {
  level  = "error"
  format = "text"
}
status {
  listen = %q
}
tunnel "t" {
  local     = "127.0.0.1:%d"
  remote    = "127.0.0.1:%d"
  addresses = ["10.99.0.1/30"]
}`, statusAddr, freeUDPPort(t), freeUDPPort(t)))

	ctx, cancel := context.WithCancel(t.Context())
	var errOut servicetest.LogBuffer
	done := make(chan int, 1)
	go func() {
		done <- Main(ctx, []string{"run", "-c", file, "--log-format", "json", "--log-level", "info", "--drain-timeout", "1s"}, &bytes.Buffer{}, &errOut)
	}()
	defer func() {
		cancel()
		select {
		case code := <-done:
			if code != ExitOK {
				t.Errorf("run exited %d after cancel, want 0\n%s", code, errOut.String())
			}
		case <-time.After(10 * time.Second):
			t.Error("run did not return after cancel")
		}
		if !strings.Contains(errOut.String(), `"msg":"ipipstack running"`) {
			t.Errorf("run's log is not JSON at info level:\n%s", errOut.String())
		}
	}()

	var out, serr string
	var code int
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, serr, code = cli(t, t.Context(), "status", "-c", file, "--timeout", "1s")
		if code == ExitOK || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code != ExitOK {
		t.Fatalf("status: exit %d\n%s", code, serr)
	}
	for _, want := range []string{"running", "TUNNEL", "t  ", "udp", "never"} {
		if !strings.Contains(out, want) {
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}
}

func TestStatusTable(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	seen := now.Add(-1500 * time.Millisecond)
	st := daemon.Status{
		Uptime: 3725,
		Tunnels: []daemon.TunnelStatus{{
			Name: "peer1", Transport: "udp", Local: "127.0.0.1:4700", Peer: "127.0.0.1:4701", MTU: 1472,
			RxPackets: 10, RxBytes: 3 << 20, TxPackets: 20, TxBytes: 512, DropsTotal: 3,
			Drops: map[string]uint64{"wrong_peer": 2, "spoofed_source": 1, "martian": 0}, LastSeen: &seen,
		}},
		Services: []daemon.ServiceStatus{{Name: "web", Kind: "forward", Protocol: "tcp", Listen: "127.0.0.1:8080",
			Target: "10.99.0.2:80", Active: 2, Total: 7, BytesFromTarget: 1536}},
		TUN: &daemon.TUNStatus{Name: "ipip0", MTU: 1472, Error: "creating a TUN device needs CAP_NET_ADMIN"},
	}
	st.Build.Version = "v1.2.3"
	var b bytes.Buffer
	writeStatus(&b, &st, now)
	for _, want := range []string{
		"ipipstack v1.2.3, running, up 1h2m5s",
		"peer1   udp        127.0.0.1:4700  127.0.0.1:4701  1472  10       3.0MiB    20       512B      3      2s ago",
		"drops on peer1: wrong_peer=2 spoofed_source=1\n",
		"web      forward  tcp    127.0.0.1:8080  10.99.0.2:80  2       7      0         0          0B         1.5KiB",
		"TUN ipip0 (mtu 1472): down: creating a TUN device needs CAP_NET_ADMIN",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("writeStatus lacks %q:\n%s", want, b.String())
		}
	}
}

func TestStatusFetch(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/status" {
			http.NotFound(w, r)
			return
		}
		json.NewEncoder(w).Encode(daemon.Status{Ready: true, Tunnels: []daemon.TunnelStatus{{Name: "fetched"}}})
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	out, errOut, code := cli(t, t.Context(), "status", "--addr", addr)
	if code != ExitOK || !strings.Contains(out, "fetched") {
		t.Errorf("status --addr = %d\n%s%s", code, out, errOut)
	}
	out, _, code = cli(t, t.Context(), "status", "--addr", addr, "--json")
	if code != ExitOK || !json.Valid([]byte(out)) || !strings.Contains(out, `"fetched"`) {
		t.Errorf("status --json = %d, %q", code, out)
	}
	srv.Close()
	if _, errOut, code := cli(t, t.Context(), "status", "--addr", addr, "--timeout", "2s"); code != ExitFailure || !strings.Contains(errOut, "is ipipstack running") {
		t.Errorf("status of a dead server = %d, %q; want 1", code, errOut)
	}
}

func TestDialable(t *testing.T) {
	for in, want := range map[string]string{
		"0.0.0.0:9100":   "127.0.0.1:9100",
		"[::]:9100":      "[::1]:9100",
		"10.0.0.1:9100":  "10.0.0.1:9100",
		"[fd00::1]:9100": "[fd00::1]:9100",
	} {
		if got := dialable(netip.MustParseAddrPort(in)).String(); got != want {
			t.Errorf("dialable(%s) = %s, want %s", in, got, want)
		}
	}
}

func TestSummary(t *testing.T) {
	cfg := &config.Config{
		Tunnels: []config.Tunnel{{Name: "a"}, {Name: "b"}},
		SOCKS5:  []config.SOCKS5{{Name: "s"}, {Name: "t"}},
		Status:  config.Status{Listen: netip.MustParseAddrPort("127.0.0.1:9100")},
		TUN:     &config.TUN{Name: "ipip0"},
	}
	want := "2 tunnels (a, b), 0 forwards, 0 reverse forwards, 2 SOCKS5 proxies, status on 127.0.0.1:9100, TUN device ipip0"
	if got := summary(cfg); got != want {
		t.Errorf("summary = %q, want %q", got, want)
	}
}

// TestStatusTableQueueDrops checks that the drops of a tunnel's full queue
// show in the table's total and on the tunnel's drops line.
func TestStatusTableQueueDrops(t *testing.T) {
	st := daemon.Status{Tunnels: []daemon.TunnelStatus{{
		Name: "peer1", Transport: "udp", Local: "127.0.0.1:4700", Peer: "127.0.0.1:4701", MTU: 1472, DropsTotal: 3859,
		Drops: map[string]uint64{daemon.QueueFull: 3859, "wrong_peer": 0},
	}}}
	var b bytes.Buffer
	writeStatus(&b, &st, time.Now())
	for _, want := range []string{" 3859 ", "drops on peer1: queue_full=3859\n"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("writeStatus lacks %q:\n%s", want, b.String())
		}
	}
}
