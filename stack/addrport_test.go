package stack_test

import (
	"context"
	"io"
	"net/netip"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/endpoint"
	"github.com/ipipstack/ipipstack/stack"
)

func TestListenAddrWildcard(t *testing.T) {
	a, _, _, _ := dnsPair(t)
	for _, tc := range []struct{ network, address, want string }{
		{"tcp", ":80", "[::]:80"},
		{"tcp4", ":81", "0.0.0.0:81"},
		{"tcp6", ":82", "[::]:82"},
		{"tcp4", "10.99.0.1:83", "10.99.0.1:83"},
	} {
		ln, err := a.Listen(tc.network, tc.address)
		if err != nil {
			t.Fatal(err)
		}
		if got := ln.Addr().String(); got != tc.want {
			t.Errorf("Listen(%q, %q).Addr() = %s, want %s", tc.network, tc.address, got, tc.want)
		}
		ln.Close()
	}
}

// TestAddrPortAPI: typed TCP with CloseWrite, typed UDP both ways.
func TestAddrPortAPI(t *testing.T) {
	a, b, _, _ := dnsPair(t)
	ln, err := b.ListenTCPAddrPort(netip.MustParseAddrPort("10.99.0.2:0"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		data, _ := io.ReadAll(c) // until CloseWrite
		c.Write(append([]byte("got "), data...))
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := a.DialTCPAddrPort(ctx, netip.MustParseAddrPort(ln.Addr().String()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("half"))
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if got, err := io.ReadAll(c); string(got) != "got half" {
		t.Errorf("reply = %q, %v; want \"got half\"", got, err)
	}

	srv, err := b.ListenUDPAddrPort(netip.MustParseAddrPort("10.99.0.2:5300"))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	cl, err := a.DialUDPAddrPort(netip.MustParseAddrPort("10.99.0.1:5000"), netip.MustParseAddrPort("10.99.0.2:5300"))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	cl.Write([]byte("q"))
	srv.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 8)
	n, from, err := srv.ReadFromUDPAddrPort(buf)
	if err != nil || string(buf[:n]) != "q" || from != netip.MustParseAddrPort("10.99.0.1:5000") {
		t.Fatalf("ReadFromUDPAddrPort = %q from %v, %v; want \"q\" from 10.99.0.1:5000", buf[:n], from, err)
	}
	srv.WriteToUDPAddrPort([]byte("r"), from)
	cl.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := cl.Read(buf); err != nil || string(buf[:n]) != "r" {
		t.Errorf("Read = %q, %v; want \"r\"", buf[:n], err)
	}
}

// TestEphemeralOuterPorts is the two-step set-up of the package doc: bind
// both outer sockets on port 0, then give each stack the other's port.
func TestEphemeralOuterPorts(t *testing.T) {
	ta, err := endpoint.ListenUDP(netip.MustParseAddrPort("127.0.0.1:0"), endpoint.SocketOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tb, err := endpoint.ListenUDP(netip.MustParseAddrPort("127.0.0.1:0"), endpoint.SocketOptions{})
	if err != nil {
		ta.Close()
		t.Fatal(err)
	}
	a, err := stack.New(stack.Config{Tunnels: []stack.Tunnel{{Name: "b", Conn: ta, Remote: tb.LocalAddr(), Addresses: []netip.Prefix{addrA}}}})
	if err != nil {
		tb.Close()
		t.Fatal(err)
	}
	defer a.Close()
	b, err := stack.New(stack.Config{Tunnels: []stack.Tunnel{{Name: "a", Conn: tb, Remote: ta.LocalAddr(), Addresses: []netip.Prefix{addrB}}}})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	la, ok := a.LocalAddr("b")
	if !ok || la.Port() == 0 || la != ta.LocalAddr() {
		t.Errorf("LocalAddr(b) = %v, %v; want %v", la, ok, ta.LocalAddr())
	}
	transfer(t, a, b, "10.99.0.2:80", 1<<16)
}
