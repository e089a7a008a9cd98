package daemon

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/config"
)

// echoThrough sends msg through the TCP forward at addr (B echoes) and
// returns what came back.
func echoThrough(t *testing.T, addr, msg string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("echo through %s: %v", addr, err)
	}
	return string(got)
}

func cloneConfig(c *config.Config) *config.Config {
	n := *c
	n.Tunnels = slices.Clone(c.Tunnels)
	n.Forwards = slices.Clone(c.Forwards)
	n.Reverses = slices.Clone(c.Reverses)
	n.SOCKS5 = slices.Clone(c.SOCKS5)
	return &n
}

// TestReloadWhileTransferring reloads A while a TCP transfer runs through
// its unchanged forward "web": the reload adds forward "web2", removes the
// UDP forward "echo" and restarts the SOCKS5 proxy with a changed limit.
// The transfer arrives byte-exact over the same connection, the new
// forward relays, the removed one no longer listens.
func TestReloadWhileTransferring(t *testing.T) {
	p := newPair(t, pairOptions{})
	web := svcStatus(t, p.a, KindForward, "web")
	echo := svcStatus(t, p.a, KindForward, "echo")

	c, err := net.DialTimeout("tcp", web.Listen, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(120 * time.Second))
	const size = 16 << 20
	sent, got := sha256.New(), sha256.New()
	readDone := make(chan error, 1)
	go func() {
		_, err := io.CopyN(got, c, size)
		readDone <- err
	}()
	src := io.TeeReader(io.LimitReader(rand.NewChaCha8([32]byte{9}), size), sent)
	if _, err := io.CopyN(c, src, size/2); err != nil {
		t.Fatal(err)
	}

	cfg := cloneConfig(p.a.cfg)
	cfg.Forwards = slices.DeleteFunc(cfg.Forwards, func(f config.Forward) bool { return f.Name == "echo" })
	cfg.Forwards = append(cfg.Forwards, config.Forward{Name: "web2", Listen: netip.MustParseAddrPort("127.0.0.1:0"),
		Target: netip.MustParseAddrPort("10.99.0.2:80"), MaxConnections: 8})
	cfg.SOCKS5[0].MaxConnections = 7
	reloaded := make(chan error, 1)
	go func() { reloaded <- p.a.Reload(context.Background(), cfg) }()
	if _, err := io.Copy(c, src); err != nil {
		t.Fatalf("writing the second half during the reload: %v", err)
	}
	if err := <-reloaded; err != nil {
		t.Fatalf("Reload: %v", err)
	}
	if err := <-readDone; err != nil {
		t.Fatalf("reading the echo: %v", err)
	}
	if !bytes.Equal(sent.Sum(nil), got.Sum(nil)) {
		t.Fatalf("echo SHA-256 %x, sent %x", got.Sum(nil), sent.Sum(nil))
	}
	if s := svcStatus(t, p.a, KindForward, "web"); s.Total != 1 || s.Listen != web.Listen {
		t.Errorf("forward web after reload: %+v; want the same listener with its 1 connection", s)
	}

	web2 := svcStatus(t, p.a, KindForward, "web2")
	if msg := echoThrough(t, web2.Listen, "through web2"); msg != "through web2" {
		t.Errorf("echo through the added forward = %q", msg)
	}
	for _, s := range p.a.Status().Services {
		if s.Name == "echo" {
			t.Errorf("removed forward echo still in the status: %+v", s)
		}
	}
	// The UDP port of the removed forward is free again.
	if pc, err := net.ListenPacket("udp", echo.Listen); err != nil {
		t.Errorf("removed forward's port %s still taken: %v", echo.Listen, err)
	} else {
		pc.Close()
	}
	names := []string{}
	for _, s := range p.a.Status().Services {
		names = append(names, s.Kind+"/"+s.Name)
	}
	if want := []string{"forward/web", "forward/web2", "socks5/proxy"}; !slices.Equal(names, want) {
		t.Errorf("services after reload = %v, want %v", names, want)
	}
}

// TestReloadTunnels removes one tunnel, adds another and changes the
// routes of a third in place: the removed tunnel's routes leave the stack,
// the added one carries traffic, the rerouted one keeps its counters.
func TestReloadTunnels(t *testing.T) {
	ports := make([]uint16, 6)
	for i := range ports {
		ports[i] = freeUDPPort(t)
	}
	tunnel := func(name string, local, remote uint16, addr string, extra string) string {
		return fmt.Sprintf(`
tunnel %q {
  local     = "127.0.0.1:%d"
  remote    = "127.0.0.1:%d"
  addresses = [%q]
  %s
}`, name, local, remote, addr, extra)
	}
	// B answers on three tunnels.
	cfgB := parse(t, tunnel("x", ports[1], ports[0], "10.51.0.2/30", "")+
		tunnel("y", ports[3], ports[2], "10.52.0.2/30", "")+
		tunnel("z", ports[5], ports[4], "10.53.0.2/30", ""))
	startDaemon(t, cfgB, Options{Logger: testLogger(t, nil).With("peer", "B")})
	cfgA := parse(t, tunnel("x", ports[0], ports[1], "10.51.0.1/30", `routes = ["10.151.0.0/16"]`)+
		tunnel("y", ports[2], ports[3], "10.52.0.1/30", `routes = ["10.152.0.0/16"]`))
	a := startDaemon(t, cfgA, Options{Logger: testLogger(t, nil).With("peer", "A")})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := a.Stack().Ping(ctx, netip.MustParseAddr("10.52.0.2")); err != nil {
		t.Fatal(err)
	}
	xTx := a.Stack().Endpoint("x")

	next := parse(t, tunnel("x", ports[0], ports[1], "10.51.0.1/30", `routes = ["10.161.0.0/16"]`)+
		tunnel("z", ports[4], ports[5], "10.53.0.1/30", ""))
	if err := a.Reload(context.Background(), next); err != nil {
		t.Fatal(err)
	}
	var routes []string
	for _, r := range a.Stack().Routes() {
		routes = append(routes, r.Prefix.String()+"@"+r.Tunnel)
	}
	want := []string{"10.161.0.0/16@x", "10.51.0.0/30@x", "10.53.0.0/30@z"}
	slices.Sort(routes)
	if !slices.Equal(routes, want) {
		t.Errorf("routes after reload = %v, want %v", routes, want)
	}
	if a.Stack().Endpoint("x") != xTx {
		t.Error("tunnel x, whose routes alone changed, was restarted")
	}
	var tunnels []string
	for _, ts := range a.Status().Tunnels {
		tunnels = append(tunnels, ts.Name)
	}
	if !slices.Equal(tunnels, []string{"x", "z"}) {
		t.Errorf("tunnels after reload = %v, want [x z]", tunnels)
	}
	if _, err := a.Stack().Ping(ctx, netip.MustParseAddr("10.53.0.2")); err != nil {
		t.Errorf("ping over the added tunnel z: %v", err)
	}
	if n := len(a.config().Tunnels); n != 2 {
		t.Errorf("running configuration has %d tunnels, want 2", n)
	}
	// Tunnel y's name and port are free again: it can come back.
	if err := a.Reload(context.Background(), cfgA); err != nil {
		t.Fatalf("reload back: %v", err)
	}
	if _, err := a.Stack().Ping(ctx, netip.MustParseAddr("10.52.0.2")); err != nil {
		t.Errorf("ping over the re-added tunnel y: %v", err)
	}
	if strings.Contains(fmt.Sprint(a.Stack().Routes()), `"z"`) {
		t.Errorf("routes of removed z remain: %v", a.Stack().Routes())
	}
}
