package stack_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/endpoint/encap"
	"github.com/ipipstack/ipipstack/stack"
)

// filteredHub builds the chain s0 -left- s1 -right- s2 where the hub s1
// forwards and filters what arrives from s0 (its tunnel "left") with f.
func filteredHub(t *testing.T, f *stack.Filter) *chain {
	t.Helper()
	return newChain(t, 3, func(link, end int, tun *stack.Tunnel) {
		if link == 0 && end == 1 {
			tun.Filter = f
		}
	})
}

// filtered returns how many packets the hub's filter on "left" dropped.
func filtered(t *testing.T, c *chain) uint64 {
	t.Helper()
	st := tunnelStats(t, c.s[1], "left")
	if st.Drops[encap.Filtered] != st.Filter.Denied {
		t.Errorf("Drops[filtered] = %d, Filter.Denied = %d: want them equal", st.Drops[encap.Filtered], st.Filter.Denied)
	}
	return st.Drops[encap.Filtered]
}

// dialRefused dials address on s and expects no connection: the SYN is
// dropped, so the dial runs into its deadline; the drop counter, not the
// time, is what the callers assert on.
func dialRefused(t *testing.T, s *stack.Stack, address string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	c, err := s.DialContext(ctx, "tcp", address)
	if err == nil {
		c.Close()
		t.Fatalf("dial %s: connected, want the SYN dropped by the filter", address)
	}
	if !errors.Is(err, context.DeadlineExceeded) && !isTimeout(err) {
		t.Fatalf("dial %s: %v, want a timeout (SYN dropped, not refused with RST)", address, err)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestFilterReverseForwardOfOtherTunnel is the hardening issue's case: a
// peer (s0) sends a SYN to a listener of the hub bound to the address of
// the hub's other tunnel (10.0.2.1, "right"), as a reverse forward is.
// Without a filter it is answered; a filter that does not allow it drops
// the SYN, and a rule that allows it lets the connection through.
func TestFilterReverseForwardOfOtherTunnel(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		other := linkAddr(1, 0, v6).Addr() // the hub's address on "right"
		listen := netip.AddrPortFrom(other, 8080).String()
		t.Run(fmt.Sprintf("v6=%v/no filter", v6), func(t *testing.T) {
			c := filteredHub(t, nil)
			transfer(t, c.s[0], c.s[1], listen, 64<<10)
		})
		t.Run(fmt.Sprintf("v6=%v/denied", v6), func(t *testing.T) {
			c := filteredHub(t, &stack.Filter{Default: stack.FilterDeny, Rules: []stack.FilterRule{
				{Action: stack.FilterAllow, Protocol: stack.FilterICMP},
			}})
			ln, err := c.s[1].Listen("tcp", listen)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			before := filtered(t, c)
			dialRefused(t, c.s[0], listen)
			if got := filtered(t, c); got <= before {
				t.Fatalf("filtered drops %d -> %d: want the SYN counted", before, got)
			}
			if st := tunnelStats(t, c.s[1], "left"); st.Filter.Flows != 0 {
				t.Errorf("flows = %d after a denied SYN, want 0", st.Filter.Flows)
			}
		})
		t.Run(fmt.Sprintf("v6=%v/allowed", v6), func(t *testing.T) {
			c := filteredHub(t, &stack.Filter{Default: stack.FilterDeny, Rules: []stack.FilterRule{
				{Action: stack.FilterAllow, Protocol: stack.FilterTCP,
					Destinations: []netip.Prefix{netip.PrefixFrom(other, other.BitLen())}, Ports: []stack.PortRange{{8080, 8080}}},
			}})
			transfer(t, c.s[0], c.s[1], listen, 1<<20)
			if n := filtered(t, c); n != 0 {
				t.Errorf("filtered drops = %d, want 0", n)
			}
			if st := tunnelStats(t, c.s[1], "left"); st.Filter.Flows != 1 {
				t.Errorf("flows = %d, want 1 (the connection)", st.Filter.Flows)
			}
		})
	}
}

// TestFilterAllowByPort: with a rule for one port range and default
// deny, ports inside the range connect and a port outside does not.
func TestFilterAllowByPort(t *testing.T) {
	hub := linkAddr(0, 1, false).Addr() // the hub's own address on "left"
	c := filteredHub(t, &stack.Filter{Rules: []stack.FilterRule{
		{Action: stack.FilterAllow, Protocol: stack.FilterTCP, Ports: []stack.PortRange{{8000, 8010}}},
	}})
	transfer(t, c.s[0], c.s[1], netip.AddrPortFrom(hub, 8000).String(), 64<<10)
	transfer(t, c.s[0], c.s[1], netip.AddrPortFrom(hub, 8010).String(), 64<<10)
	if n := filtered(t, c); n != 0 {
		t.Fatalf("filtered drops = %d after allowed connections, want 0", n)
	}
	ln, err := c.s[1].Listen("tcp", netip.AddrPortFrom(hub, 8011).String())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dialRefused(t, c.s[0], netip.AddrPortFrom(hub, 8011).String())
	if n := filtered(t, c); n == 0 {
		t.Fatal("filtered drops = 0 after a SYN to port 8011, want it counted")
	}
}

// TestFilterDenyByPrefix: deny one destination prefix, allow the rest:
// the hub's own address on the other tunnel is refused, and the stack
// behind it (s2, forwarded) answers pings while the hub does not.
func TestFilterDenyByPrefix(t *testing.T) {
	hubOther := linkAddr(1, 0, false).Addr()
	c := filteredHub(t, &stack.Filter{Default: stack.FilterAllow, Rules: []stack.FilterRule{
		{Action: stack.FilterDeny, Destinations: []netip.Prefix{netip.PrefixFrom(hubOther, 32)}},
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.s[0].Ping(ctx, c.addr(2, false)); err != nil {
		t.Fatalf("ping s2 through the hub: %v", err)
	}
	if n := filtered(t, c); n != 0 {
		t.Fatalf("filtered drops = %d after a forwarded ping, want 0", n)
	}
	pctx, pcancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer pcancel()
	if _, err := c.s[0].Ping(pctx, hubOther); err == nil {
		t.Fatal("ping of the denied prefix answered")
	}
	dialRefused(t, c.s[0], netip.AddrPortFrom(hubOther, 22).String())
	if n := filtered(t, c); n < 2 {
		t.Fatalf("filtered drops = %d, want the echo request and the SYN at least", n)
	}
}

// TestFilterRepliesPass: with default deny and no rules, TCP, UDP and
// ping that the hub starts into the tunnel get their replies, while the
// same started from the peer are dropped.
func TestFilterRepliesPass(t *testing.T) {
	c := filteredHub(t, &stack.Filter{})
	hub, peer := linkAddr(0, 1, false).Addr(), linkAddr(0, 0, false).Addr()

	// TCP: hub -> peer passes both ways (SHA-256 checked by transfer),
	// peer -> hub does not.
	transfer(t, c.s[1], c.s[0], netip.AddrPortFrom(peer, 9000).String(), 1<<20)
	if n := filtered(t, c); n != 0 {
		t.Fatalf("filtered drops = %d after a connection the hub opened, want 0", n)
	}
	ln, err := c.s[1].Listen("tcp", netip.AddrPortFrom(hub, 9000).String())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dialRefused(t, c.s[0], netip.AddrPortFrom(hub, 9000).String())
	tcpDrops := filtered(t, c)
	if tcpDrops == 0 {
		t.Fatal("unsolicited SYN not counted")
	}

	// UDP: the hub asks, the peer answers from the port asked.
	peerUDP, err := c.s[0].ListenPacket("udp", netip.AddrPortFrom(peer, 53).String())
	if err != nil {
		t.Fatal(err)
	}
	defer peerUDP.Close()
	hubUDP, err := c.s[1].ListenPacket("udp", netip.AddrPortFrom(hub, 5353).String())
	if err != nil {
		t.Fatal(err)
	}
	defer hubUDP.Close()
	if _, err := hubUDP.WriteTo([]byte("query"), peerUDP.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	peerUDP.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, from, err := peerUDP.ReadFrom(buf)
	if err != nil || string(buf[:n]) != "query" {
		t.Fatalf("peer read %q, %v", buf[:n], err)
	}
	if _, err := peerUDP.WriteTo([]byte("answer"), from); err != nil {
		t.Fatal(err)
	}
	hubUDP.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, _, err = hubUDP.ReadFrom(buf); err != nil || string(buf[:n]) != "answer" {
		t.Fatalf("hub read %q, %v: want the reply to pass", buf[:n], err)
	}
	// Unsolicited: from another port of the peer.
	other, err := c.s[0].ListenPacket("udp", netip.AddrPortFrom(peer, 54).String())
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if _, err := other.WriteTo([]byte("unsolicited"), hubUDP.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the unsolicited datagram to be filtered", func() bool { return filtered(t, c) > tcpDrops })
	udpDrops := filtered(t, c)

	// ICMP echo: the hub pings the peer; the peer's ping is dropped.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.s[1].Ping(ctx, peer); err != nil {
		t.Fatalf("hub pings the peer: %v", err)
	}
	if n := filtered(t, c); n != udpDrops {
		t.Fatalf("filtered drops %d -> %d during the hub's ping, want no change", udpDrops, n)
	}
	pctx, pcancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer pcancel()
	if _, err := c.s[0].Ping(pctx, hub); err == nil {
		t.Fatal("the peer's ping of the hub was answered")
	}
	if n := filtered(t, c); n == udpDrops {
		t.Fatal("the peer's echo request was not counted")
	}
}

// TestFilterConfigErrors: New refuses invalid filters and says which
// tunnel and rule.
func TestFilterConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		f    stack.Filter
		want string
	}{
		{"ports without protocol", stack.Filter{Rules: []stack.FilterRule{{Ports: []stack.PortRange{{1, 2}}}}},
			`stack: tunnel "right": filter: rule 0: ports need protocol tcp or udp, not any`},
		{"empty range", stack.Filter{Rules: []stack.FilterRule{{}, {Protocol: stack.FilterUDP, Ports: []stack.PortRange{{9, 2}}}}},
			`stack: tunnel "right": filter: rule 1: port range 9-2 is empty`},
		{"max flows", stack.Filter{MaxFlows: -1},
			`stack: tunnel "right": filter: max flows -1: want 0 (the default, 65536) to 16777216`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, _ := pipeTunnels("right", linkAddr(0, 0, false), "left", linkAddr(0, 1, false))
			a.Filter = &tc.f
			s, err := stack.New(stack.Config{Tunnels: []stack.Tunnel{a}})
			if err == nil {
				s.Close()
				t.Fatal("New succeeded")
			}
			if err.Error() != tc.want {
				t.Fatalf("New: %v\nwant %s", err, tc.want)
			}
		})
	}
}
