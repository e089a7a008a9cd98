package socks5

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/proxy"
)

// httpClient returns a client that goes through the SOCKS5 server at addr
// using golang.org/x/net/proxy.
func httpClient(t testing.TB, addr net.Addr, auth *proxy.Auth) *http.Client {
	t.Helper()
	d, err := proxy.SOCKS5("tcp", addr.String(), auth, proxy.Direct)
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{
		DialContext:       d.(proxy.ContextDialer).DialContext,
		DisableKeepAlives: true,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 20 * time.Second}
}

func get(c *http.Client, url string) ([]byte, error) {
	resp, err := c.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status %s", resp.Status)
	}
	return io.ReadAll(resp.Body)
}

func TestConnectHTTP(t *testing.T) {
	body := randomBytes(1 << 20)
	web4 := webServer(t, "tcp4", body)
	port := web4.Listener.Addr().(*net.TCPAddr).Port
	tests := []struct {
		name     string
		web      func(t *testing.T) string // the URL host:port
		auth     *proxy.Auth
		wantDial string // the recorded network and address
		wantAsk  []string
	}{
		{name: "ipv4", web: func(*testing.T) string { return web4.Listener.Addr().String() },
			wantDial: fmt.Sprintf("tcp4 127.0.0.1:%d", port)},
		{name: "ipv6", web: func(t *testing.T) string { return webServer(t, "tcp6", body).Listener.Addr().String() },
			wantDial: "tcp6 [::1]:"},
		{name: "domain localhost", web: func(*testing.T) string { return net.JoinHostPort("localhost", strconv.Itoa(port)) },
			wantDial: fmt.Sprintf("tcp4 127.0.0.1:%d", port), wantAsk: []string{"localhost"}},
		{name: "domain stub only", web: func(*testing.T) string { return net.JoinHostPort("web.test", strconv.Itoa(port)) },
			wantDial: fmt.Sprintf("tcp4 127.0.0.1:%d", port), wantAsk: []string{"web.test"}},
		{name: "auth", web: func(*testing.T) string { return web4.Listener.Addr().String() },
			auth: &proxy.Auth{User: "alice", Password: "s3cret"}, wantDial: fmt.Sprintf("tcp4 127.0.0.1:%d", port)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hostport := tt.web(t)
			stub := newStub()
			rec := &recorder{}
			s := startServer(t, func(s *Server) {
				s.Network, s.Resolve = rec, stub.Resolve
				if tt.auth != nil {
					s.Username, s.Password = tt.auth.User, tt.auth.Password
				}
			})
			got, err := get(httpClient(t, s.Addr(), tt.auth), "http://"+hostport+"/blob")
			if err != nil {
				t.Fatalf("GET through the proxy: %v", err)
			}
			if !bytes.Equal(got, body) {
				t.Errorf("body differs: got %d bytes, want %d", len(got), len(body))
			}
			if d := rec.Dials(); len(d) != 1 || !bytes.HasPrefix([]byte(d[0]), []byte(tt.wantDial)) {
				t.Errorf("dials = %q, want one starting %q", d, tt.wantDial)
			}
			if a := stub.Asked(); !slices.Equal(a, tt.wantAsk) {
				t.Errorf("resolver asked %q, want %q", a, tt.wantAsk)
			}
			waitFor(t, "connection end", func() bool { return s.Stats().Active == 0 })
			if st := s.Stats(); st.Connects != 1 || st.BytesFromTarget < int64(len(body)) || st.HandshakeErrors != 0 {
				t.Errorf("Stats() = %+v, want 1 connect, ≥ %d bytes from target", st, len(body))
			}
		})
	}
}

// rawHandshake opens a raw client connection, negotiates method 0x00 and
// sends req; it returns the conn and the parsed reply.
func rawHandshake(t testing.TB, s *Server, req Request) (net.Conn, Reply, Addr) {
	t.Helper()
	c, err := net.DialTimeout("tcp", s.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	b, err := AppendRequest([]byte{Version, 1, MethodNoAuth}, req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(b); err != nil {
		t.Fatal(err)
	}
	var sel [2]byte
	if _, err := io.ReadFull(c, sel[:]); err != nil || sel != [2]byte{Version, MethodNoAuth} {
		t.Fatalf("method selection = %x, %v", sel, err)
	}
	rb, err := readMsg(c, make([]byte, MaxRequestLen), RequestNeed)
	if err != nil {
		t.Fatalf("reading reply: %v", err)
	}
	rep, bnd, _, err := ParseReply(rb)
	if err != nil {
		t.Fatalf("ParseReply(%x): %v", rb, err)
	}
	c.SetDeadline(time.Time{})
	return c, rep, bnd
}

func TestConnectReplyAddress(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	peer := make(chan net.Addr, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		peer <- c.RemoteAddr()
		io.Copy(c, c)
	}()
	s := startServer(t, nil)
	c, rep, bnd := rawHandshake(t, s, Request{CmdConnect, AddrFromNetAddr(ln.Addr())})
	if rep != ReplySucceeded {
		t.Fatalf("reply = %v, want succeeded", rep)
	}
	// BND is the local address of the server's outbound connection.
	if want := AddrFromNetAddr(<-peer); bnd != want {
		t.Errorf("BND = %v, want %v", bnd, want)
	}
	// Bytes sent right behind the request reach the target.
	c.SetDeadline(time.Now().Add(5 * time.Second))
	c.Write([]byte("echo"))
	c.(*net.TCPConn).CloseWrite()
	if got, err := io.ReadAll(c); err != nil || string(got) != "echo" {
		t.Errorf("echo = %q, %v", got, err)
	}
}

func TestConnectRefused(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := AddrFromNetAddr(ln.Addr())
	ln.Close() // nothing listens there now

	s := startServer(t, nil)
	c, rep, bnd := rawHandshake(t, s, Request{CmdConnect, dead})
	if rep != ReplyConnectionRefused {
		t.Errorf("reply = %#x (%v), want %#x", byte(rep), rep, byte(ReplyConnectionRefused))
	}
	if want := (Addr{IP: netip.IPv4Unspecified()}); bnd != want {
		t.Errorf("BND = %v, want %v", bnd, want)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Errorf("after the failure reply: read %d, %v; want EOF", n, err)
	}
	if st := s.Stats(); st.ConnectFailures != 1 || st.Connects != 0 {
		t.Errorf("Stats() = %+v, want 1 connect failure", st)
	}
}

func TestConnectUnresolvable(t *testing.T) {
	s := startServer(t, nil)
	_, rep, _ := rawHandshake(t, s, Request{CmdConnect, Addr{Name: "nowhere.test", Port: 80}})
	if rep != ReplyHostUnreachable {
		t.Errorf("reply = %v, want host unreachable", rep)
	}
}

func TestReplyFor(t *testing.T) {
	op := func(err error) error { return &net.OpError{Op: "dial", Net: "tcp", Err: err} }
	tests := []struct {
		name string
		err  error
		want Reply
	}{
		{"host refused", op(os.NewSyscallError("connect", syscall.ECONNREFUSED)), ReplyConnectionRefused},
		{"host net unreachable", op(os.NewSyscallError("connect", syscall.ENETUNREACH)), ReplyNetworkUnreachable},
		{"host host unreachable", op(os.NewSyscallError("connect", syscall.EHOSTUNREACH)), ReplyHostUnreachable},
		{"host timeout", op(os.NewSyscallError("connect", syscall.ETIMEDOUT)), ReplyHostUnreachable},
		{"context deadline", op(context.DeadlineExceeded), ReplyHostUnreachable},
		{"gonet refused", op(errors.New("connection was refused")), ReplyConnectionRefused},
		{"gonet net unreachable", op(errors.New("network is unreachable")), ReplyNetworkUnreachable},
		{"gonet no route", op(errors.New("no route to host")), ReplyHostUnreachable},
		{"gonet timeout", op(errors.New("operation timed out")), ReplyHostUnreachable},
		{"resolve", &resolveError{"x", errors.New("nope")}, ReplyHostUnreachable},
		{"other", op(errors.New("something else")), ReplyGeneralFailure},
		{"cancelled", op(context.Canceled), ReplyGeneralFailure},
	}
	for _, tt := range tests {
		if got := replyFor(tt.err); got != tt.want {
			t.Errorf("%s: replyFor(%v) = %v, want %v", tt.name, tt.err, got, tt.want)
		}
	}
}

func TestAuth(t *testing.T) {
	body := []byte("hello")
	web := webServer(t, "tcp4", body)
	s := startServer(t, func(s *Server) { s.Username, s.Password = "alice", "s3cret" })

	t.Run("x/net/proxy wrong password", func(t *testing.T) {
		if _, err := get(httpClient(t, s.Addr(), &proxy.Auth{User: "alice", Password: "wrong"}), web.URL+"/blob"); err == nil {
			t.Error("GET with a wrong password succeeded")
		}
	})
	t.Run("raw wrong password", func(t *testing.T) {
		c, err := net.Dial("tcp", s.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(5 * time.Second))
		up, _ := AppendUserPass([]byte{Version, 1, MethodUserPass}, "alice", "s3creT")
		c.Write(up)
		got, err := io.ReadAll(c)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 4 || got[0] != Version || got[1] != MethodUserPass || got[2] != AuthVersion || got[3] == AuthSuccess {
			t.Errorf("server sent %x, want 0502 01xx with xx != 00, then EOF", got)
		}
	})
	t.Run("right password", func(t *testing.T) {
		got, err := get(httpClient(t, s.Addr(), &proxy.Auth{User: "alice", Password: "s3cret"}), web.URL+"/blob")
		if err != nil || !bytes.Equal(got, body) {
			t.Errorf("GET = %q, %v", got, err)
		}
	})
	if st := s.Stats(); st.AuthFailures != 2 || st.Connects != 1 {
		t.Errorf("Stats() = %+v, want 2 auth failures, 1 connect", st)
	}
}

func TestMalformed(t *testing.T) {
	h := func(s string) []byte { return mustHex(t, s) }
	zeroReply := func(rep byte) []byte { return []byte{5, rep, 0, 1, 0, 0, 0, 0, 0, 0} }
	cat := func(bs ...[]byte) []byte { return bytes.Join(bs, nil) }
	userPass := func(u, p string) []byte { b, _ := AppendUserPass(nil, u, p); return b }
	tests := []struct {
		name       string
		auth       bool
		send       []byte
		closeWrite bool // half-close after sending: the message is truncated
		want       []byte
		counter    func(Stats) uint64
	}{
		{"wrong greeting version", false, h("04 01 00"), false, nil, handshakeErrs},
		{"http instead of socks", false, []byte("GET / HTTP/1.1\r\n\r\n"), false, nil, handshakeErrs},
		{"greeting truncated", false, h("05"), true, nil, handshakeErrs},
		{"methods truncated", false, h("05 03 00"), true, nil, handshakeErrs},
		{"no bytes at all, timeout", false, nil, false, nil, handshakeErrs},
		{"no methods", false, h("05 00"), false, h("05 ff"), authFails},
		{"no acceptable method", false, h("05 01 02"), false, h("05 ff"), authFails},
		{"request wrong version", false, h("05 01 00  04 01 00 01 7f000001 0050"), false, cat(h("05 00"), zeroReply(1)), handshakeErrs},
		{"request truncated", false, h("05 01 00  05 01 00 01 7f"), true, h("05 00"), handshakeErrs},
		{"request stalls", false, h("05 01 00  05 01"), false, h("05 00"), handshakeErrs},
		{"bind unsupported", false, h("05 01 00  05 02 00 01 7f000001 0050"), false, cat(h("05 00"), zeroReply(7)), handshakeErrs},
		{"unknown command", false, h("05 01 00  05 09 00 01 7f000001 0050"), false, cat(h("05 00"), zeroReply(7)), handshakeErrs},
		{"address type unsupported", false, h("05 01 00  05 01 00 05"), false, cat(h("05 00"), zeroReply(8)), handshakeErrs},
		{"empty domain name", false, h("05 01 00  05 01 00 03 00 0050"), false, cat(h("05 00"), zeroReply(1)), handshakeErrs},
		{"auth: no-auth offered", true, h("05 01 00"), false, h("05 ff"), authFails},
		{"auth: wrong sub-version", true, h("05 01 02  05 01 61 01 62"), false, h("05 02 01 01"), handshakeErrs},
		{"auth: wrong user", true, cat(h("05 01 02"), userPass("bob", "s3cret")), false, h("05 02 01 01"), authFails},
		{"auth: empty credentials", true, cat(h("05 01 02"), userPass("", "")), false, h("05 02 01 01"), authFails},
		{"auth: truncated", true, h("05 01 02  01 05 616c"), true, h("05 02"), handshakeErrs},
	}
	plain := startServer(t, func(s *Server) { s.HandshakeTimeout = 300 * time.Millisecond })
	authed := startServer(t, func(s *Server) {
		s.HandshakeTimeout = 300 * time.Millisecond
		s.Username, s.Password = "alice", "s3cret"
	})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := plain
			if tt.auth {
				s = authed
			}
			before := tt.counter(s.Stats())
			c, err := net.Dial("tcp", s.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Write(tt.send); err != nil {
				t.Fatal(err)
			}
			if tt.closeWrite {
				c.(*net.TCPConn).CloseWrite()
			}
			got, err := io.ReadAll(c) // the server must close: no hang
			if err != nil {
				t.Fatalf("reading until the server closes: %v", err)
			}
			if !bytes.Equal(got, tt.want) {
				t.Errorf("server sent %x, want %x", got, tt.want)
			}
			waitFor(t, "counter", func() bool { return tt.counter(s.Stats()) == before+1 })
		})
	}
	for _, s := range []*Server{plain, authed} {
		waitFor(t, "no active connections", func() bool { return s.Stats().Active == 0 })
		if st := s.Stats(); st.Connects != 0 || st.ConnectFailures != 0 {
			t.Errorf("Stats() = %+v, want no connect attempts", st)
		}
	}
}

func handshakeErrs(s Stats) uint64 { return s.HandshakeErrors }
func authFails(s Stats) uint64     { return s.AuthFailures }

func TestConnLimit(t *testing.T) {
	s := startServer(t, func(s *Server) { s.MaxConns = 1 })
	first, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { first.Close() })
	waitFor(t, "first connection active", func() bool { return s.Stats().Active == 1 })

	second, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { second.Close() })
	second.SetDeadline(time.Now().Add(5 * time.Second))
	second.Write([]byte{Version, 1, MethodNoAuth})
	if got, _ := io.ReadAll(second); len(got) != 0 {
		t.Errorf("over the limit: server sent %x, want nothing", got)
	}
	if st := s.Stats(); st.Rejected != 1 || st.Accepted != 1 {
		t.Errorf("Stats() = %+v, want Rejected 1, Accepted 1", st)
	}
}

// udpRequest builds a SOCKS UDP datagram by hand.
func udpRequest(frag byte, dst Addr, data []byte) []byte {
	b := []byte{0, 0, frag}
	switch {
	case dst.Name != "":
		b = append(b, atypDomain, byte(len(dst.Name)))
		b = append(b, dst.Name...)
	case dst.IP.Is4():
		ip := dst.IP.As4()
		b = append(append(b, atypIPv4), ip[:]...)
	default:
		ip := dst.IP.As16()
		b = append(append(b, atypIPv6), ip[:]...)
	}
	b = binary.BigEndian.AppendUint16(b, dst.Port)
	return append(b, data...)
}

func TestUDPAssociate(t *testing.T) {
	echo := udpEcho(t)
	echoAddr := Addr{IP: netip.MustParseAddr("127.0.0.1"), Port: uint16(echo.Port)}
	s := startServer(t, nil)

	ctl, rep, bnd := rawHandshake(t, s, Request{CmdUDPAssociate, Addr{IP: netip.IPv4Unspecified()}})
	if rep != ReplySucceeded {
		t.Fatalf("reply = %v", rep)
	}
	if bnd.IP != netip.MustParseAddr("127.0.0.1") || bnd.Port == 0 {
		t.Fatalf("BND = %v, want 127.0.0.1 and a port", bnd)
	}
	relay := net.UDPAddrFromAddrPort(netip.AddrPortFrom(bnd.IP, bnd.Port))
	client, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })

	exchange := func(t *testing.T, pc *net.UDPConn, dgram []byte, wait time.Duration) ([]byte, error) {
		t.Helper()
		if _, err := pc.WriteTo(dgram, relay); err != nil {
			t.Fatal(err)
		}
		pc.SetReadDeadline(time.Now().Add(wait))
		buf := make([]byte, 65536)
		n, from, err := pc.ReadFromUDP(buf)
		if err == nil && from.AddrPort() != netip.AddrPortFrom(bnd.IP, bnd.Port) {
			t.Errorf("reply from %v, want the relay %v", from, relay)
		}
		return buf[:n], err
	}

	for _, tc := range []struct {
		name string
		dst  Addr
		data []byte
	}{
		{"ipv4", echoAddr, []byte("hello")},
		{"domain", Addr{Name: "localhost", Port: echoAddr.Port}, []byte("by name")},
		{"large", echoAddr, randomBytes(60000)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := exchange(t, client, udpRequest(0, tc.dst, tc.data), 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			h, n, err := ParseUDPHeader(got)
			if err != nil {
				t.Fatalf("reply header: %v", err)
			}
			if h.Frag != 0 || h.Addr != echoAddr {
				t.Errorf("reply header = %+v, want FRAG 0 from %v", h, echoAddr)
			}
			if !bytes.Equal(got[n:], tc.data) {
				t.Errorf("reply data differs: %d bytes, want %d", len(got[n:]), len(tc.data))
			}
		})
	}

	t.Run("fragment dropped", func(t *testing.T) {
		if got, err := exchange(t, client, udpRequest(1, echoAddr, []byte("frag")), 200*time.Millisecond); err == nil {
			t.Errorf("FRAG 1 got reply %x, want none", got)
		}
		if st := s.Stats(); st.UDPFragments != 1 {
			t.Errorf("UDPFragments = %d, want 1", st.UDPFragments)
		}
	})
	t.Run("other port dropped", func(t *testing.T) {
		other, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { other.Close() })
		before := s.Stats().UDPDropped
		if got, err := exchange(t, other, udpRequest(0, echoAddr, []byte("spoof")), 200*time.Millisecond); err == nil {
			t.Errorf("datagram from another port got reply %x, want none", got)
		}
		if st := s.Stats(); st.UDPDropped != before+1 {
			t.Errorf("UDPDropped = %d, want %d", st.UDPDropped, before+1)
		}
	})
	t.Run("bad header dropped", func(t *testing.T) {
		before := s.Stats().UDPDropped
		if _, err := exchange(t, client, []byte{0, 0, 0, 9, 1, 2}, 200*time.Millisecond); err == nil {
			t.Error("bad header got a reply")
		}
		if st := s.Stats(); st.UDPDropped != before+1 {
			t.Errorf("UDPDropped = %d, want %d", st.UDPDropped, before+1)
		}
	})

	want := func(st Stats) bool {
		return st.UDPAssociations == 1 && st.UDPPacketsToTarget == 3 && st.UDPPacketsFromTarget == 3
	}
	deadline := time.Now().Add(5 * time.Second)
	for !want(s.Stats()) && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if st := s.Stats(); !want(st) {
		t.Errorf("Stats() = %+v, want 1 association, 3 datagrams each way", st)
	}
	if d := s.Network.(*recorder).Dials(); len(d) != 0 {
		t.Errorf("UDP dialed %q; want only ListenPacket with a family", d)
	}

	// The association ends with its control connection.
	ctl.Close()
	waitFor(t, "association end", func() bool { return s.Stats().Active == 0 })
	if got, err := exchange(t, client, udpRequest(0, echoAddr, []byte("late")), 200*time.Millisecond); err == nil {
		t.Errorf("after the control connection closed: reply %x, want none", got)
	}
	s.Close()
	checkNoLeaks(t)
}

func TestCurl(t *testing.T) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("no curl:", err)
	}
	body := randomBytes(4 << 20)
	web := webServer(t, "tcp4", body)
	port := web.Listener.Addr().(*net.TCPAddr).Port

	for _, tc := range []struct {
		name string
		user string
	}{
		{"no auth", ""},
		{"auth", "alice:s3cret"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stub := newStub()
			s := startServer(t, func(s *Server) {
				s.Resolve = stub.Resolve
				if tc.user != "" {
					s.Username, s.Password = "alice", "s3cret"
				}
			})
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			t.Cleanup(cancel)
			args := []string{"-q", "--silent", "--show-error", "--fail", "--noproxy", "",
				"--socks5-hostname", s.Addr().String()}
			if tc.user != "" {
				args = append(args, "--proxy-user", tc.user)
			}
			args = append(args, fmt.Sprintf("http://web.test:%d/blob", port))
			cmd := exec.CommandContext(ctx, curl, args...)
			cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=" + t.TempDir()} // no proxy variables, no .curlrc
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			got, err := cmd.Output()
			if err != nil {
				t.Fatalf("curl: %v\n%s", err, stderr.Bytes())
			}
			if !bytes.Equal(got, body) {
				t.Errorf("curl got %d bytes, want %d identical ones", len(got), len(body))
			}
			if a := stub.Asked(); !slices.Equal(a, []string{"web.test"}) {
				t.Errorf("resolver asked %q, want [web.test]: curl must send the name", a)
			}
		})
	}
}

func TestCloseAndShutdown(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	target := AddrFromNetAddr(ln.Addr())

	t.Run("close", func(t *testing.T) {
		s := startServer(t, nil)
		addr := s.Addr().String()
		relayConn, rep, _ := rawHandshake(t, s, Request{CmdConnect, target})
		if rep != ReplySucceeded {
			t.Fatalf("reply = %v", rep)
		}
		assocConn, rep, _ := rawHandshake(t, s, Request{CmdUDPAssociate, Addr{IP: netip.IPv4Unspecified()}})
		if rep != ReplySucceeded {
			t.Fatalf("reply = %v", rep)
		}
		idle, err := net.Dial("tcp", addr) // mid-handshake
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { idle.Close() })
		waitFor(t, "3 active", func() bool { return s.Stats().Active == 3 })

		if err := s.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		for _, c := range []net.Conn{relayConn, assocConn, idle} {
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.ReadAll(c); err != nil && !errors.Is(err, syscall.ECONNRESET) {
				t.Errorf("after Close: %v, want EOF", err)
			}
		}
		checkNoLeaks(t)
		again, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("port not freed: %v", err)
		}
		again.Close()
		if err := s.Start(context.Background()); !errors.Is(err, ErrServerClosed) {
			t.Errorf("Start after Close = %v, want ErrServerClosed", err)
		}
	})

	t.Run("shutdown drains", func(t *testing.T) {
		s := startServer(t, nil)
		c, rep, _ := rawHandshake(t, s, Request{CmdConnect, target})
		if rep != ReplySucceeded {
			t.Fatalf("reply = %v", rep)
		}
		done := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			done <- s.Shutdown(ctx)
		}()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write([]byte("still here"))
		c.(*net.TCPConn).CloseWrite()
		if got, err := io.ReadAll(c); err != nil || string(got) != "still here" {
			t.Errorf("during drain: %q, %v", got, err)
		}
		if err := <-done; err != nil {
			t.Errorf("Shutdown = %v, want nil", err)
		}
	})

	t.Run("shutdown deadline", func(t *testing.T) {
		s := startServer(t, nil)
		c, rep, _ := rawHandshake(t, s, Request{CmdConnect, target})
		if rep != ReplySucceeded {
			t.Fatalf("reply = %v", rep)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		if err := s.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Shutdown = %v, want DeadlineExceeded", err)
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadAll(c); err != nil && !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("after forced shutdown: %v, want EOF", err)
		}
		checkNoLeaks(t)
	})
}

func TestServe(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Network: &recorder{}}
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	t.Cleanup(func() { s.Close() })
	waitFor(t, "Addr", func() bool { return s.Addr() != nil })
	web := webServer(t, "tcp4", []byte("ok"))
	if got, err := get(httpClient(t, s.Addr(), nil), web.URL+"/blob"); err != nil || string(got) != "ok" {
		t.Errorf("GET = %q, %v", got, err)
	}
	s.Close()
	select {
	case err := <-served:
		if !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve = %v, want ErrServerClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after Close")
	}
}
