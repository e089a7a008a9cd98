package forward

import (
	"context"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/internal/servicetest"
)

// warnLines returns the lines of log at level WARN.
func warnLines(log string) []string {
	var out []string
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, "level=WARN") {
			out = append(out, l)
		}
	}
	return out
}

// At the default level (info), a dial failure is a warning naming the
// service, the target and the reason, logged once however many fail.
func TestTCPDialFailureWarnsOnce(t *testing.T) {
	dead := listenTCP(t)
	target := dead.Addr().String()
	dead.Close()

	var buf servicetest.LogBuffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}))
	f := startTCP(t, target, func(f *TCP) { f.Name = "web"; f.Logger = log })
	for range 5 {
		c := dial(t, f.Addr())
		readAllTimeout(t, c, 5*time.Second)
	}
	waitFor(t, "5 dial failures", func() bool { return f.Stats().DialFailures == 5 })
	got := warnLines(buf.String())
	if len(got) != 1 {
		t.Fatalf("%d warnings, want 1:\n%s", len(got), buf.String())
	}
	for _, want := range []string{`msg="dial failed`, "forward=web", "target=" + target, `reason="connection refused"`} {
		if !strings.Contains(got[0], want) {
			t.Errorf("warning %q lacks %q", got[0], want)
		}
	}
}

// A dial that times out says "timeout" and the dial_timeout it waited.
func TestTCPDialTimeoutWarns(t *testing.T) {
	var buf servicetest.LogBuffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	// A target that never answers: a network whose dial blocks until ctx ends.
	f := startTCP(t, "192.0.2.1:80", func(f *TCP) {
		f.Logger = log
		f.DialTimeout = 50 * time.Millisecond
		f.To = blackhole{}
	})
	c := dial(t, f.Addr())
	readAllTimeout(t, c, 5*time.Second)
	waitFor(t, "dial failure", func() bool { return f.Stats().DialFailures == 1 })
	got := warnLines(buf.String())
	if len(got) != 1 || !strings.Contains(got[0], "reason=timeout") || !strings.Contains(got[0], "dial_timeout=50ms") {
		t.Fatalf("warnings = %q, want one with reason=timeout dial_timeout=50ms", got)
	}
}

// blackhole is a network whose dials never answer: they fail when their
// context ends, as a dial to a peer that is not running does.
type blackhole struct{ familyOnly }

func (blackhole) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	<-ctx.Done()
	return nil, &net.OpError{Op: "dial", Net: network, Err: ctx.Err()}
}
