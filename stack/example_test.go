package stack_test

import (
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"

	"github.com/ipipstack/ipipstack/stack"
)

// Two stacks joined by a UDP (FOU) tunnel over loopback: B serves HTTP on
// its inner address and A fetches from it with an ordinary http.Client.
func Example() {
	// Two free loopback UDP ports for the outer sockets.
	portA, portB := freePort(), freePort()

	a, err := stack.New(stack.Config{Tunnels: []stack.Tunnel{{
		Name:      "to-b",
		Local:     portA,
		Remote:    portB,
		Addresses: []netip.Prefix{netip.MustParsePrefix("10.99.0.1/30")},
	}}})
	if err != nil {
		log.Fatal(err)
	}
	defer a.Close()
	b, err := stack.New(stack.Config{Tunnels: []stack.Tunnel{{
		Name:      "to-a",
		Local:     portB,
		Remote:    portA,
		Addresses: []netip.Prefix{netip.MustParsePrefix("10.99.0.2/30")},
	}}})
	if err != nil {
		log.Fatal(err)
	}
	defer b.Close()

	ln, err := b.Listen("tcp", "10.99.0.2:80")
	if err != nil {
		log.Fatal(err)
	}
	go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s over the tunnel\n", r.Host)
	}))

	client := &http.Client{Transport: &http.Transport{DialContext: a.DialContext}}
	resp, err := client.Get("http://10.99.0.2/")
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	fmt.Print(string(body))
	// Output: hello 10.99.0.2 over the tunnel
}

func freePort() netip.AddrPort {
	c, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).AddrPort()
}
