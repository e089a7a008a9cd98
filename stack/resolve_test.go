package stack_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/endpoint/endpointtest"
	"github.com/ipipstack/ipipstack/internal/dnstest"
	"github.com/ipipstack/ipipstack/stack"
)

// dnsPair is stack a, whose Config.DNS is dns, joined by an in-memory
// tunnel to stack b, which serves testRecords on 10.99.0.2:53 and
// [fd99::2]:53, and stays silent on 10.99.0.2:5353.
func dnsPair(t *testing.T, dns ...string) (a, b *stack.Stack, srv, dead *dnstest.Server) {
	t.Helper()
	pa, pb := netip.MustParseAddrPort("127.0.0.1:1"), netip.MustParseAddrPort("127.0.0.1:2")
	ca, cb := endpointtest.Pipe(pa, pb, 0)
	var servers []netip.AddrPort
	for _, d := range dns {
		servers = append(servers, netip.MustParseAddrPort(d))
	}
	a, err := stack.New(stack.Config{DNS: servers, Tunnels: []stack.Tunnel{{Name: "to-b", Conn: ca, Remote: pb,
		Addresses: []netip.Prefix{addrA, addrA6}}}})
	if err != nil {
		cb.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	b, err = stack.New(stack.Config{Tunnels: []stack.Tunnel{{Name: "to-a", Conn: cb, Remote: pa,
		Addresses: []netip.Prefix{addrB, addrB6}}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	srv = &dnstest.Server{Records: map[string][]netip.Addr{
		"web.ipipstack.test.":  {netip.MustParseAddr("10.99.0.2"), netip.MustParseAddr("fd99::2")},
		"v4.ipipstack.test.":   {netip.MustParseAddr("10.99.0.2")},
		"v6.ipipstack.test.":   {netip.MustParseAddr("fd99::2")},
		"big.ipipstack.test.":  {netip.MustParseAddr("10.99.0.2")},
		"both.ipipstack.test.": {netip.MustParseAddr("10.99.0.1"), netip.MustParseAddr("10.99.0.2")},
	}, Truncate: map[string]bool{"big.ipipstack.test.": true}}
	serveDNS(t, srv, b, "10.99.0.2:53")
	serveDNS(t, srv, b, "[fd99::2]:53")
	dead = &dnstest.Server{Silent: true}
	serveDNS(t, dead, b, "10.99.0.2:5353")
	return a, b, srv, dead
}

func TestLookupNetIP(t *testing.T) {
	a, _, srv, _ := dnsPair(t, "10.99.0.2:53")
	for _, tc := range []struct {
		name, network, host string
		want                []string
		notFound            bool
		transports          []string // queries the server saw
	}{
		{name: "A", network: "ip4", host: "web.ipipstack.test", want: []string{"10.99.0.2"},
			transports: []string{"udp A web.ipipstack.test."}},
		{name: "AAAA", network: "ip6", host: "web.ipipstack.test", want: []string{"fd99::2"},
			transports: []string{"udp AAAA web.ipipstack.test."}},
		{name: "NXDOMAIN", network: "ip4", host: "nx.ipipstack.test", notFound: true,
			transports: []string{"udp A nx.ipipstack.test."}},
		{name: "truncated to TCP", network: "ip4", host: "big.ipipstack.test", want: []string{"10.99.0.2"},
			transports: []string{"udp A big.ipipstack.test.", "tcp A big.ipipstack.test."}},
		{name: "literal", network: "ip", host: "fd99::7", want: []string{"fd99::7"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(srv.Asked())
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			got, err := a.LookupNetIP(ctx, tc.network, tc.host)
			if tc.notFound {
				var de *net.DNSError
				if !errors.As(err, &de) || !de.IsNotFound {
					t.Fatalf("LookupNetIP(%q) = %v, %v; want a not-found DNSError", tc.host, got, err)
				}
			} else if err != nil {
				t.Fatalf("LookupNetIP(%q): %v", tc.host, err)
			}
			var gs []string
			for _, g := range got {
				gs = append(gs, g.String())
			}
			if strings.Join(gs, ",") != strings.Join(tc.want, ",") {
				t.Errorf("LookupNetIP(%q) = %v, want %v", tc.host, gs, tc.want)
			}
			if q := srv.Asked()[before:]; strings.Join(q, ";") != strings.Join(tc.transports, ";") {
				t.Errorf("server saw %q, want %q", q, tc.transports)
			}
		})
	}
}

// TestLookupNetIPOverIPv6Server asks a server with an IPv6 address.
func TestLookupNetIPOverIPv6Server(t *testing.T) {
	a, _, srv, _ := dnsPair(t, "[fd99::2]:53")
	got, err := a.LookupNetIP(context.Background(), "ip", "v4.ipipstack.test")
	if err != nil || len(got) != 1 || got[0] != netip.MustParseAddr("10.99.0.2") {
		t.Fatalf("LookupNetIP = %v, %v; want [10.99.0.2]", got, err)
	}
	if len(srv.Asked()) == 0 {
		t.Error("the server saw no query")
	}
}

// TestLookupTimeout asks a server that never answers: the lookup fails
// with a timeout once the context expires, after the query reached it.
func TestLookupTimeout(t *testing.T) {
	a, _, _, dead := dnsPair(t, "10.99.0.2:5353")
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	got, err := a.LookupNetIP(ctx, "ip4", "web.ipipstack.test")
	var de *net.DNSError
	if !errors.As(err, &de) || !de.IsTimeout {
		t.Fatalf("LookupNetIP = %v, %v; want a timeout DNSError", got, err)
	}
	if len(dead.Asked()) == 0 {
		t.Error("the silent server saw no query")
	}
}

// TestLookupNoDNS: without Config.DNS a name fails with ErrNoDNS, and so
// does a dial by name, with a message saying what to do.
func TestLookupNoDNS(t *testing.T) {
	a, _, _, _ := dnsPair(t)
	if _, err := a.LookupNetIP(context.Background(), "ip", "web.ipipstack.test"); !errors.Is(err, stack.ErrNoDNS) {
		t.Errorf("LookupNetIP = %v, want ErrNoDNS", err)
	}
	_, err := a.Dial("tcp", "web.ipipstack.test:80")
	if !errors.Is(err, stack.ErrNoDNS) {
		t.Fatalf("Dial by name = %v, want ErrNoDNS", err)
	}
	want := "dial tcp web.ipipstack.test:80: stack: no DNS servers configured (Config.DNS); use an IP address"
	if err.Error() != want {
		t.Errorf("Dial error = %q, want %q", err, want)
	}
}

// TestDialContextByName dials names over each family and checks the
// bytes that arrive.
func TestDialContextByName(t *testing.T) {
	a, b, _, _ := dnsPair(t, "10.99.0.2:53")
	ln, err := b.Listen("tcp", ":80")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type got struct {
		remote string
		sum    [32]byte
	}
	gotc := make(chan got, 1)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			data, _ := io.ReadAll(c)
			gotc <- got{c.LocalAddr().String(), sha256.Sum256(data)}
			c.Close()
		}
	}()
	payload := []byte(strings.Repeat("through the tunnel by name\n", 1000))
	for _, tc := range []struct{ network, host, wantLocal string }{
		{"tcp4", "web.ipipstack.test", "10.99.0.2:80"},
		{"tcp6", "web.ipipstack.test", "[fd99::2]:80"},
		{"tcp", "v6.ipipstack.test", "[fd99::2]:80"},
		{"tcp", "v4.ipipstack.test", "10.99.0.2:80"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		c, err := a.DialContext(ctx, tc.network, tc.host+":80")
		cancel()
		if err != nil {
			t.Fatalf("DialContext(%s, %s): %v", tc.network, tc.host, err)
		}
		if _, err := c.Write(payload); err != nil {
			t.Fatal(err)
		}
		c.Close()
		g := <-gotc
		if g.remote != tc.wantLocal || g.sum != sha256.Sum256(payload) {
			t.Errorf("DialContext(%s, %s) reached %s with sha256 %x, want %s and %x", tc.network, tc.host,
				g.remote, g.sum[:4], tc.wantLocal, sha256.Sum256(payload))
		}
	}
}

// TestDialByNameTriesEachAddress: both.ipipstack.test has 10.99.0.1 (the
// dialer itself, nothing listening: refused) and 10.99.0.2 (listening).
// The dial connects whichever comes first. A UDP dial by name works too.
func TestDialByNameTriesEachAddress(t *testing.T) {
	a, b, _, _ := dnsPair(t, "10.99.0.2:53")
	ln, err := b.Listen("tcp4", "10.99.0.2:81")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var accepted atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Close()
		}
	}()
	c, err := a.Dial("tcp", "both.ipipstack.test:81")
	if err != nil {
		t.Fatalf("Dial(both): %v", err)
	}
	if got := c.RemoteAddr().String(); got != "10.99.0.2:81" {
		t.Errorf("Dial(both) connected to %s, want 10.99.0.2:81", got)
	}
	c.Close()

	pc, err := b.ListenPacket("udp4", "10.99.0.2:7")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	uc, err := a.Dial("udp", "v4.ipipstack.test:7")
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	if _, err := uc.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	pc.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 16)
	n, from, err := pc.ReadFrom(buf)
	if err != nil || string(buf[:n]) != "ping" || from.String() != uc.LocalAddr().String() {
		t.Errorf("ReadFrom = %q from %v, %v; want \"ping\" from %v", buf[:n], from, err, uc.LocalAddr())
	}
}

// TestLookupNextServer: the first server never answers; once its query
// times out (the Go resolver waits resolv.conf's timeout, 5 s by default,
// per attempt), the next attempt asks the second server, which answers.
func TestLookupNextServer(t *testing.T) {
	a, _, srv, dead := dnsPair(t, "10.99.0.2:5353", "10.99.0.2:53")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	got, err := a.LookupNetIP(ctx, "ip4", "v4.ipipstack.test")
	if err != nil || len(got) != 1 || got[0] != netip.MustParseAddr("10.99.0.2") {
		t.Fatalf("LookupNetIP = %v, %v; want [10.99.0.2]", got, err)
	}
	if len(dead.Asked()) == 0 || len(srv.Asked()) == 0 {
		t.Errorf("queries: silent server %q, answering server %q; want both asked", dead.Asked(), srv.Asked())
	}
}

// serveDNS runs d on s at addr, UDP and TCP, until the test ends.
func serveDNS(t testing.TB, d *dnstest.Server, s *stack.Stack, addr string) {
	t.Helper()
	pc, err := s.ListenPacket("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := s.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close(); ln.Close() })
	d.Serve(pc, ln)
}
