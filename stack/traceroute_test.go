package stack_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/stack"
)

// TestTraceroute traces S1 → S4 through the routers S2 and S3: hop k is
// answered (ICMP Time Exceeded) by router k from the address of the link
// the probe came in on, the last hop by S4's echo reply.
func TestTraceroute(t *testing.T) {
	c := newChain(t, 4, nil)
	for _, v6 := range []bool{false, true} {
		dst := c.addr(3, v6)
		var streamed []stack.Hop
		hops, err := c.s[0].Traceroute(t.Context(), dst, stack.TraceOptions{MaxHops: 8, Wait: 2 * time.Second},
			func(h stack.Hop) { streamed = append(streamed, h) })
		if err != nil {
			t.Fatalf("Traceroute(%v): %v", dst, err)
		}
		want := []netip.Addr{linkAddr(0, 1, v6).Addr(), linkAddr(1, 1, v6).Addr(), dst}
		if len(hops) != len(want) {
			t.Fatalf("Traceroute(%v) = %+v, want %d hops", dst, hops, len(want))
		}
		for i, h := range hops {
			if h.TTL != i+1 || h.Addr != want[i] || h.Reached != (i == 2) || h.RTT <= 0 {
				t.Errorf("hop %d = %+v, want TTL %d from %v (reached %v) with an RTT", i+1, h, i+1, want[i], i == 2)
			}
		}
		if len(streamed) != len(hops) {
			t.Errorf("callback saw %d hops, want %d", len(streamed), len(hops))
		}
	}
}

// A hop that does not answer is reported as a timeout, and the trace ends
// at MaxHops.
func TestTracerouteSilentHop(t *testing.T) {
	// A /24 on the link, so that 10.0.1.3 is neither end nor broadcast:
	// S1 sends there through the tunnel, and S2, which does not forward,
	// drops it without a word.
	c := newChain(t, 2, func(_, _ int, tun *stack.Tunnel) {
		tun.Addresses[0] = netip.PrefixFrom(tun.Addresses[0].Addr(), 24)
	})
	dst := netip.MustParseAddr("10.0.1.3")
	hops, err := c.s[0].Traceroute(t.Context(), dst, stack.TraceOptions{MaxHops: 2, Wait: 200 * time.Millisecond}, nil)
	if err != nil {
		t.Fatalf("Traceroute: %v", err)
	}
	if len(hops) != 2 {
		t.Fatalf("Traceroute = %+v, want 2 hops", hops)
	}
	for _, h := range hops {
		if h.Addr.IsValid() || h.Reached {
			t.Errorf("hop %+v, want no answer", h)
		}
	}
}
