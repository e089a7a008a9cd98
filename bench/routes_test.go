package bench

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/endpoint/endpointtest"
	"github.com/ipipstack/ipipstack/stack"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	gvstack "gvisor.dev/gvisor/pkg/tcpip/stack"
)

// lookups is how many route lookups one op of the lookup benchmarks
// makes, so that -benchtime 1x still averages over many.
const lookups = 1000

// routeTunnels is how many tunnels the route benchmarks spread routes over.
const routeTunnels = 4

// benchRoute is the i-th of the benchmarks' routes: a /24 in 10.0.0.0/8
// (10.(i/256).(i%256).0/24), through one of routeTunnels tunnels in turn.
func benchRoute(i int) stack.Route {
	p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24)
	return stack.Route{Prefix: p, Tunnel: fmt.Sprintf("t%d", i%routeTunnels)}
}

// routeStack is a stack with routeTunnels idle tunnels over in-memory
// pipes whose far ends nobody reads (a full pipe drops, as a socket
// would), the first with a default route, which gVisor matches last.
func routeStack(tb testing.TB) *stack.Stack {
	tb.Helper()
	var tuns []stack.Tunnel
	for i := range routeTunnels {
		local := netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(1 + 2*i)}), 4700)
		remote := netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(2 + 2*i)}), 4700)
		conn, _ := endpointtest.Pipe(local, remote, 64)
		tuns = append(tuns, stack.Tunnel{
			Name: fmt.Sprintf("t%d", i), Local: local, Remote: remote, Conn: conn,
			Addresses:    []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{172, 16, byte(i), 1}), 24)},
			DefaultRoute: i == 0,
		})
	}
	s, err := stack.New(stack.Config{Tunnels: tuns})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.Close() })
	return s
}

// BenchmarkRoutes measures the stack's route table with n routes (n /24s
// over four tunnels, see benchRoute) against gVisor's own table used
// directly:
//
//   - stack/add-remove: each op adds the n routes one at a time with
//     AddRoute and removes them one at a time with RemoveRoute; reported
//     per route as add-ns/route and remove-ns/route.
//   - stack/writeto-last, stack/writeto-first: UDP WriteTos from an
//     unbound socket (a route lookup per datagram) to a destination
//     only the default route covers, which gVisor's list holds last, or
//     covered by the /24 that gVisor holds first; reported as
//     ns/lookup (lookups per op, a whole WriteTo each).
//   - gvisor/add-remove, gvisor/findroute-last, gvisor/findroute-first:
//     the same against a bare gVisor stack's AddRoute, RemoveRoutes and
//     FindRoute.
func BenchmarkRoutes(b *testing.B) {
	for _, n := range []int{0, 1000, 10000} {
		b.Run(fmt.Sprintf("n=%d", n), func(b *testing.B) {
			b.Run("stack/add-remove", func(b *testing.B) {
				if n == 0 {
					b.Skip("nothing to add")
				}
				s := routeStack(b)
				var add, remove time.Duration
				b.ResetTimer()
				for range b.N {
					t0 := time.Now()
					for i := range n {
						if err := s.AddRoute(benchRoute(i)); err != nil {
							b.Fatal(err)
						}
					}
					t1 := time.Now()
					for i := range n {
						if err := s.RemoveRoute(benchRoute(i)); err != nil {
							b.Fatal(err)
						}
					}
					add, remove = add+t1.Sub(t0), remove+time.Since(t1)
				}
				b.ReportMetric(float64(add.Nanoseconds())/float64(b.N*n), "add-ns/route")
				b.ReportMetric(float64(remove.Nanoseconds())/float64(b.N*n), "remove-ns/route")
			})
			for _, c := range []struct {
				name string
				dst  netip.Addr
			}{
				{"last", netip.MustParseAddr("192.0.2.200")},
				{"first", netip.MustParseAddr("10.0.0.9")},
			} {
				b.Run("stack/writeto-"+c.name, func(b *testing.B) {
					s := routeStack(b)
					for i := range n {
						if err := s.AddRoute(benchRoute(i)); err != nil {
							b.Fatal(err)
						}
					}
					pc, err := s.ListenPacket("udp4", ":0")
					if err != nil {
						b.Fatal(err)
					}
					defer pc.Close()
					dst := net.UDPAddrFromAddrPort(netip.AddrPortFrom(c.dst, 9))
					msg := []byte("route me")
					b.ResetTimer()
					for range b.N * lookups {
						if _, err := pc.WriteTo(msg, dst); err != nil {
							b.Fatal(err)
						}
					}
					b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*lookups), "ns/lookup")
				})
			}
			gvisorRouteBench(b, n)
		})
	}
}

// gvisorRouteBench is BenchmarkRoutes against a bare gVisor stack with
// four NICs and the same routes, added with its own AddRoute.
func gvisorRouteBench(b *testing.B, n int) {
	newGV := func(b *testing.B) *gvstack.Stack {
		s := gvstack.New(gvstack.Options{NetworkProtocols: []gvstack.NetworkProtocolFactory{ipv4.NewProtocol}})
		b.Cleanup(s.Destroy)
		for i := range routeTunnels {
			id := tcpip.NICID(i + 1)
			if err := s.CreateNIC(id, channel.New(1, 1500, "")); err != nil {
				b.Fatal(err)
			}
			addr := tcpip.AddrFrom4([4]byte{172, 16, byte(i), 1})
			if err := s.AddProtocolAddress(id, tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber,
				AddressWithPrefix: addr.WithPrefix()}, gvstack.AddressProperties{}); err != nil {
				b.Fatal(err)
			}
		}
		return s
	}
	gvRoute := func(i int) tcpip.Route {
		r := benchRoute(i)
		sn, err := tcpip.NewSubnet(tcpip.AddrFrom4(r.Prefix.Addr().As4()), tcpip.MaskFromBytes(net.CIDRMask(24, 32)))
		if err != nil {
			b.Fatal(err)
		}
		return tcpip.Route{Destination: sn, NIC: tcpip.NICID(i%routeTunnels + 1)}
	}
	defaultRoute := tcpip.Route{Destination: header4Any(b), NIC: 1}
	b.Run("gvisor/add-remove", func(b *testing.B) {
		if n == 0 {
			b.Skip("nothing to add")
		}
		s := newGV(b)
		s.AddRoute(defaultRoute)
		var add, remove time.Duration
		b.ResetTimer()
		for range b.N {
			t0 := time.Now()
			for i := range n {
				s.AddRoute(gvRoute(i))
			}
			t1 := time.Now()
			for i := range n {
				r := gvRoute(i)
				if s.RemoveRoutes(func(e tcpip.Route) bool { return e.Equal(r) }) != 1 {
					b.Fatalf("route %v not removed", r)
				}
			}
			add, remove = add+t1.Sub(t0), remove+time.Since(t1)
		}
		b.ReportMetric(float64(add.Nanoseconds())/float64(b.N*n), "add-ns/route")
		b.ReportMetric(float64(remove.Nanoseconds())/float64(b.N*n), "remove-ns/route")
	})
	for _, c := range []struct {
		name string
		dst  tcpip.Address
	}{
		{"last", tcpip.AddrFrom4([4]byte{192, 0, 2, 200})},
		{"first", tcpip.AddrFrom4([4]byte{10, 0, 0, 9})},
	} {
		b.Run("gvisor/findroute-"+c.name, func(b *testing.B) {
			s := newGV(b)
			for i := range n {
				s.AddRoute(gvRoute(i))
			}
			s.AddRoute(defaultRoute)
			b.ResetTimer()
			for range b.N * lookups {
				r, err := s.FindRoute(0, tcpip.Address{}, c.dst, ipv4.ProtocolNumber, false)
				if err != nil {
					b.Fatalf("FindRoute(%v): %v", c.dst, err)
				}
				r.Release()
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*lookups), "ns/lookup")
		})
	}
}

// header4Any is 0.0.0.0/0 as a gVisor subnet.
func header4Any(tb testing.TB) tcpip.Subnet {
	sn, err := tcpip.NewSubnet(tcpip.AddrFrom4([4]byte{}), tcpip.MaskFromBytes(make([]byte, 4)))
	if err != nil {
		tb.Fatal(err)
	}
	return sn
}
