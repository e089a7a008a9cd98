package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/internal/servicetest"
)

// TestSharedPortStatusAndReload runs two tunnels of A on one local port,
// then reloads to remove one and add a third on the same port: the socket
// stays, the kept tunnel is not restarted, the added one carries traffic.
// A datagram from no tunnel's peer shows once as the socket's wrong_peer
// in /status and /metrics, in no tunnel's drops, and is warned about once,
// by the socket.
func TestSharedPortStatusAndReload(t *testing.T) {
	hub := freeUDPPort(t)
	peerPorts := []uint16{freeUDPPort(t), freeUDPPort(t), freeUDPPort(t)}
	tunnel := func(name string, local, remote uint16, addr string) string {
		return fmt.Sprintf(`
tunnel %q {
  local     = "127.0.0.1:%d"
  remote    = "127.0.0.1:%d"
  addresses = [%q]
}`, name, local, remote, addr)
	}
	startDaemon(t, parse(t, tunnel("x", peerPorts[0], hub, "10.51.0.2/30")+
		tunnel("y", peerPorts[1], hub, "10.52.0.2/30")+
		tunnel("z", peerPorts[2], hub, "10.53.0.2/30")), Options{Logger: testLogger(t, nil).With("peer", "B")})
	var logs servicetest.LogBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	a := startDaemon(t, parse(t, tunnel("x", hub, peerPorts[0], "10.51.0.1/30")+
		tunnel("y", hub, peerPorts[1], "10.52.0.1/30")), Options{Logger: log})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, dst := range []string{"10.51.0.2", "10.52.0.2"} {
		if _, err := a.Stack().Ping(ctx, netip.MustParseAddr(dst)); err != nil {
			t.Fatalf("ping %s: %v", dst, err)
		}
	}
	local := fmt.Sprintf("127.0.0.1:%d", hub)
	if s := a.Status().Sockets; len(s) != 1 || s[0].Local != local || s[0].Tunnels != 2 || s[0].Transport != "udp" {
		t.Fatalf("status sockets = %+v, want one udp socket on %s with 2 tunnels", s, local)
	}

	stranger, err := net.Dial("udp4", local)
	if err != nil {
		t.Fatal(err)
	}
	defer stranger.Close()
	if _, err := stranger.Write(ipv4UDP(netip.MustParseAddr("10.51.0.2"), netip.MustParseAddr("10.51.0.1"))); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "wrong_peer of the socket", func() bool { return a.Status().Sockets[0].WrongPeer >= 1 })
	st := a.Status()
	if st.Sockets[0].WrongPeer != 1 {
		t.Errorf("socket wrong_peer = %d, want 1", st.Sockets[0].WrongPeer)
	}
	for _, ts := range st.Tunnels {
		if ts.DropsTotal != 0 {
			t.Errorf("tunnel %s drops %v, want none: the socket counts the stranger", ts.Name, ts.Drops)
		}
	}
	var metric string
	for _, f := range a.collect() {
		if f.name == "ipipstack_socket_wrong_peer_total" {
			for _, s := range f.samples {
				metric = fmt.Sprint(s.labels, "=", s.value)
			}
		}
	}
	if want := fmt.Sprint([]string{"transport", "udp", "local", local}, "=", "1"); metric != want {
		t.Errorf("ipipstack_socket_wrong_peer_total sample %q, want %q", metric, want)
	}
	now := time.Now()
	a.drops.check(now)
	a.drops.check(now.Add(time.Second)) // nothing new: no second warning
	// The socket warns (endpoint.Shared, rate-limited); no tunnel does.
	if n := strings.Count(logs.String(), "level=WARN"); n != 1 || !strings.Contains(logs.String(), "wrong_peer of the socket") {
		t.Errorf("%d warnings about the stranger, want 1:\n%s", n, logs.String())
	}

	x := a.Stack().Endpoint("x")
	next := parse(t, tunnel("x", hub, peerPorts[0], "10.51.0.1/30")+tunnel("z", hub, peerPorts[2], "10.53.0.1/30"))
	if err := a.Reload(context.Background(), next); err != nil {
		t.Fatal(err)
	}
	if a.Stack().Endpoint("x") != x {
		t.Error("tunnel x, unchanged, was restarted by the reload")
	}
	for _, dst := range []string{"10.51.0.2", "10.53.0.2"} {
		if _, err := a.Stack().Ping(ctx, netip.MustParseAddr(dst)); err != nil {
			t.Errorf("ping %s after the reload: %v", dst, err)
		}
	}
	if s := a.Status().Sockets; len(s) != 1 || s[0].Tunnels != 2 || s[0].WrongPeer != 1 {
		t.Errorf("status sockets after the reload = %+v, want the same socket with 2 tunnels", s)
	}
}
