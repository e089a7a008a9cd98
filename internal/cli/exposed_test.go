package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/internal/servicetest"
)

func freeTCPPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// exposedConfig writes a valid file whose SOCKS5 proxy, without
// authentication, listens on every IPv4 address; its listen value is at
// line 7, column 12.
func exposedConfig(t *testing.T) string {
	return writeFile(t, "exposed.hcl", fmt.Sprintf(`tunnel "t" {
  local     = "127.0.0.1:%d"
  remote    = "127.0.0.1:%d"
  addresses = ["10.99.0.1/30"]
}
socks5 "open" {
  listen = "0.0.0.0:%d"
}
`, freeUDPPort(t), freeUDPPort(t), freeTCPPort(t)))
}

// check accepts a proxy open to other hosts but says so, with its position.
func TestCheckWarnsExposed(t *testing.T) {
	file := exposedConfig(t)
	out, serr, code := cli(t, t.Context(), "check", "-c", file)
	if code != ExitOK || !strings.Contains(out, file+": OK") {
		t.Fatalf("check: exit %d, stdout %q; want 0 and OK\n%s", code, out, serr)
	}
	for _, want := range []string{"Warning: Open SOCKS5 proxy", file + ":7:12", "without authentication"} {
		if !strings.Contains(serr, want) {
			t.Errorf("check's stderr lacks %q:\n%s", want, serr)
		}
	}
}

// run logs the same warning, in its log format, with the position.
func TestRunWarnsExposed(t *testing.T) {
	file := exposedConfig(t)
	ctx, cancel := context.WithCancel(t.Context())
	var errOut servicetest.LogBuffer
	done := make(chan int, 1)
	go func() {
		done <- Main(ctx, []string{"run", "-c", file, "--log-format", "json", "--drain-timeout", "1s"}, &bytes.Buffer{}, &errOut)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(errOut.String(), "ipipstack running") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	select {
	case code := <-done:
		if code != ExitOK {
			t.Fatalf("run exited %d, want 0\n%s", code, errOut.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not return after cancel")
	}
	var found bool
	for _, line := range strings.Split(strings.TrimSpace(errOut.String()), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("run's stderr has a line that is not a JSON log record: %q", line)
		}
		if rec["level"] == "WARN" && strings.Contains(fmt.Sprint(rec["msg"]), "Open SOCKS5 proxy") {
			found = true
			if rec["at"] != file+":7:12" {
				t.Errorf("warning at = %v, want %s:7:12", rec["at"], file)
			}
		}
	}
	if !found {
		t.Errorf("run logged no WARN record about the open SOCKS5 proxy:\n%s", errOut.String())
	}
}
