package cli

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/internal/servicetest"
)

func freeTCPAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestRunReload: SIGHUP makes run re-read its file and start an added
// forward; an invalid file on SIGHUP (or POST /reload) is rejected with
// its diagnostics logged and everything keeps running; `ipipstack reload`
// applies a valid file that removes a forward.
func TestRunReload(t *testing.T) {
	statusAddr, f1, f2 := freeTCPAddr(t), freeTCPAddr(t), freeTCPAddr(t)
	head := fmt.Sprintf(`
status {
  listen = %q
}
tunnel "t" {
  local     = "127.0.0.1:%d"
  remote    = "127.0.0.1:%d"
  addresses = ["10.99.0.1/30"]
}
`, statusAddr, freeUDPPort(t), freeUDPPort(t))
	fwd := func(name, listen string) string {
		return fmt.Sprintf("forward %q {\n  listen = %q\n  target = \"10.99.0.2:80\"\n}\n", name, listen)
	}
	file := writeFile(t, "reload.hcl", head+fwd("f1", f1))
	rewrite := func(content string) {
		if err := os.WriteFile(file, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	ctx, cancel := context.WithCancel(t.Context())
	var errOut servicetest.LogBuffer
	done := make(chan int, 1)
	go func() { done <- Main(ctx, []string{"run", "-c", file, "--drain-timeout", "1s"}, io.Discard, &errOut) }()
	defer func() {
		cancel()
		select {
		case code := <-done:
			if code != ExitOK {
				t.Errorf("run exited %d, want 0\n%s", code, errOut.String())
			}
		case <-time.After(20 * time.Second):
			t.Error("run did not return after cancel")
		}
	}()
	status := func() string {
		out, _, _ := cli(t, t.Context(), "status", "--addr", statusAddr, "--json", "--timeout", "2s")
		return out
	}
	waitUntil := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); !cond(); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s\nstatus: %s\nlog:\n%s", what, status(), errOut.String())
			}
		}
	}
	// run has registered for SIGHUP once its status server answers.
	waitUntil("the status server", func() bool { return strings.Contains(status(), `"f1"`) })

	rewrite(head + fwd("f1", f1) + fwd("f2", f2))
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitUntil("forward f2 after SIGHUP", func() bool { return strings.Contains(status(), `"f2"`) })
	if c, err := net.DialTimeout("tcp", f2, 5*time.Second); err != nil {
		t.Errorf("added forward f2 does not listen: %v", err)
	} else {
		c.Close()
	}

	// An invalid file: rejected, logged, nothing changes.
	rewrite(head + fwd("f1", f1) + "forward \"bad\" {\n  listen = \"127.0.0.1:99999\"\n}\n")
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitUntil("the rejection in the log", func() bool { return strings.Contains(errOut.String(), "reload rejected") })
	resp, err := http.Post("http://"+statusAddr+"/reload", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnprocessableEntity || !strings.Contains(string(body), "reload.hcl:") {
		t.Errorf("POST /reload of an invalid file = %d %q, want 422 with the diagnostics", resp.StatusCode, body)
	}
	if st := status(); !strings.Contains(st, `"f1"`) || !strings.Contains(st, `"f2"`) {
		t.Errorf("services after rejected reloads: %s", st)
	}

	// reload -c FILE through the status server removes f2.
	rewrite(head + fwd("f1", f1))
	out, serr, code := cli(t, t.Context(), "reload", "-c", file)
	if code != ExitOK || !strings.Contains(out, "reloaded") {
		t.Fatalf("reload -c = %d %q %q", code, out, serr)
	}
	if st := status(); strings.Contains(st, `"f2"`) || !strings.Contains(st, `"f1"`) {
		t.Errorf("after reload -c removing f2: %s", st)
	}
	if _, serr, code := cli(t, t.Context(), "reload", "-c", writeFile(t, "bad.hcl", "tunnel {")); code != ExitUsage || !strings.Contains(serr, "invalid configuration") {
		t.Errorf("reload -c with an invalid file = %d %q, want %d", code, serr, ExitUsage)
	}
}
