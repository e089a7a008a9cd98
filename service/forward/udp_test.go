package forward

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"net"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/service"
)

func startUDP(t testing.TB, target string, hook func(*UDP)) *UDP {
	t.Helper()
	f := &UDP{
		Name:   "test",
		From:   service.Host{},
		Listen: "127.0.0.1:0",
		To:     service.Host{},
		Target: target,
	}
	if hook != nil {
		hook(f)
	}
	if err := f.Start(context.Background()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func udpClient(t testing.TB, to net.Addr) net.Conn {
	t.Helper()
	c, err := net.Dial("udp", to.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// roundTrip sends msg on c and waits up to d for the echo.
func roundTrip(c net.Conn, msg []byte, d time.Duration) ([]byte, error) {
	if _, err := c.Write(msg); err != nil {
		return nil, err
	}
	c.SetReadDeadline(time.Now().Add(d))
	buf := make([]byte, 65536)
	n, err := c.Read(buf)
	return buf[:n], err
}

func TestUDPRoundTrip(t *testing.T) {
	echo := udpEcho(t)
	f := startUDP(t, echo.String(), nil)
	c := udpClient(t, f.Addr())

	var total uint64
	for _, size := range []int{1, 1400, 9000, 65507} { // 65507: the IPv4 maximum
		msg := make([]byte, size)
		rand.Read(msg)
		got, err := roundTrip(c, msg, 5*time.Second)
		if err != nil {
			t.Fatalf("size %d: %v", size, err)
		}
		if !bytes.Equal(got, msg) {
			t.Errorf("size %d: echo differs (got %d bytes)", size, len(got))
		}
		total += uint64(size)
	}
	// The counters move just after the send, so the echo can beat them.
	want := func(st UDPStats) bool {
		return st.SessionsCreated == 1 && st.Sessions == 1 && st.PacketsToTarget == 4 && st.PacketsFromTarget == 4 &&
			st.BytesToTarget == total && st.BytesFromTarget == total
	}
	deadline := time.Now().Add(5 * time.Second)
	for !want(f.Stats()) && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if st := f.Stats(); !want(st) {
		t.Errorf("Stats() = %+v, want 1 session, 4 packets and %d bytes each way", st, total)
	}
}

func TestUDPIdleExpiry(t *testing.T) {
	echo := udpEcho(t)
	f := startUDP(t, echo.String(), func(f *UDP) { f.IdleTimeout = 100 * time.Millisecond })
	c := udpClient(t, f.Addr())

	if _, err := roundTrip(c, []byte("one"), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "session expiry", func() bool {
		st := f.Stats()
		return st.SessionsExpired == 1 && st.Sessions == 0
	})
	// The same client gets a fresh session.
	if got, err := roundTrip(c, []byte("two"), 5*time.Second); err != nil || string(got) != "two" {
		t.Fatalf("after expiry: %q, %v", got, err)
	}
	if st := f.Stats(); st.SessionsCreated != 2 {
		t.Errorf("SessionsCreated = %d, want 2", st.SessionsCreated)
	}
}

func TestUDPIdleKeptAliveByTraffic(t *testing.T) {
	echo := udpEcho(t)
	f := startUDP(t, echo.String(), func(f *UDP) { f.IdleTimeout = time.Second })
	c := udpClient(t, f.Addr())
	for range 15 { // 15 × 100 ms > IdleTimeout, but never idle for that long
		if _, err := roundTrip(c, []byte("ping"), 5*time.Second); err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if st := f.Stats(); st.SessionsExpired != 0 || st.SessionsCreated != 1 {
		t.Errorf("Stats() = %+v, want one session, never expired", st)
	}
}

func TestUDPSessionLimit(t *testing.T) {
	echo := udpEcho(t)
	f := startUDP(t, echo.String(), func(f *UDP) { f.MaxSessions = 1 })
	a, b := udpClient(t, f.Addr()), udpClient(t, f.Addr())

	if _, err := roundTrip(a, []byte("a"), 5*time.Second); err != nil {
		t.Fatalf("first client: %v", err)
	}
	if got, err := roundTrip(b, []byte("b"), 200*time.Millisecond); err == nil {
		t.Errorf("second client over the limit got %q, want no reply", got)
	}
	if st := f.Stats(); st.Rejected != 1 || st.Sessions != 1 {
		t.Errorf("Stats() = %+v, want Rejected 1, Sessions 1", st)
	}
	if _, err := roundTrip(a, []byte("a"), 5*time.Second); err != nil {
		t.Errorf("first client after rejection: %v", err)
	}
}

func TestUDPCloseNoLeak(t *testing.T) {
	echo := udpEcho(t)
	f := startUDP(t, echo.String(), nil)
	addr := f.Addr().String()
	for range 3 {
		if _, err := roundTrip(udpClient(t, f.Addr()), []byte("x"), 5*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	if got := f.Stats().Sessions; got != 3 {
		t.Fatalf("Sessions = %d, want 3", got)
	}
	if err := f.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if got := f.Stats().Sessions; got != 0 {
		t.Errorf("Sessions after Close = %d, want 0", got)
	}
	checkNoLeaks(t)
	again, err := net.ListenPacket("udp", addr)
	if err != nil {
		t.Fatalf("port not freed by Close: %v", err)
	}
	again.Close()
}

func TestUDPBindError(t *testing.T) {
	busy, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { busy.Close() })
	f := &UDP{Name: "dns", Listen: busy.LocalAddr().String(), Target: "127.0.0.1:1"}
	t.Cleanup(func() { f.Close() })
	if err := f.Start(context.Background()); err == nil {
		t.Fatal("Start on a busy port succeeded")
	} else if want := `forward "dns": listen udp `; !bytes.HasPrefix([]byte(err.Error()), []byte(want)) {
		t.Errorf("Start() = %v, want prefix %q", err, want)
	}
}

// TestFamilyOnlyNetworks runs both forwards between two networks that, like
// the tunnel stack, have no dual-stack "tcp"/"udp" sockets.
func TestFamilyOnlyNetworks(t *testing.T) {
	for _, ip := range []string{"127.0.0.1", "::1"} {
		t.Run(ip, func(t *testing.T) {
			host := net.JoinHostPort(ip, "0")
			ln, err := net.Listen(service.NetworkFor("tcp", host), host)
			if err != nil {
				t.Skipf("no %s on loopback: %v", ip, err)
			}
			t.Cleanup(func() { ln.Close() })
			serveTCP(t, ln, func(c net.Conn) { io.Copy(c, c) })
			tf := startTCP(t, ln.Addr().String(), func(f *TCP) {
				f.From, f.To, f.Listen = familyOnly{}, familyOnly{}, host
			})
			c := dial(t, tf.Addr())
			if got, err := sendAndHash(c, []byte("hi")); err != nil || got != sha256.Sum256([]byte("hi")) {
				t.Errorf("TCP echo through %s: %x, %v", ip, got, err)
			}

			pc, err := net.ListenPacket(service.NetworkFor("udp", host), host)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { pc.Close() })
			go func() {
				buf := make([]byte, 100)
				n, addr, err := pc.ReadFrom(buf)
				if err == nil {
					pc.WriteTo(buf[:n], addr)
				}
			}()
			uf := startUDP(t, pc.LocalAddr().String(), func(f *UDP) {
				f.From, f.To, f.Listen = familyOnly{}, familyOnly{}, host
			})
			if got, err := roundTrip(udpClient(t, uf.Addr()), []byte("hi"), 5*time.Second); err != nil || string(got) != "hi" {
				t.Errorf("UDP echo through %s: %q, %v", ip, got, err)
			}
		})
	}
}
