package cli

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/config"
	"github.com/ipipstack/ipipstack/daemon"
)

// twoDaemons starts A (with a status server on a free port) and B, joined
// by a UDP tunnel on 10.99.0.0/24, and returns A's status address.
func twoDaemons(t *testing.T) string {
	t.Helper()
	pa, pb := freeUDPPort(t), freeUDPPort(t)
	start := func(src string, status bool) *daemon.Daemon {
		cfg, diags := config.Parse([]byte(src), "test.hcl")
		if diags.HasErrors() {
			t.Fatal(diags)
		}
		if status {
			cfg.Status.Listen = netip.MustParseAddrPort("127.0.0.1:0")
		}
		d, err := daemon.Start(t.Context(), cfg, daemon.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			d.Shutdown(ctx)
		})
		return d
	}
	start(fmt.Sprintf(`tunnel "a" {
  local     = "127.0.0.1:%d"
  remote    = "127.0.0.1:%d"
  addresses = ["10.99.0.2/24"]
}`, pb, pa), false)
	a := start(fmt.Sprintf(`status {
  listen = "127.0.0.1:1"
}
tunnel "b" {
  local     = "127.0.0.1:%d"
  remote    = "127.0.0.1:%d"
  addresses = ["10.99.0.1/24"]
}`, pa, pb), true)
	return a.StatusAddr().String()
}

func TestPingCommand(t *testing.T) {
	addr := twoDaemons(t)
	out, errOut, code := cli(t, t.Context(), "ping", "--addr", addr, "--count", "2", "--interval", "100ms", "10.99.0.2")
	if code != ExitOK {
		t.Fatalf("ping = %d\n%s%s", code, out, errOut)
	}
	want := regexp.MustCompile(`^PING 10\.99\.0\.2 from the ipipstack at ` + regexp.QuoteMeta(addr) + `
reply from 10\.99\.0\.2: seq=1 time=\d+\.\d{3} ms
reply from 10\.99\.0\.2: seq=2 time=\d+\.\d{3} ms

--- 10\.99\.0\.2 ping statistics ---
2 packets transmitted, 2 received, 0% packet loss
rtt min/avg/max = \d+\.\d{3}/\d+\.\d{3}/\d+\.\d{3} ms
$`)
	if !want.MatchString(out) {
		t.Errorf("ping output:\n%s\nwant it to match\n%s", out, want)
	}

	// Nobody has 10.99.0.77: B drops the requests. Total loss exits 1.
	out, _, code = cli(t, t.Context(), "ping", "--addr", addr, "--count", "1", "--timeout", "200ms", "10.99.0.77")
	if code != ExitFailure || !strings.Contains(out, "no reply from 10.99.0.77: seq=1 timeout") || !strings.Contains(out, "1 packets transmitted, 0 received, 100% packet loss") {
		t.Errorf("ping of a silent address = %d\n%s", code, out)
	}
}

func TestTracerouteCommand(t *testing.T) {
	addr := twoDaemons(t)
	out, errOut, code := cli(t, t.Context(), "traceroute", "10.99.0.2", "--addr", addr, "--max-hops", "3")
	if code != ExitOK {
		t.Fatalf("traceroute = %d\n%s%s", code, out, errOut)
	}
	want := regexp.MustCompile(`^traceroute to 10\.99\.0\.2, 3 hops max, from the ipipstack at ` + regexp.QuoteMeta(addr) + `
 1  10\.99\.0\.2  \d+\.\d{3} ms
$`)
	if !want.MatchString(out) {
		t.Errorf("traceroute output:\n%s\nwant it to match\n%s", out, want)
	}
	out, _, code = cli(t, t.Context(), "traceroute", "--addr", addr, "--max-hops", "2", "--wait", "100ms", "10.99.0.77")
	if code != ExitFailure || out != "traceroute to 10.99.0.77, 2 hops max, from the ipipstack at "+addr+"\n 1  *\n 2  *\n" {
		t.Errorf("traceroute to a silent address = %d\n%q", code, out)
	}
}

// The hop lines, as traceroute prints them.
func TestWriteHop(t *testing.T) {
	var b bytes.Buffer
	for _, h := range []daemon.TraceHop{
		{TTL: 1, Addr: "10.98.1.2", RTTSeconds: 0.000412},
		{TTL: 2},
		{TTL: 10, Addr: "10.98.9.1", RTTSeconds: 0.0015, Unreachable: true},
	} {
		writeHop(&b, h)
	}
	want := " 1  10.98.1.2  0.412 ms\n 2  *\n10  10.98.9.1  1.500 ms !H\n"
	if b.String() != want {
		t.Errorf("writeHop =\n%q\nwant\n%q", b.String(), want)
	}
}

func TestDiagUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		err  string
	}{
		{[]string{"ping"}, "missing ADDR"},
		{[]string{"ping", "example.com"}, "the tunnels have no DNS"},
		{[]string{"ping", "10.0.0.1", "10.0.0.2"}, `unexpected argument "10.0.0.2"`},
		{[]string{"ping", "--count", "0", "10.0.0.1"}, "--count must be 1..100"},
		{[]string{"traceroute", "--max-hops", "65", "10.0.0.1"}, "--max-hops must be 1..64"},
		{[]string{"traceroute", "--addr", "x", "10.0.0.1"}, "want HOST:PORT"},
		{[]string{"ping", "-c", "3", "10.0.0.1"}, "-c is the configuration file here; the number of requests is --count 3"},
	} {
		if _, errOut, code := cli(t, t.Context(), tc.args...); code != ExitUsage || !strings.Contains(errOut, tc.err) {
			t.Errorf("ipipstack %s = %d %q, want 2 and %q", strings.Join(tc.args, " "), code, errOut, tc.err)
		}
	}
}
