package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/internal/servicetest"
)

// freePort returns a port free for TCP and UDP below the ephemeral range
// (servicetest.FreePort); network is for the reader.
func freePort(t testing.TB, network string) int {
	t.Helper()
	return servicetest.FreePort(t)
}

// proc is a running ipipstack process.
type proc struct {
	name   string
	cmd    *exec.Cmd
	out    servicetest.LogBuffer // stdout and stderr
	done   chan struct{}
	err    error // from Wait, once done is closed
	exited time.Time
}

// env is the environment of child processes: the test's, without proxies.
func env() []string {
	var out []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch strings.ToLower(k) {
		case "http_proxy", "https_proxy", "all_proxy", "no_proxy":
			continue
		}
		out = append(out, kv)
	}
	return out
}

// start runs ipipstack with args. At cleanup a process still running is
// killed, and its output goes to the test log.
func start(t *testing.T, name string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, cmd: exec.Command(bin, args...), done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.out
	p.cmd.Env = env()
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		p.exited = time.Now()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			p.cmd.Process.Kill()
			<-p.done
		}
		t.Logf("output of %s (%s):\n%s", name, strings.Join(args, " "), p.out.String())
	})
	return p
}

// exitCode waits up to timeout for p to exit and returns its exit status.
// A process that does not exit is sent SIGQUIT, so that its goroutine
// dump lands in the test log, and the test fails.
func (p *proc) exitCode(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		p.cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
		}
		t.Fatalf("%s did not exit within %v; sent SIGQUIT (goroutine dump in its output below)", p.name, timeout)
	}
	var ee *exec.ExitError
	switch {
	case p.err == nil:
		return 0
	case errors.As(p.err, &ee):
		return ee.ExitCode()
	}
	t.Fatalf("%s: %v", p.name, p.err)
	return -1
}

// stop sends SIGTERM and expects a clean exit within timeout.
func (p *proc) stop(t *testing.T, timeout time.Duration) {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	if code := p.exitCode(t, timeout); code != 0 {
		t.Errorf("%s exited with %d after SIGTERM, want 0", p.name, code)
	}
}

// waitReady polls the status server at addr until it answers, which the
// daemon does only once everything else is up.
func (p *proc) waitReady(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	c := &http.Client{Timeout: time.Second}
	defer c.CloseIdleConnections()
	for {
		select {
		case <-p.done:
			t.Fatalf("%s exited before it was ready: %v", p.name, p.err)
		default:
		}
		resp, err := c.Get("http://" + addr + "/status")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: status server %s not ready after 15s: %v", p.name, addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// runCLI runs ipipstack to completion and returns its output and status.
func runCLI(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = env()
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ctx.Err() == nil:
		code = ee.ExitCode()
	default:
		t.Fatalf("ipipstack %s: %v\n%s%s", strings.Join(args, " "), err, o.String(), e.String())
	}
	return o.String(), e.String(), code
}

// example returns examples/name with every old string replaced by its new
// one. Each old string must occur, so that a change to the example breaks
// the test loudly rather than silently testing something else.
func example(t *testing.T, name string, replace map[string]string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "examples", name))
	if err != nil {
		t.Fatal(err)
	}
	src := string(b)
	var pairs []string
	for old, new := range replace {
		if !strings.Contains(src, old) {
			t.Fatalf("examples/%s no longer contains %q", name, old)
		}
		pairs = append(pairs, old, new)
	}
	return strings.NewReplacer(pairs...).Replace(src)
}

// writeFile writes a file in the test's temporary directory.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func addr(port int) string { return "127.0.0.1:" + strconv.Itoa(port) }

// peers is the two-peer setup of examples/two-peers-{a,b}.hcl on free
// ports, with the host services B exposes.
type peers struct {
	a, b *proc
	// Ports on 127.0.0.1.
	statusA, statusB, web, echo, socks int
	blob                               []byte // served at /blob by the host HTTP server
	cfgA                               string // path of A's file
	httpProxy                          int    // A's http_proxy "web"
}

// peerOptions tune startPeers.
type peerOptions struct {
	blobSize int
	editA    func(string) string // rewrites A's file
	argsA    []string            // extra flags for A's run
	webB     string              // target of B's reverse "web"; default the host HTTP server
}

// startPeers starts the host services, then B and A, and waits until both
// are ready.
func startPeers(t *testing.T, o peerOptions) *peers {
	t.Helper()
	p := &peers{
		statusA: freePort(t, "tcp"), statusB: freePort(t, "tcp"),
		web: freePort(t, "tcp"), echo: freePort(t, "udp"), socks: freePort(t, "tcp"),
		httpProxy: freePort(t, "tcp"),
	}
	tunA, tunB := freePort(t, "udp"), freePort(t, "udp")
	p.blob = make([]byte, o.blobSize)
	r := rand.NewChaCha8([32]byte{'i', 'p', 'i', 'p'})
	r.Read(p.blob)
	httpAddr := hostHTTP(t, p.blob)
	if o.webB != "" {
		httpAddr = o.webB
	}
	udpAddr := servicetest.UDPEcho(t).String()

	a := example(t, "two-peers-a.hcl", map[string]string{
		"127.0.0.1:4700": addr(tunA), "127.0.0.1:4701": addr(tunB), "127.0.0.1:9100": addr(p.statusA),
		"127.0.0.1:8080": addr(p.web), "127.0.0.1:7000": addr(p.echo), "127.0.0.1:1080": addr(p.socks),
		"127.0.0.1:3128": addr(p.httpProxy),
	})
	if o.editA != nil {
		a = o.editA(a)
	}
	b := example(t, "two-peers-b.hcl", map[string]string{
		"127.0.0.1:4700": addr(tunA), "127.0.0.1:4701": addr(tunB), "127.0.0.1:9101": addr(p.statusB),
		"127.0.0.1:8000": httpAddr, "127.0.0.1:7007": udpAddr,
	})
	p.cfgA = writeFile(t, "a.hcl", a)
	cfgB := writeFile(t, "b.hcl", b)
	p.b = start(t, "peer B", "run", "-c", cfgB)
	p.a = start(t, "peer A", append([]string{"run", "-c", p.cfgA}, o.argsA...)...)
	p.b.waitReady(t, addr(p.statusB))
	p.a.waitReady(t, addr(p.statusA))
	return p
}

// hostHTTP serves blob at /blob, and at /slow an endless stream for as
// long as the client reads, on 127.0.0.1. It returns the address.
func hostHTTP(t *testing.T, blob []byte) string {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("/blob", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(blob)))
		w.Write(blob)
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		chunk := make([]byte, 64<<10)
		for r.Context().Err() == nil {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	})
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux}
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	return ln.Addr().String()
}

// curl runs curl with args and returns the SHA-256 of what it fetched.
func curl(t *testing.T, args ...string) [32]byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "curl.out")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	args = append([]string{"--silent", "--show-error", "--fail", "--max-time", "50", "-o", out}, args...)
	cmd := exec.CommandContext(ctx, "curl", args...)
	cmd.Env = env()
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("curl %s: %v\n%s", strings.Join(args, " "), err, b)
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	io.Copy(h, f)
	return [32]byte(h.Sum(nil))
}

// The parts of the /status document the tests read.
type status struct {
	Draining bool `json:"draining"`
	Tunnels  []struct {
		Name       string            `json:"name"`
		MTU        int               `json:"mtu"`
		RxPackets  uint64            `json:"rx_packets"`
		RxBytes    uint64            `json:"rx_bytes"`
		TxPackets  uint64            `json:"tx_packets"`
		TxBytes    uint64            `json:"tx_bytes"`
		Drops      map[string]uint64 `json:"drops"`
		DropsTotal uint64            `json:"drops_total"`
		LastSeen   *time.Time        `json:"last_seen"`
	} `json:"tunnels"`
	Services []struct {
		Name            string `json:"name"`
		Kind            string `json:"kind"`
		Protocol        string `json:"protocol"`
		Listen          string `json:"listen"`
		Active          int64  `json:"active"`
		Total           uint64 `json:"total"`
		BytesToTarget   uint64 `json:"bytes_to_target"`
		BytesFromTarget uint64 `json:"bytes_from_target"`
	} `json:"services"`
}

func getStatus(t *testing.T, statusAddr string) status {
	t.Helper()
	var st status
	if err := json.Unmarshal(get(t, "http://"+statusAddr+"/status"), &st); err != nil {
		t.Fatalf("/status: %v", err)
	}
	return st
}

func get(t *testing.T, url string) []byte {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	defer c.CloseIdleConnections()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %v", url, resp.Status, err)
	}
	return b
}

// service returns the status of a service, failing if it is missing.
func (st *status) service(t *testing.T, kind, name string) (active int64, total, bytesFrom uint64) {
	t.Helper()
	for _, s := range st.Services {
		if s.Kind == kind && s.Name == name {
			return s.Active, s.Total, s.BytesFromTarget
		}
	}
	t.Fatalf("no %s %q in /status: %+v", kind, name, st.Services)
	return
}

// udpRoundTrip sends msg to addr and waits for it to come back, retrying
// a few times (UDP may lose the first datagram while sessions start).
func udpRoundTrip(t *testing.T, addr, msg string) {
	t.Helper()
	c, err := net.Dial("udp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 1500)
	for range 5 {
		c.Write([]byte(msg))
		c.SetReadDeadline(time.Now().Add(time.Second))
		n, err := c.Read(buf)
		if err == nil && string(buf[:n]) == msg {
			return
		}
	}
	t.Fatalf("no UDP echo of %q through %s", msg, addr)
}

func mustContain(t *testing.T, what, s string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(s, w) {
			t.Errorf("%s lacks %q:\n%s", what, w, s)
		}
	}
}
