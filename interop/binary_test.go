//go:build linux && interop

package interop

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// testBinary runs the `ipipstack run` binary in the namespace with two of
// the kinds' tunnels (raw ipip, and FOU over IPv4 with encap-sport auto and
// inner IPv6) and moves 4 MiB through a local forward of each to the
// kernel's nc, byte for byte.
func (e *env) testBinary(t *testing.T) {
	byName := map[string]kind{}
	for _, k := range kinds {
		byName[k.name] = k
	}
	ipip, fou := byName["ipip"], byName["fou4-sit-csum-autosport"]
	dir := t.TempDir()
	bin := filepath.Join(dir, "ipipstack")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/ipipstack").CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/ipipstack: %v\n%s", err, out)
	}
	cfg := fmt.Sprintf(`log {
  level = "info"
}
tunnel "ipip" {
  transport = "raw"
  local     = %q
  remote    = %q
  addresses = [%q]
}
tunnel "fou" {
  transport       = "udp"
  local           = %q
  remote          = %q
  addresses       = [%q]
  any_source_port = true
}
forward "to-ipip" {
  protocol = "tcp"
  listen   = "127.0.0.1:8001"
  target   = %q
}
forward "to-fou" {
  protocol = "tcp"
  listen   = "127.0.0.1:8002"
  target   = %q
}
`, ipip.usOuter(), ipip.vmOuter(), ipip.usInner(),
		fmt.Sprintf("%s:%d", fou.usOuter(), fou.usPort()), fmt.Sprintf("%s:%d", fou.vmOuter(), fou.fouPort()), fou.usInner(),
		fmt.Sprintf("%s:7010", ipip.vmInner().Addr()), fmt.Sprintf("[%s]:7011", fou.vmInner().Addr()))
	path := filepath.Join(dir, "interop.hcl")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := e.ns.Command(bin, "run", "-c", path)
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("ipipstack run: %v", err)
	}
	exited := make(chan struct{}) // closed once cmd.Wait returned waitErr
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
			t.Errorf("ipipstack run did not stop within 10 s of SIGTERM")
		}
		if t.Failed() {
			t.Logf("ipipstack run's output:\n%s", logs.String())
		}
	})

	for _, c := range []struct {
		name   string
		listen string
		port   int
	}{{"ipip", "127.0.0.1:8001", 7010}, {"fou4-sit-csum-autosport", "127.0.0.1:8002", 7011}} {
		t.Run(c.name, func(t *testing.T) {
			e.vmRun(t, fmt.Sprintf("rm -f /tmp/rxb; timeout 60 nc -l -p %d > /tmp/rxb &", c.port), 5*time.Second)
			// The forward dials once: nc must listen before it does.
			e.vmRun(t, fmt.Sprintf("i=0; while [ $i -lt 100 ] && ! netstat -ltn | grep -q ':%d '; do usleep 50000; i=$((i+1)); done; netstat -ltn | grep -q ':%d '", c.port, c.port), 10*time.Second)
			conn, err := e.dialNS(c.listen, exited, &waitErr)
			if err != nil {
				t.Fatalf("ipipstack run, forward %s: %v", c.listen, err)
			}
			data := blob(kind{idx: 50 + c.port})
			conn.SetDeadline(time.Now().Add(50 * time.Second))
			_, werr := conn.Write(data)
			conn.Close()
			e.vmRun(t, "wait", 70*time.Second)
			if werr != nil {
				t.Fatalf("ipipstack run, forward %s -> kernel: write: %v", c.listen, werr)
			}
			out := e.vmRun(t, "sha256sum /tmp/rxb; wc -c < /tmp/rxb", 10*time.Second)
			want := sha256.Sum256(data)
			if f := strings.Fields(out); f[0] != hex.EncodeToString(want[:]) {
				t.Fatalf("ipipstack run (%s), forward %s: the kernel received %s bytes with SHA-256 %s, want %d with %x", c.name, c.listen, f[len(f)-1], f[0], len(data), want)
			}
		})
	}
}

// dialNS connects to a TCP address inside the namespace, retrying for 10 s
// while the process that should listen there starts; exited is closed
// (and waitErr set) when that process has exited.
func (e *env) dialNS(addr string, exited <-chan struct{}, waitErr *error) (net.Conn, error) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		var conn net.Conn
		err := e.ns.Do(func() (err error) {
			conn, err = net.DialTimeout("tcp", addr, 2*time.Second)
			return err
		})
		if err == nil {
			return conn, nil
		}
		select {
		case <-exited:
			return nil, fmt.Errorf("the process exited (%v) before %s accepted: %v", *waitErr, addr, err)
		default:
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("nothing accepted on %s within 10 s: %v", addr, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
