package stack_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/netip"
	"time"

	"github.com/ipipstack/ipipstack/endpoint/endpointtest"
	"github.com/ipipstack/ipipstack/internal/dnstest"
	"github.com/ipipstack/ipipstack/stack"
)

// examplePeers joins stack a (10.99.0.1, fd99::1), which asks 10.99.0.2:53
// for names, to stack b (10.99.0.2, fd99::2), which serves DNS there: a
// stand-in for a DNS server somewhere inside the tunnel. The in-memory
// transport stands for the UDP sockets of the package example.
func examplePeers() (a, b *stack.Stack) {
	pa, pb := netip.MustParseAddrPort("192.0.2.1:4700"), netip.MustParseAddrPort("192.0.2.2:4700")
	ca, cb := endpointtest.Pipe(pa, pb, 0)
	a, err := stack.New(stack.Config{
		DNS: []netip.AddrPort{netip.MustParseAddrPort("10.99.0.2:53")},
		Tunnels: []stack.Tunnel{{Name: "to-b", Conn: ca, Remote: pb,
			Addresses: []netip.Prefix{netip.MustParsePrefix("10.99.0.1/30"), netip.MustParsePrefix("fd99::1/64")}}},
	})
	if err != nil {
		log.Fatal(err)
	}
	b, err = stack.New(stack.Config{Tunnels: []stack.Tunnel{{Name: "to-a", Conn: cb, Remote: pa,
		Addresses: []netip.Prefix{netip.MustParsePrefix("10.99.0.2/30"), netip.MustParsePrefix("fd99::2/64")}}}})
	if err != nil {
		log.Fatal(err)
	}
	pc, err := b.ListenPacket("udp4", "10.99.0.2:53")
	if err != nil {
		log.Fatal(err)
	}
	ln, err := b.Listen("tcp4", "10.99.0.2:53")
	if err != nil {
		log.Fatal(err)
	}
	srv := &dnstest.Server{Records: map[string][]netip.Addr{
		"web.example.test.": {netip.MustParseAddr("10.99.0.2"), netip.MustParseAddr("fd99::2")},
	}}
	srv.Serve(pc, ln) // closed with b
	return a, b
}

// An HTTP client that reaches servers inside the tunnel by name: the
// stack looks names up through Config.DNS and dials through the tunnel.
func Example_httpClientByName() {
	a, b := examplePeers()
	defer a.Close()
	defer b.Close()

	ln, err := b.Listen("tcp", ":80")
	if err != nil {
		log.Fatal(err)
	}
	go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s\n", r.Host)
	}))

	client := &http.Client{Transport: &http.Transport{DialContext: a.DialContext}}
	resp, err := client.Get("http://web.example.test/")
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	fmt.Print(string(body))
	// Output: hello web.example.test
}

// A resolver that asks the DNS servers inside the tunnel.
func ExampleStack_LookupNetIP() {
	a, b := examplePeers()
	defer a.Close()
	defer b.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	addrs, err := a.LookupNetIP(ctx, "ip6", "web.example.test")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(addrs)
	// The same through the standard library's API:
	hosts, err := a.Resolver().LookupHost(ctx, "web.example.test")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(len(hosts), "addresses")
	// Output:
	// [fd99::2]
	// 2 addresses
}

// A server with Listen: an empty host listens on every inner address,
// IPv4 and IPv6, and Addr reads as net's.
func ExampleStack_Listen() {
	a, b := examplePeers()
	defer a.Close()
	defer b.Close()

	ln, err := b.Listen("tcp", ":7")
	if err != nil {
		log.Fatal(err)
	}
	defer ln.Close()
	fmt.Println("listening on", ln.Addr())
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()

	c, err := a.Dial("tcp", "[fd99::2]:7")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	fmt.Fprint(c, "echo")
	buf := make([]byte, 4)
	io.ReadFull(c, buf)
	fmt.Println(string(buf))
	// Output:
	// listening on [::]:7
	// echo
}

// UDP with netip.AddrPort: a server replying to each datagram's source.
func ExampleStack_ListenUDPAddrPort() {
	a, b := examplePeers()
	defer a.Close()
	defer b.Close()

	srv, err := b.ListenUDPAddrPort(netip.MustParseAddrPort("10.99.0.2:9000"))
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close()
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := srv.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			srv.WriteToUDPAddrPort(append([]byte("re: "), buf[:n]...), from)
		}
	}()

	c, err := a.DialUDPAddrPort(netip.AddrPort{}, netip.MustParseAddrPort("10.99.0.2:9000"))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("hi"))
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 1500)
	n, from, err := c.ReadFromUDPAddrPort(buf)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s from %v\n", buf[:n], from)
	// Output: re: hi from 10.99.0.2:9000
}

// Ping sends ICMP echo requests through the tunnel; the peer's stack
// answers.
func ExampleStack_Ping() {
	a, b := examplePeers()
	defer a.Close()
	defer b.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rtt, err := a.Ping(ctx, netip.MustParseAddr("10.99.0.2"))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("reply from 10.99.0.2, round trip > 0:", rtt > 0)
	// Output: reply from 10.99.0.2, round trip > 0: true
}
