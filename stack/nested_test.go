//go:build linux

package stack_test

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/endpoint"
	"github.com/ipipstack/ipipstack/stack"
)

// nestOver starts two stacks whose tunnel runs through the tunnel of a and
// b (as UDP inside it, from aIn:port to bIn:port): layer is 1, 2, ... and
// picks the inner addresses 10.<99-layer>.0.1/30 and fd<99-layer>::1/64
// (and .2, ::2). mtu is the nested tunnel's MTU.
func nestOver(t *testing.T, a, b *stack.Stack, aIn, bIn netip.Addr, layer int, mtu int) (*stack.Stack, *stack.Stack) {
	t.Helper()
	port := uint16(4800 + 10*layer)
	la, lb := netip.AddrPortFrom(aIn, port), netip.AddrPortFrom(bIn, port+1)
	tra, err := a.TunnelTransport(la)
	if err != nil {
		t.Fatal(err)
	}
	trb, err := b.TunnelTransport(lb)
	if err != nil {
		tra.Close()
		t.Fatal(err)
	}
	addr := func(end int) []netip.Prefix {
		return []netip.Prefix{
			netip.MustParsePrefix(fmt.Sprintf("10.%d.0.%d/30", 99-layer, end)),
			netip.MustParsePrefix(fmt.Sprintf("fd%d::%d/64", 99-layer, end)),
		}
	}
	name := fmt.Sprintf("layer%d", layer)
	sa := newStack(t, stack.Config{Tunnels: []stack.Tunnel{{Name: name, Local: la, Remote: lb, Addresses: addr(1), MTU: mtu, Conn: tra}}})
	sb := newStack(t, stack.Config{Tunnels: []stack.Tunnel{{Name: name, Local: lb, Remote: la, Addresses: addr(2), MTU: mtu, Conn: trb}}})
	return sa, sb
}

// TestNestedTunnels runs a tunnel inside a tunnel inside a tunnel: layer 0
// over loopback UDP (MTU 1472), layer 1 as UDP inside it (1472 - 28 =
// 1444), layer 2 inside that (1416). TCP, ping and a fragmented UDP
// datagram go through each nested layer, no layer drops anything, and
// nothing is fragmented on the way out of a layer below: every packet of
// a layer fits its carrier's MTU exactly.
func TestNestedTunnels(t *testing.T) {
	fcs := map[string]*fragCounter{}
	count := func(key string) func(endpoint.Transport) endpoint.Transport {
		fc := &fragCounter{}
		fcs[key] = fc
		return func(tr endpoint.Transport) endpoint.Transport { fc.Transport = tr; return fc }
	}
	p := newPair(t, "127.0.0.1", func(side int, tun *stack.Tunnel) { tun.Wrap = count(fmt.Sprint("layer0/", side)) })
	a1, b1 := nestOver(t, p.a, p.b, addrA.Addr(), addrB.Addr(), 1, 1472-28)
	a2, b2 := nestOver(t, a1, b1, netip.MustParseAddr("10.98.0.1"), netip.MustParseAddr("10.98.0.2"), 2, 1444-28)
	layers := []struct {
		a, b   *stack.Stack
		mtu    uint32
		v4, v6 netip.Addr
	}{
		{a1, b1, 1444, netip.MustParseAddr("10.98.0.2"), netip.MustParseAddr("fd98::2")},
		{a2, b2, 1416, netip.MustParseAddr("10.97.0.2"), netip.MustParseAddr("fd97::2")},
	}
	for i, l := range layers {
		t.Run(fmt.Sprint("layer", i+1), func(t *testing.T) {
			if got := l.a.Stats()[0].MTU; got != l.mtu {
				t.Errorf("MTU = %d, want %d", got, l.mtu)
			}
			for _, dst := range []netip.Addr{l.v4, l.v6} {
				rtt, err := l.a.Ping(context.Background(), dst)
				if err != nil {
					t.Fatalf("Ping(%v): %v", dst, err)
				}
				d := transfer(t, l.a, l.b, netip.AddrPortFrom(dst, 5040).String(), 4<<20)
				t.Logf("%v: ping %v, 4 MiB in %v", dst, rtt, d)

				// A datagram far above the MTU: the nested stack
				// fragments it, and each fragment fits the carrier.
				pc, err := l.b.ListenPacket("udp", netip.AddrPortFrom(dst, 9).String())
				if err != nil {
					t.Fatal(err)
				}
				c, err := l.a.Dial("udp", netip.AddrPortFrom(dst, 9).String())
				if err != nil {
					t.Fatal(err)
				}
				msg := bytes.Repeat([]byte("nested "), 3000)
				if _, err := c.Write(msg); err != nil {
					t.Fatal(err)
				}
				pc.SetReadDeadline(time.Now().Add(5 * time.Second))
				buf := make([]byte, 65536)
				n, _, err := pc.ReadFrom(buf)
				if err != nil || !bytes.Equal(buf[:n], msg) {
					t.Errorf("%v: %d-byte datagram: got %d bytes, %v", dst, len(msg), n, err)
				}
				c.Close()
				pc.Close()
			}
		})
	}
	all := []*stack.Stack{p.a, p.b, a1, b1, a2, b2}
	for i, s := range all {
		for _, st := range s.Stats() {
			if st.DropTotal() != 0 {
				t.Errorf("stack %d tunnel %s dropped %v", i, st.Name, st.Drops)
			}
		}
		if n := s.GVisor().Stats().IP.OutgoingPacketErrors.Value(); n != 0 {
			t.Errorf("stack %d: %d outgoing IP errors", i, n)
		}
	}
	// Layer 0 carries layer 1 (and so 2) unfragmented: only the
	// datagrams of the UDP tests themselves are fragments there.
	for k, fc := range fcs {
		t.Logf("%s: largest datagram %d bytes, %d fragments", k, fc.largest.Load(), fc.frags.Load())
		if fc.largest.Load() > 1472 {
			t.Errorf("%s: sent a %d-byte packet over a 1472-byte MTU", k, fc.largest.Load())
		}
	}
}

// TestNestedTunnelMTUTooBig nests a tunnel with the MTU of its carrier
// (1472) instead of 28 bytes less: it still works, because the carrier
// stack fragments each outer UDP datagram that no longer fits (gVisor
// fragments what it sends itself even with DF set, gvisor.dev/issue/5919),
// but every full-size packet then costs two. (gVisor's TCP leaves room for
// 40 bytes of options in every segment, so its segments stay 28 bytes
// short of the MTU and fit; the fragments of a large UDP datagram fill it.)
func TestNestedTunnelMTUTooBig(t *testing.T) {
	fc := &fragCounter{}
	p := newPair(t, "127.0.0.1", func(side int, tun *stack.Tunnel) {
		if side == 0 {
			tun.Wrap = func(tr endpoint.Transport) endpoint.Transport { fc.Transport = tr; return fc }
		}
	})
	a1, b1 := nestOver(t, p.a, p.b, addrA.Addr(), addrB.Addr(), 1, 1472)
	transfer(t, a1, b1, "10.98.0.2:5041", 1<<20)
	pc, err := b1.ListenPacket("udp", "10.98.0.2:9")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	c, err := a1.Dial("udp", "10.98.0.2:9")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msg := bytes.Repeat([]byte("too big "), 2500)
	before := fc.frags.Load()
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 65536)
	n, _, err := pc.ReadFrom(buf)
	if err != nil || !bytes.Equal(buf[:n], msg) {
		t.Fatalf("%d-byte datagram: got %d bytes, %v", len(msg), n, err)
	}
	// 20,008 bytes in nested fragments of 1468 bytes: 14, each of which
	// the carrier cuts in two.
	if got := fc.frags.Load() - before; got < 2*13 {
		t.Errorf("carrier sent %d fragments for the datagram, want each nested fragment in two", got)
	}
	for _, s := range []*stack.Stack{p.a, p.b, a1, b1} {
		for _, st := range s.Stats() {
			if st.DropTotal() != 0 {
				t.Errorf("tunnel %s dropped %v", st.Name, st.Drops)
			}
		}
	}
}
