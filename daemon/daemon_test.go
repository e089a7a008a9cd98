package daemon

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/proxy"

	"github.com/ipipstack/ipipstack/internal/servicetest"
	"github.com/ipipstack/ipipstack/stack"
)

func TestTwoDaemons(t *testing.T) {
	checkGoroutines(t)
	p := newPair(t, pairOptions{})
	web := svcStatus(t, p.a, KindForward, "web")

	// TCP through the local forward and B's reverse forward to the echo
	// server on the host, both directions at once.
	const size = 1 << 20
	data := make([]byte, size)
	rand.Read(data)
	c, err := net.DialTimeout("tcp", web.Listen, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	werr := make(chan error, 1)
	go func() { _, err := c.Write(data); werr <- err }()
	got := make([]byte, size)
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("reading the echo: %v", err)
	}
	if err := <-werr; err != nil {
		t.Fatalf("write: %v", err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("echo through the forward differs from what was sent")
	}
	if s := svcStatus(t, p.a, KindForward, "web"); s.Active != 1 || s.Total != 1 || s.BytesToTarget != size {
		t.Errorf("forward web status = %+v, want 1 active, 1 total, %d bytes to target", s, size)
	}
	c.Close()

	// SOCKS5 CONNECT into the stack.
	d, err := proxy.SOCKS5("tcp", svcStatus(t, p.a, KindSOCKS5, "proxy").Listen, nil, proxy.Direct)
	if err != nil {
		t.Fatal(err)
	}
	sc, err := d.Dial("tcp", "10.99.0.2:80")
	if err != nil {
		t.Fatalf("SOCKS5 dial: %v", err)
	}
	defer sc.Close()
	sc.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := sc.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(sc, buf); err != nil || string(buf) != "hello" {
		t.Fatalf("SOCKS5 echo = %q, %v; want hello", buf, err)
	}
	sc.Close()

	// UDP through the forward and the reverse forward.
	uc, err := net.Dial("udp", svcStatus(t, p.a, KindForward, "echo").Listen)
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	var echoed bool
	for i := 0; i < 5 && !echoed; i++ {
		uc.Write([]byte("ping"))
		uc.SetReadDeadline(time.Now().Add(time.Second))
		n, err := uc.Read(buf)
		echoed = err == nil && string(buf[:n]) == "ping"
	}
	if !echoed {
		t.Fatal("no UDP echo through the forwards")
	}

	// The status and metrics served over HTTP.
	st := p.a.Status()
	if len(st.Tunnels) != 1 {
		t.Fatalf("Status().Tunnels = %+v, want one", st.Tunnels)
	}
	tun := st.Tunnels[0]
	if tun.Name != "b" || tun.Transport != "udp" || tun.MTU != 1472 || tun.RxPackets == 0 || tun.TxBytes < size ||
		tun.LastSeen == nil || tun.DropsTotal != 0 || len(tun.Drops) != len(reasonNames()) {
		t.Errorf("Status().Tunnels[0] = %+v", tun)
	}
	hc := &http.Client{Timeout: 5 * time.Second}
	defer hc.CloseIdleConnections()
	base := "http://" + p.a.StatusAddr().String()
	var served Status
	if err := json.Unmarshal(get(t, hc, base+"/status"), &served); err != nil {
		t.Fatalf("/status: %v", err)
	}
	if len(served.Tunnels) != 1 || served.Tunnels[0].RxPackets < tun.RxPackets || len(served.Services) != 3 {
		t.Errorf("/status = %+v", served)
	}
	if served.Forwarding != nil || strings.Contains(string(get(t, hc, base+"/status")), `"forwarding"`) {
		t.Errorf("/status shows forwarding counters for a stack that does not forward: %+v", served.Forwarding)
	}
	metrics := string(get(t, hc, base+"/metrics"))
	m := regexp.MustCompile(`(?m)^ipipstack_tunnel_rx_packets_total\{tunnel="b"\} (\d+)$`).FindStringSubmatch(metrics)
	if m == nil {
		t.Fatalf("/metrics has no rx counter for tunnel b:\n%s", metrics)
	}
	if n, _ := strconv.ParseUint(m[1], 10, 64); n == 0 {
		t.Errorf("ipipstack_tunnel_rx_packets_total = 0, want > 0")
	}
	for _, want := range []string{
		`ipipstack_tunnel_drops_total{reason="spoofed_source",tunnel="b"} 0`,
		`ipipstack_tunnel_drops_total{reason="queue_full",tunnel="b"} 0`,
		`ipipstack_service_active_connections{kind="forward",service="web"} `,
		`ipipstack_service_active_connections{kind="socks5",service="proxy"} `,
		`ipipstack_service_connections_total{kind="forward",service="echo"} 1`,
		`# TYPE ipipstack_tunnel_rx_bytes_total counter`,
		`ipipstack_reassembly_bytes{family="ipv4"} `,
		`ipipstack_tunnel_rx_coalesced_packets_total{tunnel="b"} `,
		`ipipstack_tunnel_path_mtu_learned_total{tunnel="b"} 0`,
		`ipipstack_tunnel_outer_path_mtu_bytes{tunnel="b"} 0`,
		`ipipstack_tunnel_outer_path_mtu_expiry_timestamp_seconds{tunnel="b"} 0`,
		`ipipstack_tunnel_outer_fragmentation{tunnel="b"} 0`,
		`ipipstack_reassembly_bytes{family="ipv6"} `,
		`ipipstack_reassembly_limits_applied 1`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if b := p.b.Status(); len(b.Services) != 2 || b.Services[0].Kind != KindReverse || b.Services[1].Listen != "0.0.0.0:7" {
		t.Errorf("B's services = %+v", b.Services)
	}
}

func get(t *testing.T, c *http.Client, url string) []byte {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s, %v", url, resp.Status, err)
	}
	return b
}

// TestShutdownDrains: an open connection may finish during the drain;
// one that does not is cut when the drain timeout expires.
func TestShutdownDrains(t *testing.T) {
	checkGoroutines(t)
	p := newPair(t, pairOptions{serveTCP: func(c net.Conn) { io.Copy(io.Discard, c) }})
	addr := svcStatus(t, p.a, KindForward, "web").Listen
	dial := func() net.Conn {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if _, err := c.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		return c
	}
	stuck, finishing := dial(), dial()
	waitFor(t, 5*time.Second, "two active connections", func() bool { return svcStatus(t, p.a, KindForward, "web").Active == 2 })
	time.AfterFunc(200*time.Millisecond, func() { finishing.Close() })

	const drain = 700 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), drain)
	defer cancel()
	begin := time.Now()
	done := make(chan error, 1)
	go func() { done <- p.a.Shutdown(ctx) }()

	waitFor(t, 2*time.Second, "draining", func() bool { return p.a.Status().Draining })
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Error("the forward still accepts connections while draining")
	}
	waitFor(t, 2*time.Second, "the closed connection to be gone", func() bool { return svcStatus(t, p.a, KindForward, "web").Active == 1 })

	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Shutdown = %v, want nil after cutting connections", err)
		}
	case <-time.After(drain + 5*time.Second):
		t.Fatal("Shutdown did not return after the drain timeout")
	}
	if el := time.Since(begin); el < drain-50*time.Millisecond {
		t.Errorf("Shutdown returned after %v, before the drain timeout %v, with a connection open", el, drain)
	}
	stuck.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := stuck.Read(make([]byte, 1)); err == nil || !isClosedErr(err) {
		t.Errorf("read on the cut connection = %v, want EOF or reset", err)
	}
}

func TestRunStopsOnCancel(t *testing.T) {
	checkGoroutines(t)
	cfg := parse(t, fmt.Sprintf(`
tunnel "t" {
  local     = "127.0.0.1:%d"
  remote    = "127.0.0.1:%d"
  addresses = ["10.99.0.1/30"]
}`, freeUDPPort(t), freeUDPPort(t)))
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg, Options{Logger: testLogger(t, nil)}) }()
	time.Sleep(50 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

// TestStartFailureCleansUp: a port in use fails Start and leaves nothing
// running or open.
func TestStartFailureCleansUp(t *testing.T) {
	checkGoroutines(t)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	dir := t.TempDir()
	tport := freeUDPPort(t)
	cfg := parse(t, fmt.Sprintf(`
tunnel "t" {
  local     = "127.0.0.1:%d"
  remote    = "127.0.0.1:%d"
  addresses = ["10.99.0.1/30"]
  capture   = %q
}
forward "ok" {
  listen = "127.0.0.1:1"
  target = "10.99.0.2:80"
}
forward "busy" {
  listen = %q
  target = "10.99.0.2:80"
}`, tport, freeUDPPort(t), filepath.Join(dir, "t.pcap"), busy.Addr().String()))
	cfg.Forwards[0].Listen = netip.MustParseAddrPort("127.0.0.1:0")
	d, err := Start(t.Context(), cfg, Options{Logger: testLogger(t, nil)})
	if err == nil {
		d.Shutdown(context.Background())
		t.Fatal("Start with a port in use succeeded")
	}
	if !strings.Contains(err.Error(), `forward "busy"`) || !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("Start error = %v, want forward \"busy\" and EADDRINUSE", err)
	}
	// The tunnel socket is free again.
	pc, err := net.ListenPacket("udp4", fmt.Sprintf("127.0.0.1:%d", tport))
	if err != nil {
		t.Errorf("tunnel port still bound after failed Start: %v", err)
	} else {
		pc.Close()
	}
}

// fakeTUN records how it was started and closed.
type fakeTUN struct {
	opts   TUNOptions
	closed atomic.Bool
}

func (f *fakeTUN) Close() error { f.closed.Store(true); return nil }

func tunConfig(t *testing.T) string {
	return fmt.Sprintf(`
tunnel "t" {
  local     = "127.0.0.1:%d"
  remote    = "127.0.0.1:%d"
  addresses = ["10.99.0.1/30"]
  path_mtu  = 1400
}
tun {
  name      = "iptest0"
  addresses = ["10.98.0.1/24"]
  routes    = ["10.99.0.0/30"]
}`, freeUDPPort(t), freeUDPPort(t))
}

func TestTUN(t *testing.T) {
	defer func(f func() bool) { hasNetAdmin = f }(hasNetAdmin)
	errWant := "CAP_NET_ADMIN"
	tests := []struct {
		name     string
		netAdmin bool
		err      error // returned by the starter
		wantUp   bool
	}{
		{"up", true, nil, true},
		{"no capability", false, nil, false},
		{"EPERM", true, fmt.Errorf("tun: open /dev/net/tun: %w", syscall.EPERM), false},
		{"other error", true, errors.New("tun: no such device"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkGoroutines(t)
			hasNetAdmin = func() bool { return tt.netAdmin }
			var logs servicetest.LogBuffer
			fake := &fakeTUN{}
			started := false
			opts := Options{Logger: testLogger(t, &logs), StartTUN: func(ctx context.Context, s *stack.Stack, o TUNOptions) (io.Closer, error) {
				started = true
				fake.opts = o
				if tt.err != nil {
					return nil, tt.err
				}
				return fake, nil
			}}
			d := startDaemon(t, parse(t, tunConfig(t)), opts)
			st := d.Status().TUN
			if st == nil || st.Up != tt.wantUp || st.Name != "iptest0" || st.MTU != 1400-28 {
				t.Fatalf("Status().TUN = %+v, want up=%v name iptest0 mtu %d", st, tt.wantUp, 1400-28)
			}
			if started != tt.netAdmin {
				t.Errorf("starter called = %v, want %v", started, tt.netAdmin)
			}
			// A TUN device makes the stack a router: its forwarding
			// counters are in the status and the metrics.
			if f := d.Status().Forwarding; f == nil || *f != (ForwardingStatus{}) {
				t.Errorf("Status().Forwarding = %+v, want zero counters", f)
			}
			var names []string
			for _, f := range d.collect() {
				names = append(names, f.name)
			}
			if !slices.Contains(names, "ipipstack_forward_refragmented_total") || !slices.Contains(names, "ipipstack_forward_ttl_expired_total") {
				t.Errorf("metric families %v lack the forwarding counters", names)
			}
			switch {
			case tt.wantUp:
				if fake.opts.Name != "iptest0" || fake.opts.MTU != 1372 || len(fake.opts.Addresses) != 1 || len(fake.opts.Routes) != 1 {
					t.Errorf("TUN options = %+v", fake.opts)
				}
				d.Shutdown(context.Background())
				if !fake.closed.Load() {
					t.Error("TUN device not closed by Shutdown")
				}
			case tt.err == nil || errors.Is(tt.err, syscall.EPERM):
				if !strings.Contains(st.Error, errWant) || !strings.Contains(logs.String(), errWant) {
					t.Errorf("TUN error %q and logs do not mention %s:\n%s", st.Error, errWant, logs.String())
				}
			default:
				if !strings.Contains(st.Error, "no such device") {
					t.Errorf("TUN error = %q, want the starter's", st.Error)
				}
			}
		})
	}
}

// TestCapture: the pcap file has a LINKTYPE_RAW header and the inner
// packets of the tunnel, and is complete after Shutdown.
func TestCapture(t *testing.T) {
	checkGoroutines(t)
	file := filepath.Join(t.TempDir(), "b.pcap")
	p := newPair(t, pairOptions{aTunnel: fmt.Sprintf("capture = %q", file)})
	c, err := net.DialTimeout("tcp", svcStatus(t, p.a, KindForward, "web").Listen, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	c.Write([]byte("captured"))
	io.ReadFull(c, make([]byte, 8))
	c.Close()
	if err := p.a.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) < 24 || binary.LittleEndian.Uint32(b) != 0xa1b2c3d4 || binary.LittleEndian.Uint32(b[20:]) != 101 {
		t.Fatalf("%s has no pcap header for LINKTYPE_RAW: % x", file, b[:min(len(b), 24)])
	}
	var pkts, tcpIn, tcpOut int
	a, peer := netip.MustParseAddr("10.99.0.1"), netip.MustParseAddr("10.99.0.2")
	for rest := b[24:]; len(rest) >= 16; {
		incl := int(binary.LittleEndian.Uint32(rest[8:]))
		if len(rest) < 16+incl {
			t.Fatalf("truncated pcap record after %d packets", pkts)
		}
		pkt := rest[16 : 16+incl]
		rest = rest[16+incl:]
		pkts++
		if len(pkt) < 20 || pkt[0]>>4 != 4 || pkt[9] != 6 {
			continue
		}
		src, dst := netip.AddrFrom4([4]byte(pkt[12:16])), netip.AddrFrom4([4]byte(pkt[16:20]))
		switch {
		case src == a && dst == peer:
			tcpOut++
		case src == peer && dst == a:
			tcpIn++
		}
	}
	if tcpIn == 0 || tcpOut == 0 {
		t.Errorf("%s: %d packets, %d TCP 10.99.0.1→10.99.0.2 and %d back; want both directions", file, pkts, tcpOut, tcpIn)
	}
	if fi, err := os.Stat(file); err == nil && fi.Mode().Perm() != 0o600 {
		t.Errorf("capture file mode = %v, want 0600", fi.Mode().Perm())
	}
}

func TestCaptureFileNeverFails(t *testing.T) {
	checkGoroutines(t)
	c, err := openCapture(filepath.Join(t.TempDir(), "x.pcap"), testLogger(t, nil))
	if err != nil {
		t.Fatal(err)
	}
	// Break the file under the writer: writes must keep succeeding (the
	// sniffer panics on a write error).
	c.f.Close()
	big := make([]byte, 1<<20)
	for range 3 {
		if n, err := c.Write(big); n != len(big) || err != nil {
			t.Fatalf("Write after failure = %d, %v; want %d, nil", n, err, len(big))
		}
	}
	c.Close()
	if n, err := c.Write([]byte("late")); n != 4 || err != nil {
		t.Fatalf("Write after Close = %d, %v; want 4, nil", n, err)
	}
}
