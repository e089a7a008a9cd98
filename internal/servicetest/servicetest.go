// Package servicetest holds helpers that tests of several packages share:
// a goroutine leak check and a dependency check for the service packages,
// polling for a condition, a UDP echo server on the host, and a buffer
// safe for concurrent writes (LogBuffer), for logs, process output and
// captures.
package servicetest

import (
	"bytes"
	"errors"
	"log/slog"
	"net"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// CheckNoLeaks fails t if goroutines running this module's service code
// (not test code) are still alive after a short grace period. The service
// tests do not run in parallel, so any such goroutine is a leak.
func CheckNoLeaks(t testing.TB) {
	t.Helper()
	var leaked []string
	for range 100 {
		leaked = serviceGoroutines()
		if len(leaked) == 0 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Errorf("%d goroutines leaked:\n%s", len(leaked), strings.Join(leaked, "\n\n"))
}

func serviceGoroutines() []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var out []string
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		s := string(g)
		if strings.Contains(s, "github.com/ipipstack/ipipstack/service") && !strings.Contains(s, "_test.go") &&
			!strings.Contains(s, "internal/servicetest") {
			out = append(out, s)
		}
	}
	return out
}

// WaitFor polls cond until it holds, or fails t after 5 s.
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// UDPEcho starts a UDP echo server on a free loopback port, stopped when t
// ends, and returns its address.
func UDPEcho(t testing.TB) *net.UDPAddr {
	t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65535)
		for {
			n, addr, err := pc.ReadFrom(buf)
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if err == nil {
				pc.WriteTo(buf[:n], addr)
			}
		}
	}()
	t.Cleanup(func() { pc.Close(); <-done })
	return pc.LocalAddr().(*net.UDPAddr)
}

// CheckDeps fails t if the package in the working directory (a test's own
// package) imports gVisor, HCL or the stack, endpoint, config or command
// packages: a service depends on service.Network alone, so that its tests
// run against the host.
func CheckDeps(t testing.TB) {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command:", err)
	}
	out, err := exec.Command(goBin, "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, dep := range strings.Fields(string(out)) {
		for _, bad := range []string{"gvisor.dev/", "github.com/hashicorp/hcl", "github.com/ipipstack/ipipstack/cmd",
			"github.com/ipipstack/ipipstack/stack", "github.com/ipipstack/ipipstack/endpoint", "github.com/ipipstack/ipipstack/config"} {
			if strings.HasPrefix(dep, bad) {
				t.Errorf("imports %s", dep)
			}
		}
	}
}

// LogBuffer collects the lines of a text slog.Logger, for tests that count
// what a service logged, or anything else written concurrently (a child
// process's output, a packet capture). Its zero value is ready.
type LogBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Logger returns a logger writing every level to b.
func (b *LogBuffer) Logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func (b *LogBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns everything logged so far.
func (b *LogBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Bytes returns a copy of everything written so far.
func (b *LogBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.buf.Bytes())
}

// Lines returns the lines logged at level ("WARN", "DEBUG", ...) whose
// text contains substr.
func (b *LogBuffer) Lines(level, substr string) []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	for _, l := range strings.Split(b.buf.String(), "\n") {
		if strings.Contains(l, "level="+level+" ") && strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return out
}
