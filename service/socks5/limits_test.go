package socks5

import (
	"bytes"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/internal/servicetest"
)

// dialFrom connects to s from the loopback address local (Linux routes
// all of 127.0.0.0/8 to lo, so 127.0.0.2 is a second client host).
func dialFrom(t testing.TB, s *Server, local string) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	c, err := d.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatalf("dial from %s: %v", local, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// greet sends a greeting offering method and returns the server's
// two-byte answer, or what it sent before EOF or an error.
func greet(c net.Conn, method byte) ([]byte, error) {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write([]byte{Version, 1, method}); err != nil {
		return nil, err
	}
	var b [2]byte
	n, err := io.ReadFull(c, b[:])
	return b[:n], err
}

// TestPerClientConnLimit is the lockout of the hardening issue: idle,
// unauthenticated connections from one client address used to take every
// slot of MaxConns. Now one address gets a quarter of them (the default)
// and the other clients keep theirs.
func TestPerClientConnLimit(t *testing.T) {
	var logs servicetest.LogBuffer
	s := startServer(t, func(s *Server) {
		s.MaxConns = 8
		s.HandshakeTimeout = 30 * time.Second // the idle ones must outlive the test
		s.Logger = logs.Logger()
	})

	// The attacker at 127.0.0.2 opens MaxConns idle connections.
	var idle []net.Conn
	for range 8 {
		idle = append(idle, dialFrom(t, s, "127.0.0.2"))
	}
	// Two are kept, waiting for a greeting; the other six are closed at
	// once without a byte.
	closed := 0
	for _, c := range idle {
		c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		var b [1]byte
		if n, err := c.Read(b[:]); n == 0 && err == io.EOF {
			closed++
		}
	}
	if closed != 6 {
		t.Errorf("%d of 8 idle connections from 127.0.0.2 closed at once, want 6 (over a limit of 2)", closed)
	}

	// A client at 127.0.0.1 is still served.
	c := dialFrom(t, s, "127.0.0.1")
	if got, err := greet(c, MethodNoAuth); err != nil || !bytes.Equal(got, []byte{Version, MethodNoAuth}) {
		t.Fatalf("client at 127.0.0.1: method selection %x, %v; want 0500", got, err)
	}
	if st := s.Stats(); st.Rejected != 0 || st.RejectedPerClient != 6 || st.Active != 3 {
		t.Errorf("Stats() = %+v, want Rejected 0 (global), RejectedPerClient 6, Active 3", st)
	}
	if l := logs.Lines("WARN", "too many connections"); len(l) != 1 || !strings.Contains(l[0], "client=127.0.0.2") {
		t.Errorf("warnings about too many connections: %q, want one for 127.0.0.2", l)
	}

	// A slot is given back when its connection ends.
	for _, c := range idle {
		c.Close()
	}
	waitFor(t, "idle connections closed", func() bool { return s.Stats().Active == 1 })
	c2 := dialFrom(t, s, "127.0.0.2")
	if got, err := greet(c2, MethodNoAuth); err != nil || !bytes.Equal(got, []byte{Version, MethodNoAuth}) {
		t.Errorf("127.0.0.2 after closing its connections: method selection %x, %v; want 0500", got, err)
	}
}

// TestPerClientConnLimitKnob checks MaxConnsPerClient overrides the
// quarter, and that negative means no limit.
func TestPerClientConnLimitKnob(t *testing.T) {
	for _, tc := range []struct {
		perClient, want int
	}{{3, 3}, {-1, 8}} {
		s := startServer(t, func(s *Server) {
			s.MaxConns, s.MaxConnsPerClient = 8, tc.perClient
			s.HandshakeTimeout = 30 * time.Second
		})
		for range 8 {
			dialFrom(t, s, "127.0.0.2")
		}
		waitFor(t, "connections accepted or refused", func() bool {
			st := s.Stats()
			return st.Accepted+st.RejectedPerClient == 8
		})
		if st := s.Stats(); st.Accepted != uint64(tc.want) || st.RejectedPerClient != uint64(8-tc.want) {
			t.Errorf("MaxConnsPerClient %d: Stats() = %+v, want %d accepted, %d refused", tc.perClient, st, tc.want, 8-tc.want)
		}
		s.Close()
	}
}

// authenticate runs the greeting and RFC 1929 exchange from local and
// returns every byte the server sent until it closed or went quiet.
func authenticate(t testing.TB, s *Server, local, user, pass string) []byte {
	t.Helper()
	c := dialFrom(t, s, local)
	b, err := AppendUserPass([]byte{Version, 1, MethodUserPass}, user, pass)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(2 * time.Second))
	c.Write(b)
	var got []byte
	buf := make([]byte, 16)
	for len(got) < 4 {
		n, err := c.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			break
		}
	}
	return got
}

// TestAuthThrottle is the password guessing of the hardening issue: after
// five wrong passwords from one address, that address is refused for a
// while, even with the right password; other addresses are not.
func TestAuthThrottle(t *testing.T) {
	var logs servicetest.LogBuffer
	s := startServer(t, func(s *Server) {
		s.Username, s.Password = "alice", "s3cret"
		s.Logger = logs.Logger()
	})
	wrong := []byte{Version, MethodUserPass, AuthVersion, AuthFailure}
	for i := range 5 {
		if got := authenticate(t, s, "127.0.0.2", "alice", "guess"); !bytes.Equal(got, wrong) {
			t.Fatalf("wrong password %d: server sent %x, want %x", i+1, got, wrong)
		}
	}
	// Locked out: the greeting gets "no acceptable methods".
	for range 10 {
		if got := authenticate(t, s, "127.0.0.2", "alice", "s3cret"); !bytes.Equal(got, []byte{Version, MethodNoAcceptable}) {
			t.Fatalf("right password after 5 failures: server sent %x, want 05ff", got)
		}
	}
	// Another address is not affected.
	ok := []byte{Version, MethodUserPass, AuthVersion, AuthSuccess}
	if got := authenticate(t, s, "127.0.0.1", "alice", "s3cret"); !bytes.Equal(got, ok) {
		t.Errorf("right password from 127.0.0.1: server sent %x, want %x", got, ok)
	}
	if st := s.Stats(); st.AuthFailures != 5 || st.AuthThrottled != 10 {
		t.Errorf("Stats() = %+v, want AuthFailures 5, AuthThrottled 10", st)
	}
	// One line for the failures and one for the refusals, not one each.
	if l := logs.Lines("WARN", "wrong username or password"); len(l) != 1 || !strings.Contains(l[0], "client=127.0.0.2") {
		t.Errorf("warnings about wrong passwords: %q, want one for 127.0.0.2", l)
	}
	if l := logs.Lines("WARN", "locked out"); len(l) != 1 || !strings.Contains(l[0], "client=127.0.0.2") {
		t.Errorf("warnings about the lockout: %q, want one for 127.0.0.2", l)
	}
}

// TestAuthThrottleExpires checks that a lockout ends after AuthBackoff and
// that the right password then gets in.
func TestAuthThrottleExpires(t *testing.T) {
	s := startServer(t, func(s *Server) {
		s.Username, s.Password = "alice", "s3cret"
		s.MaxAuthFailures, s.AuthBackoff = 2, 200*time.Millisecond
	})
	for range 2 {
		authenticate(t, s, "127.0.0.2", "alice", "guess")
	}
	if got := authenticate(t, s, "127.0.0.2", "alice", "s3cret"); !bytes.Equal(got, []byte{Version, MethodNoAcceptable}) {
		t.Fatalf("right password after 2 failures: server sent %x, want 05ff", got)
	}
	time.Sleep(300 * time.Millisecond) // past the lockout; no pass/fail on timing
	ok := []byte{Version, MethodUserPass, AuthVersion, AuthSuccess}
	if got := authenticate(t, s, "127.0.0.2", "alice", "s3cret"); !bytes.Equal(got, ok) {
		t.Errorf("right password after the lockout: server sent %x, want %x", got, ok)
	}
	if st := s.Stats(); st.AuthFailures != 2 || st.AuthThrottled != 1 {
		t.Errorf("Stats() = %+v, want AuthFailures 2, AuthThrottled 1", st)
	}
}

// TestAuthThrottleOff checks that a negative MaxAuthFailures turns the
// throttle off.
func TestAuthThrottleOff(t *testing.T) {
	s := startServer(t, func(s *Server) {
		s.Username, s.Password = "alice", "s3cret"
		s.MaxAuthFailures = -1
	})
	for range 10 {
		authenticate(t, s, "127.0.0.2", "alice", "guess")
	}
	ok := []byte{Version, MethodUserPass, AuthVersion, AuthSuccess}
	if got := authenticate(t, s, "127.0.0.2", "alice", "s3cret"); !bytes.Equal(got, ok) {
		t.Errorf("right password after 10 failures, throttle off: server sent %x, want %x", got, ok)
	}
	if st := s.Stats(); st.AuthFailures != 10 || st.AuthThrottled != 0 {
		t.Errorf("Stats() = %+v, want AuthFailures 10, AuthThrottled 0", st)
	}
}

// TestAuthThrottleUnit drives the throttle with a made-up clock: lockouts
// after burst failures, that double, refill, and forget on success.
func TestAuthThrottleUnit(t *testing.T) {
	t0 := time.Unix(1e9, 0)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	ip := netip.MustParseAddr("192.0.2.1")
	th := newAuthThrottle(3, 10*time.Second)

	for i, want := range []time.Duration{0, 0, 10 * time.Second} {
		if got, _ := th.fail(ip, at(0)); got != want {
			t.Fatalf("failure %d: lockout %v, want %v", i+1, got, want)
		}
	}
	if locked, left := th.lockedOut(ip, at(5*time.Second)); !locked || left != 5*time.Second {
		t.Errorf("lockedOut at 5s = %v, %v; want true, 5s", locked, left)
	}
	if locked, _ := th.lockedOut(ip, at(10*time.Second)); locked {
		t.Error("lockedOut at 10s = true, want the lockout over")
	}
	// The next burst locks out for twice as long.
	var got time.Duration
	for range 3 {
		got, _ = th.fail(ip, at(11*time.Second))
	}
	if got != 20*time.Second {
		t.Errorf("second lockout = %v, want 20s", got)
	}
	// Failures spread out by the refill never lock out.
	th2 := newAuthThrottle(3, 10*time.Second)
	for i := range 20 {
		if got, n := th2.fail(ip, at(time.Duration(i)*10*time.Second)); got != 0 || n != 1 {
			t.Fatalf("spread failure %d: lockout %v, %d in the bucket; want none, 1", i, got, n)
		}
	}
	// Success forgets.
	th2.fail(ip, at(500*time.Second))
	th2.fail(ip, at(500*time.Second))
	th2.succeed(ip)
	if got, n := th2.fail(ip, at(500*time.Second)); got != 0 || n != 1 {
		t.Errorf("failure after success: lockout %v, %d in the bucket; want none, 1", got, n)
	}
	// An IPv6 /64 is one client.
	a, b := netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8::ffff:2")
	th3 := newAuthThrottle(2, 10*time.Second)
	th3.fail(a, at(0))
	th3.fail(b, at(0))
	if locked, _ := th3.lockedOut(netip.MustParseAddr("2001:db8::3"), at(time.Second)); !locked {
		t.Error("2001:db8::3 not locked out after failures of two addresses of its /64")
	}
	if locked, _ := th3.lockedOut(netip.MustParseAddr("2001:db8:0:1::1"), at(time.Second)); locked {
		t.Error("2001:db8:0:1::1, another /64, locked out")
	}
}

// TestAuthThrottleBounded checks that address churn cannot grow the
// throttle's table past maxThrottled.
func TestAuthThrottleBounded(t *testing.T) {
	th := newAuthThrottle(5, 10*time.Second)
	t0 := time.Unix(1e9, 0)
	for i := range 3 * maxThrottled {
		ip := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		th.fail(ip, t0.Add(time.Duration(i)*time.Millisecond))
	}
	if n := th.len(); n > maxThrottled {
		t.Errorf("%d entries after %d addresses, want at most %d", n, 3*maxThrottled, maxThrottled)
	}
}

// TestUDPAssociateDst is the hijack of the hardening issue: a request that
// names the client's UDP address and port (RFC 1928 §7) must only relay
// datagrams from that address and port, even if another socket on the
// client's host sends first.
func TestUDPAssociateDst(t *testing.T) {
	echo := udpEcho(t)
	echoAddr := Addr{IP: netip.MustParseAddr("127.0.0.1"), Port: uint16(echo.Port)}
	listen := func(ip string) *net.UDPConn {
		pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP(ip)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { pc.Close() })
		return pc
	}
	// exchange sends one datagram through relay and returns the reply's
	// payload, or an error if none came.
	exchange := func(pc *net.UDPConn, relay netip.AddrPort, data []byte, wait time.Duration) ([]byte, error) {
		if _, err := pc.WriteToUDPAddrPort(udpRequest(0, echoAddr, data), relay); err != nil {
			t.Fatal(err)
		}
		pc.SetReadDeadline(time.Now().Add(wait))
		buf := make([]byte, 2048)
		n, err := pc.Read(buf)
		if err != nil {
			return nil, err
		}
		_, hl, err := ParseUDPHeader(buf[:n])
		if err != nil {
			return nil, err
		}
		return buf[hl:n], nil
	}

	client := listen("127.0.0.1")
	clientAP := client.LocalAddr().(*net.UDPAddr).AddrPort()
	for _, tc := range []struct {
		name     string
		dst      Addr
		intruder string // where the first, foreign datagram comes from
	}{
		{"address and port", Addr{IP: clientAP.Addr(), Port: clientAP.Port()}, "127.0.0.1"},
		{"port only", Addr{IP: netip.IPv4Unspecified(), Port: clientAP.Port()}, "127.0.0.1"},
		{"zeros, other host", Addr{IP: netip.IPv4Unspecified()}, "127.0.0.2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := startServer(t, nil)
			_, rep, bnd := rawHandshake(t, s, Request{CmdUDPAssociate, tc.dst})
			if rep != ReplySucceeded {
				t.Fatalf("reply = %v", rep)
			}
			relay := netip.AddrPortFrom(bnd.IP, bnd.Port)
			if got, err := exchange(listen(tc.intruder), relay, []byte("hijack"), 300*time.Millisecond); err == nil {
				t.Errorf("datagram from %s relayed, reply %q; want it dropped", tc.intruder, got)
			}
			if got, err := exchange(client, relay, []byte("mine"), 5*time.Second); err != nil || string(got) != "mine" {
				t.Errorf("client %v: reply %q, %v; want \"mine\"", clientAP, got, err)
			}
			waitFor(t, "the datagram counted", func() bool { return s.Stats().UDPPacketsToTarget >= 1 })
			if st := s.Stats(); st.UDPForeign != 1 || st.UDPDropped != 1 || st.UDPPacketsToTarget != 1 {
				t.Errorf("Stats() = %+v, want UDPForeign 1, UDPDropped 1, UDPPacketsToTarget 1", st)
			}
		})
	}
}
