//go:build linux

package stack_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/endpoint"
	"github.com/ipipstack/ipipstack/endpoint/encap"
	"github.com/ipipstack/ipipstack/stack"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// The tests in this file narrow the outer path from A to B with a route
// of a lower MTU in A's namespace (ip route ... mtu N), which the kernel
// reports through IP_MTU and enforces with EMSGSIZE, as it would a path
// MTU learned from ICMP. They run the raw IPv4 and the UDP-over-IPv4
// transport in the namespaces of raw_test.go.

// outerTransports are the transports the outer path MTU tests run: the
// side's tunnel is edited to use it.
var outerTransports = []struct {
	name string
	edit func(side int, tun *stack.Tunnel)
	// overhead is the outer headers' size.
	overhead int
}{
	{"raw", func(int, *stack.Tunnel) {}, 20},
	{"udp", func(side int, tun *stack.Tunnel) {
		tun.Transport = stack.UDP
		tun.Local = netip.AddrPortFrom(tun.Local.Addr(), uint16(4710+side))
		tun.Remote = netip.AddrPortFrom(tun.Remote.Addr(), uint16(4711-side))
	}, 28},
}

// narrowRoute gives A's route to B's outer address the MTU mtu and
// returns a function that removes it again.
func narrowRoute(t *testing.T, n *rawNet, mtu string) (remove func()) {
	t.Helper()
	args := []string{"route", "add", rawOuterB4.String() + "/32", "dev", "vA", "mtu", mtu}
	n.a.ip(t, args...)
	return func() { n.a.ip(t, "route", "del", rawOuterB4.String()+"/32", "dev", "vA") }
}

// waitMTU waits until ep's MTU is want, and fails the test if it is not
// within 5 s (the expiry the tests set is 300 ms).
func waitMTU(t *testing.T, ep *endpoint.Endpoint, want uint32) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for ep.MTU() != want {
		if time.Now().After(deadline) {
			st := ep.Stats()
			t.Fatalf("MTU = %d after 5 s, want %d (outer path MTU %d learned %v, expires %v)", ep.MTU(), want,
				st.OuterPathMTU, st.OuterPathMTULearned, st.OuterPathMTUExpires)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// outerFrames returns the IPv4 packets from A's outer address to B's that
// a capture on vB saw.
func outerFrames(frames []rawFrame) []rawFrame {
	var out []rawFrame
	a := rawOuterA4.As4()
	for _, f := range frames {
		if !f.incoming || len(f.head) < 14+20 || binary.BigEndian.Uint16(f.head[12:]) != 0x0800 {
			continue
		}
		if [4]byte(f.head[14+12:14+16]) == a {
			out = append(out, f)
		}
	}
	return out
}

// TestOuterPathMTUExpires learns a lower outer path MTU (a route of MTU
// 1400 to the peer), then lifts it: once the learned value expires the
// tunnel MTU is back at its configured value, and a transfer crosses in
// outer packets above 1400 bytes (RFC 1191 §6.3, RFC 8201 §4; Linux
// mtu_expires). UDP GSO is off (zero UDP checksums rule it out): a
// capture on a veth sees a GSO message whole, not the datagrams it
// becomes. Tunnel.DisableGSO is not used: it also turns off the stack's
// TCP GSO, and then retransmitted TCP segments arrive with bad checksums
// (seen at the time of writing, send path, not path MTU).
func TestOuterPathMTUExpires(t *testing.T) {
	rawPrivileged(t)
	for _, tc := range outerTransports {
		t.Run(tc.name, func(t *testing.T) {
			n := rawNewNet(t)
			remove := narrowRoute(t, n, "1400")
			p := rawPair(t, n, false, func(side int, tun *stack.Tunnel) {
				tc.edit(side, tun)
				tun.PathMTUExpiry = 300 * time.Millisecond
				tun.ZeroUDPChecksum = tun.Transport == stack.UDP
			})
			ep := p.a.Endpoint("to-b")
			full := uint32(1500 - tc.overhead)
			if got := ep.MTU(); got != full {
				t.Fatalf("MTU before = %d, want %d", got, full)
			}
			dst := netip.AddrPortFrom(addrB.Addr(), 5040)
			transfer(t, p.a, p.b, dst.String(), 1<<20)
			low := uint32(1400 - tc.overhead)
			if got := ep.MTU(); got != low {
				t.Fatalf("MTU after learning = %d, want %d", got, low)
			}
			st := ep.Stats()
			t.Logf("learned: outer path MTU %d at %v, expires %v", st.OuterPathMTU, st.OuterPathMTULearned, st.OuterPathMTUExpires)
			if st.OuterPathMTU != 1400 || st.OuterPathMTULearned.IsZero() || !st.OuterPathMTUExpires.After(st.OuterPathMTULearned) {
				t.Errorf("Stats: outer path MTU %d learned %v expires %v, want 1400 and a later expiry",
					st.OuterPathMTU, st.OuterPathMTULearned, st.OuterPathMTUExpires)
			}
			// While the route still says 1400, expiry finds the kernel's
			// path MTU unchanged and keeps the MTU down.
			time.Sleep(time.Second)
			if got := ep.MTU(); got != low {
				t.Errorf("MTU after expiry with the path still narrow = %d, want %d", got, low)
			}

			remove()
			waitMTU(t, ep, full)
			if st := ep.Stats(); st.OuterPathMTU != 0 {
				t.Errorf("Stats after expiry: outer path MTU %d, want 0", st.OuterPathMTU)
			}
			c := rawStartCapture(t, n.b, "vB")
			drops := ep.Stats().Drops[encap.TooBig]
			transfer(t, p.a, p.b, netip.AddrPortFrom(addrB.Addr(), 5041).String(), 1<<20)
			largest := 0
			for _, f := range outerFrames(c.close(t)) {
				largest = max(largest, f.size-14)
			}
			t.Logf("largest outer packet after the expiry: %d bytes", largest)
			if largest <= 1400 || largest > 1500 {
				t.Errorf("largest outer packet after the expiry = %d bytes, want 1401..1500", largest)
			}
			if d := ep.Stats().Drops[encap.TooBig] - drops; d != 0 {
				t.Errorf("%d packets dropped as too big after the expiry", d)
			}
		})
	}
}

// pingSize sends ICMPv6 echo requests with size bytes of data from s to
// dst, one a second, until a reply with the same data comes back, and
// fails the test if none does in 5 s.
func pingSize(t *testing.T, s *stack.Stack, dst netip.Addr, size int) {
	t.Helper()
	var wq waiter.Queue
	ep, terr := s.GVisor().NewEndpoint(icmp.ProtocolNumber6, header.IPv6ProtocolNumber, &wq)
	if terr != nil {
		t.Fatal(terr)
	}
	defer ep.Close()
	if terr := ep.Connect(tcpip.FullAddress{Addr: tcpip.AddrFrom16(dst.As16())}); terr != nil {
		t.Fatal(terr)
	}
	entry, readable := waiter.NewChannelEntry(waiter.ReadableEvents)
	wq.EventRegister(&entry)
	defer wq.EventUnregister(&entry)
	req := make([]byte, header.ICMPv6EchoMinimumSize+size)
	req[0] = byte(header.ICMPv6EchoRequest)
	for i := range size {
		req[header.ICMPv6EchoMinimumSize+i] = byte(i*7 + 1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var buf bytes.Buffer
	for seq := uint16(1); ; seq++ {
		binary.BigEndian.PutUint16(req[6:], seq)
		if _, terr := ep.Write(bytes.NewReader(req), tcpip.WriteOptions{}); terr != nil {
			t.Fatalf("ping6 %v with %d bytes: write: %v", dst, size, terr)
		}
	wait:
		for {
			select {
			case <-ctx.Done():
				t.Fatalf("ping6 %v with %d bytes: no reply in 5 s", dst, size)
			case <-tick.C:
				break wait
			case <-readable:
			}
			for {
				buf.Reset()
				if _, terr := ep.Read(&buf, tcpip.ReadOptions{}); terr != nil {
					break
				}
				b := buf.Bytes()
				if len(b) == len(req) && b[0] == byte(header.ICMPv6EchoReply) &&
					bytes.Equal(b[header.ICMPv6EchoMinimumSize:], req[header.ICMPv6EchoMinimumSize:]) {
					return
				}
			}
		}
	}
}

// TestOuterPathMTUBelowIPv6Minimum narrows the outer path to 552 bytes, as
// one ICMP Fragmentation Needed quoting 552 would: the tunnel MTU stays at
// IPv6's minimum of 1280, ping6 of 56 and 1200 bytes both ways and an IPv6
// TCP transfer still work, and the outer packets too big for the path
// leave without DF and arrive as fragments of at most 552 bytes. Inner
// IPv4 is told the real path (Fragmentation Needed) and crosses too. UDP
// GSO stays on, for packets that fit the path; the capture sees such a
// message whole, so only fragments are measured.
func TestOuterPathMTUBelowIPv6Minimum(t *testing.T) {
	rawPrivileged(t)
	for _, tc := range outerTransports {
		t.Run(tc.name, func(t *testing.T) {
			n := rawNewNet(t)
			narrowRoute(t, n, "552")
			p := rawPair(t, n, false, tc.edit)
			ep := p.a.Endpoint("to-b")
			c := rawStartCapture(t, n.b, "vB")

			// A datagram too big for the path makes A learn it.
			sendNoDF(t, p.a, netip.AddrPortFrom(addrB.Addr(), 9), make([]byte, 1000))
			deadline := time.Now().Add(5 * time.Second)
			for ep.MTU() == uint32(1500-tc.overhead) && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			st := ep.Stats()
			t.Logf("after learning: MTU %d, outer path MTU %d, outer fragmentation %v", ep.MTU(), st.OuterPathMTU, st.OuterFragmentation)
			if got := ep.MTU(); got != endpoint.MinIPv6MTU {
				t.Errorf("MTU = %d, want %d", got, endpoint.MinIPv6MTU)
			}
			if st.OuterPathMTU != 552 || !st.OuterFragmentation {
				t.Errorf("Stats: outer path MTU %d, outer fragmentation %v; want 552, true", st.OuterPathMTU, st.OuterFragmentation)
			}

			for _, size := range []int{56, 1200} {
				pingSize(t, p.b, addrA6.Addr(), size)
				pingSize(t, p.a, addrB6.Addr(), size)
			}
			transfer(t, p.a, p.b, netip.AddrPortFrom(addrB6.Addr(), 5050).String(), 1<<20)
			transfer(t, p.b, p.a, netip.AddrPortFrom(addrA6.Addr(), 5051).String(), 1<<20)
			transfer(t, p.a, p.b, netip.AddrPortFrom(addrB.Addr(), 5052).String(), 1<<20)

			frags, big := 0, 0
			for _, f := range outerFrames(c.close(t)) {
				ip := header.IPv4(f.head[14:])
				if ip.More() || ip.FragmentOffset() != 0 {
					frags++
					if f.size-14 > 552 {
						big++
					}
					if ip.Flags()&header.IPv4FlagDontFragment != 0 {
						t.Errorf("outer fragment with DF: %x", f.head[14:34])
					}
				}
			}
			t.Logf("outer fragments A->B on the wire: %d", frags)
			if frags == 0 {
				t.Error("no outer fragments on the wire: nothing was sent above the path MTU without DF")
			}
			if big != 0 {
				t.Errorf("%d outer fragments above the 552-byte path", big)
			}
		})
	}
}
