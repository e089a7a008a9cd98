package socks5

import (
	"log/slog"
	"net"
	"strings"
	"testing"

	"github.com/ipipstack/ipipstack/internal/servicetest"
)

// At the default level, failed CONNECTs are one warning naming the proxy,
// the target and the reason, however many fail.
func TestConnectFailureWarnsOnce(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := AddrFromNetAddr(ln.Addr())
	ln.Close()

	var buf servicetest.LogBuffer
	log := slog.New(slog.NewTextHandler(&buf, nil)).With("socks5", "proxy")
	s := startServer(t, func(s *Server) { s.Logger = log })
	for range 3 {
		c, rep, _ := rawHandshake(t, s, Request{CmdConnect, dead})
		c.Close()
		if rep != ReplyConnectionRefused {
			t.Fatalf("reply = %v, want connection refused", rep)
		}
	}
	var warns []string
	for _, l := range strings.Split(buf.String(), "\n") {
		if strings.Contains(l, "level=WARN") {
			warns = append(warns, l)
		}
	}
	if len(warns) != 1 {
		t.Fatalf("%d warnings, want 1:\n%s", len(warns), buf.String())
	}
	for _, want := range []string{"socks5=proxy", "dst=" + dead.String(), `reason="connection refused"`} {
		if !strings.Contains(warns[0], want) {
			t.Errorf("warning %q lacks %q", warns[0], want)
		}
	}
}
