package stack_test

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/stack"
)

// newPeerStack starts a one-tunnel stack for the far side of a tunnel.
func newPeerStack(t *testing.T, tun stack.Tunnel) *stack.Stack {
	t.Helper()
	s, err := stack.New(stack.Config{Tunnels: []stack.Tunnel{tun}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func hasRouteVia(s *stack.Stack, name string) bool {
	for _, r := range s.Routes() {
		if r.Tunnel == name {
			return true
		}
	}
	return false
}

func hasStats(s *stack.Stack, name string) bool {
	for _, st := range s.Stats() {
		if st.Name == name {
			return true
		}
	}
	return false
}

// pingWithin pings dst from s with a generous deadline.
func pingWithin(t *testing.T, s *stack.Stack, dst string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := s.Ping(ctx, netip.MustParseAddr(dst)); err != nil {
		t.Fatalf("ping %s: %v", dst, err)
	}
}

// TestAddRemoveTunnelWhileTransferring adds one tunnel and removes
// another while a TCP transfer runs over a third, which must arrive
// byte-exact; the removed tunnel's routes and counters are gone, and its
// name can be added again and carries traffic.
func TestAddRemoveTunnelWhileTransferring(t *testing.T) {
	// t1: a <-> b over loopback UDP, carrying the transfer.
	pa, pb := freeUDPPort(t, "127.0.0.1"), freeUDPPort(t, "127.0.0.1")
	t1a := stack.Tunnel{Name: "t1", Local: pa, Remote: pb, Addresses: []netip.Prefix{netip.MustParsePrefix("10.61.0.1/30")}}
	t1b := stack.Tunnel{Name: "t1", Local: pb, Remote: pa, Addresses: []netip.Prefix{netip.MustParsePrefix("10.61.0.2/30")}}
	// t3: a <-> c in memory, removed during the transfer.
	t3a, t3c := pipeTunnels("t3", netip.MustParsePrefix("10.63.0.1/30"), "t3", netip.MustParsePrefix("10.63.0.2/30"))
	a, err := stack.New(stack.Config{Tunnels: []stack.Tunnel{t1a, t3a}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	b := newPeerStack(t, t1b)
	newPeerStack(t, t3c)
	extra := stack.Route{Prefix: netip.MustParsePrefix("10.163.0.0/16"), Tunnel: "t3"}
	if err := a.AddRoute(extra); err != nil {
		t.Fatal(err)
	}
	pingWithin(t, a, "10.63.0.2")
	// t2: a <-> d in memory, added during the transfer.
	t2a, t2d := pipeTunnels("t2", netip.MustParsePrefix("10.62.0.1/30"), "t2", netip.MustParsePrefix("10.62.0.2/30"))
	t2a.Routes = []netip.Prefix{netip.MustParsePrefix("10.162.0.0/16")}
	newPeerStack(t, t2d)

	// Change the tunnels while the second half of 16 MiB is written.
	transferMidway(t, a, b, "10.61.0.2:9000", 16<<20, func() error {
		if err := a.AddTunnel(t2a); err != nil {
			return err
		}
		return a.RemoveTunnel("t3")
	})

	if hasRouteVia(a, "t3") {
		t.Errorf("routes through removed t3 remain: %v", a.Routes())
	}
	if hasStats(a, "t3") || a.Endpoint("t3") != nil {
		t.Error("removed t3 still has counters or an endpoint")
	}
	if !hasRouteVia(a, "t2") || !hasStats(a, "t2") {
		t.Errorf("added t2 has no routes or counters: %v", a.Routes())
	}
	want := []stack.Route{
		{Prefix: netip.MustParsePrefix("10.61.0.0/30"), Tunnel: "t1"},
		{Prefix: netip.MustParsePrefix("10.62.0.0/30"), Tunnel: "t2"},
		{Prefix: netip.MustParsePrefix("10.162.0.0/16"), Tunnel: "t2"},
	}
	if got := a.Routes(); !equalRoutes(got, want) {
		t.Errorf("Routes() = %v, want %v", got, want)
	}
	if err := a.RemoveRoute(extra); !errors.Is(err, stack.ErrUnknownTunnel) {
		t.Errorf("RemoveRoute through removed t3 = %v, want ErrUnknownTunnel", err)
	}
	pingWithin(t, a, "10.62.0.2")

	// The name is free again, and the new t3 carries traffic.
	t3a2, t3e := pipeTunnels("t3", netip.MustParsePrefix("10.64.0.1/30"), "t3", netip.MustParsePrefix("10.64.0.2/30"))
	newPeerStack(t, t3e)
	if err := a.AddTunnel(t3a2); err != nil {
		t.Fatal(err)
	}
	pingWithin(t, a, "10.64.0.2")
}

func equalRoutes(a, b []stack.Route) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestAddRemoveTunnelErrors checks the errors of AddTunnel and
// RemoveTunnel, and that a Conn given to a failing AddTunnel is closed.
func TestAddRemoveTunnelErrors(t *testing.T) {
	t1, _ := pipeTunnels("t1", netip.MustParsePrefix("10.71.0.1/30"), "x", netip.MustParsePrefix("10.71.0.2/30"))
	a, err := stack.New(stack.Config{Tunnels: []stack.Tunnel{t1}})
	if err != nil {
		t.Fatal(err)
	}
	dup, _ := pipeTunnels("t1", netip.MustParsePrefix("10.72.0.1/30"), "x", netip.MustParsePrefix("10.72.0.2/30"))
	cc := &closeCounter{Transport: dup.Conn}
	dup.Conn = cc
	if err := a.AddTunnel(dup); !errors.Is(err, stack.ErrLinkExists) {
		t.Errorf("AddTunnel(duplicate) = %v, want ErrLinkExists", err)
	}
	if n := cc.closes.Load(); n != 1 {
		t.Errorf("duplicate's Conn closed %d times, want 1", n)
	}
	bad, _ := pipeTunnels("t2", netip.MustParsePrefix("10.73.0.1/30"), "x", netip.MustParsePrefix("10.73.0.2/30"))
	bad.Addresses = append(bad.Addresses, netip.Prefix{})
	if err := a.AddTunnel(bad); err == nil {
		t.Error("AddTunnel with an invalid address succeeded")
	}
	if hasStats(a, "t2") || hasRouteVia(a, "t2") {
		t.Error("a failed AddTunnel left its tunnel or routes behind")
	}
	if err := a.RemoveTunnel("nope"); !errors.Is(err, stack.ErrUnknownTunnel) {
		t.Errorf("RemoveTunnel(nope) = %v, want ErrUnknownTunnel", err)
	}
	a.Close()
	if err := a.RemoveTunnel("t1"); !errors.Is(err, stack.ErrClosed) {
		t.Errorf("RemoveTunnel after Close = %v, want ErrClosed", err)
	}
	late, _ := pipeTunnels("t9", netip.MustParsePrefix("10.74.0.1/30"), "x", netip.MustParsePrefix("10.74.0.2/30"))
	if err := a.AddTunnel(late); !errors.Is(err, stack.ErrClosed) {
		t.Errorf("AddTunnel after Close = %v, want ErrClosed", err)
	}
}
