//go:build linux && interop

package interop

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/endpoint/encap"
	"github.com/ipipstack/ipipstack/stack"
)

// Path MTU tests need a router on the outer path: the VM forwards between
// its eth0 (192.0.2.10) and a namespace "far" inside it, over two veth
// links that are narrow on the router's side only (1400 and 1200 bytes;
// far's ends have 1500, so far's tunnels believe in a 1500-byte path and
// advertise a TCP MSS to match), and far holds the kernel's tunnel ends.
// A DF packet too big for the router's side makes the VM's kernel answer
// with ICMP Fragmentation Needed, as a router in the middle of a path
// would. Only the direction towards far is narrow.
const (
	routerAddr = "192.0.2.10"
	// farMTU1400 and farMTU1200 are far's addresses behind the 1400-byte
	// and the 1200-byte link.
	farMTU1400 = "198.51.100.2"
	farMTU1200 = "198.51.101.2"
	// farFOU and farMTU1400v6 are far's addresses for the FOU and the
	// ip6tnl tunnel behind the 1400-byte link; routerAddr6 is the VM's
	// eth0 address that routes there.
	farFOU       = "198.51.100.3"
	farMTU1400v6 = "2001:db8:100::2"
	routerAddr6  = "2001:db8::10"
	farFOU6      = "2001:db8:100::3"
	// mtuExpires is net.ipv4.route.mtu_expires in the test's namespace
	// (600 s by default): how long the host kernel keeps a learned path MTU.
	mtuExpires = 5 * time.Second
)

// routerSetup are the VM's commands that make the router and far's tunnels:
// ipip 198.51.100.2 <-> 192.0.2.1 (10.0.99.2/30) and sit 198.51.101.2 <->
// 192.0.2.1 (fd00:0:0:98::2/64).
var routerSetup = []string{
	"mkdir -p /run/netns /var/run/netns",
	"ip netns add far",
	"sysctl -qw net.ipv4.ip_forward=1",
	"ip addr add " + routerAddr + "/24 dev eth0",
	"ip link add v0 mtu 1400 type veth peer name v1 mtu 1500 netns far",
	"ip link add v2 mtu 1200 type veth peer name v3 mtu 1500 netns far",
	"ip addr add 198.51.100.1/24 dev v0",
	"ip addr add 198.51.101.1/24 dev v2",
	"ip link set v0 up",
	"ip link set v2 up",
	"ip -n far link set lo up",
	"ip -n far addr add " + farMTU1400 + "/24 dev v1",
	"ip -n far addr add " + farMTU1200 + "/24 dev v3",
	"ip -n far link set v1 up",
	"ip -n far link set v3 up",
	"ip -n far route add default via 198.51.100.1",
	"ip -n far link add p1 type ipip local " + farMTU1400 + " remote " + usOuter4.String(),
	"ip -n far addr add 10.0.99.2/30 dev p1",
	"ip -n far link set p1 up",
	"ip -n far link add p2 type sit local " + farMTU1200 + " remote " + usOuter4.String(),
	"ip -n far addr add fd00:0:0:98::2/64 dev p2",
	"ip -n far link set p2 up",
	// FOU over IPv4 and ip6tnl over IPv6 behind the 1400-byte link.
	"sysctl -qw net.ipv6.conf.all.forwarding=1",
	"ip addr add " + routerAddr6 + "/64 dev eth0 nodad",
	"ip addr add 2001:db8:100::1/64 dev v0 nodad",
	"ip -n far addr add " + farFOU + "/24 dev v1",
	"ip -n far addr add " + farMTU1400v6 + "/64 dev v1 nodad",
	"ip -n far -6 route add default via 2001:db8:100::1",
	"ip -n far fou add port 5600 ipproto 4",
	"ip -n far link add p3 type ipip local " + farFOU + " remote " + usOuter4.String() + " encap fou encap-sport 5600 encap-dport 6600 encap-csum",
	"ip -n far addr add 10.0.97.2/30 dev p3",
	"ip -n far link set p3 up",
	"ip -n far link add p4 type ip6tnl mode ip6ip6 local " + farMTU1400v6 + " remote " + usOuter6.String() + " encaplimit none",
	"ip -n far addr add fd00:0:0:96::2/64 dev p4 nodad",
	"ip -n far link set p4 up",
	"ip -n far addr add " + farFOU6 + "/64 dev v1 nodad",
	"ip -n far fou add port 5601 ipproto 4 -6",
	"ip -n far link add p5 type ip6tnl mode ipip6 local " + farFOU6 + " remote " + usOuter6.String() + " encaplimit none encap fou encap-sport 5601 encap-dport 6601 encap-csum",
	"ip -n far addr add 10.0.95.2/30 dev p5",
	"ip -n far link set p5 up",
}

// setupRouterHost routes far's links through the VM from the test's
// namespace and shortens the host kernel's path MTU expiry there.
func (e *env) setupRouterHost(t *testing.T) {
	t.Helper()
	e.ns.Run(t, "ip", "route", "add", "198.51.100.0/23", "via", routerAddr, "dev", tapDev)
	e.ns.Run(t, "ip", "-6", "route", "add", "2001:db8:100::/64", "via", routerAddr6, "dev", tapDev)
	err := e.ns.Do(func() error {
		return os.WriteFile("/proc/sys/net/ipv4/route/mtu_expires", []byte(fmt.Sprint(int(mtuExpires.Seconds()))), 0)
	})
	if err != nil {
		t.Fatalf("interop: net.ipv4.route.mtu_expires in %s: %v", e.ns.Name(), err)
	}
}

// testPathMTU runs the tests behind the router.
func (e *env) testPathMTU(t *testing.T) {
	t.Run("frag-needed-ipip", func(t *testing.T) {
		// 4 MiB over raw ipip to far, across the 1400-byte link: the
		// first full-size outer packet (1500 bytes, DF) draws the VM's
		// Fragmentation Needed (MTU 1400); the host kernel records it,
		// our endpoint learns it on the next send and lowers the tunnel
		// MTU to 1380, and the transfer completes byte for byte.
		tun := stack.Tunnel{Name: "pmtu-ipip", Transport: stack.Raw,
			Local: netip.AddrPortFrom(usOuter4, 0), Remote: netip.AddrPortFrom(netip.MustParseAddr(farMTU1400), 0),
			Addresses: []netip.Prefix{netip.MustParsePrefix("10.0.99.1/30")},
			// The learned path MTU expires with the host kernel's.
			PathMTUExpiry: mtuExpires}
		s := e.startTunnel(t, tun)
		if mtu := s.Stats()[0].MTU; mtu != 1480 {
			t.Fatalf("pmtu-ipip: tunnel MTU before = %d, want 1480", mtu)
		}
		data := blob(kind{idx: 99})
		e.tcpToFar(t, s, netip.MustParseAddrPort("10.0.99.2:7005"), data, 50*time.Second)
		st := s.Stats()[0]
		route := e.ns.Run(t, "ip", "route", "get", farMTU1400)
		t.Logf("pmtu-ipip: after the transfer: tunnel MTU %d; host route: %s", st.MTU, strings.Join(strings.Fields(route), " "))
		if !strings.Contains(route, " mtu 1400") {
			t.Fatalf("pmtu-ipip: the VM's Fragmentation Needed did not reach the host kernel: ip route get %s = %q, want mtu 1400", farMTU1400, route)
		}
		if st.MTU != 1380 {
			t.Fatalf("pmtu-ipip: after the VM's Fragmentation Needed (MTU 1400): tunnel MTU %d, want 1380", st.MTU)
		}

		t.Run("recovery", func(t *testing.T) {
			// Once the host kernel's path MTU expires, the tunnel MTU
			// should come back to 1480.
			e.testRecovery(t, s, data)
		})
	})

	for _, c := range []struct {
		name        string
		tun         stack.Tunnel
		far         string // far's outer address
		dst         string // far's nc
		before, mtu uint32 // tunnel MTU before and after
	}{
		{"frag-needed-fou4", stack.Tunnel{Name: "pmtu-fou4", Transport: stack.UDP,
			Local: netip.AddrPortFrom(usOuter4, 6600), Remote: netip.MustParseAddrPort(farFOU + ":5600"),
			Addresses: []netip.Prefix{netip.MustParsePrefix("10.0.97.1/30")}}, farFOU, "10.0.97.2:7007", 1472, 1372},
		{"packet-too-big-fou6", stack.Tunnel{Name: "pmtu-fou6", Transport: stack.UDP,
			Local: netip.AddrPortFrom(usOuter6, 6601), Remote: netip.AddrPortFrom(netip.MustParseAddr(farFOU6), 5601),
			Addresses: []netip.Prefix{netip.MustParsePrefix("10.0.95.1/30")}}, farFOU6, "10.0.95.2:7009", 1452, 1352},
		{"packet-too-big-ip6tnl", stack.Tunnel{Name: "pmtu-ip6tnl", Transport: stack.Raw,
			Local: netip.AddrPortFrom(usOuter6, 0), Remote: netip.AddrPortFrom(netip.MustParseAddr(farMTU1400v6), 0),
			Addresses: []netip.Prefix{netip.MustParsePrefix("fd00:0:0:96::1/64")}}, farMTU1400v6, "[fd00:0:0:96::2]:7008", 1460, 1360},
	} {
		t.Run(c.name, func(t *testing.T) {
			// As frag-needed-ipip (2 MiB), for FOU over IPv4, and for FOU
			// over IPv6 and raw ip6tnl, which get the VM's ICMPv6 Packet
			// Too Big instead.
			s := e.startTunnel(t, c.tun)
			if mtu := s.Stats()[0].MTU; mtu != c.before {
				t.Fatalf("%s: tunnel MTU before = %d, want %d", c.tun.Name, mtu, c.before)
			}
			tooBig := e.icmp6InTooBig(t)
			err := e.tcpToFarErr(t, s, netip.MustParseAddrPort(c.dst), blob(kind{idx: 97})[:2<<20], 15*time.Second)
			route := e.ns.Run(t, "ip", "route", "get", c.far)
			st := s.Stats()[0]
			if err != nil {
				t.Fatalf("%s: %v\nthe host kernel received %d ICMPv6 Packet Too Big meanwhile; its route to %s: %s; tunnel MTU %d (want %d): "+
					"a path MTU the tunnel never learns black-holes every full-size packet",
					c.tun.Name, err, e.icmp6InTooBig(t)-tooBig, c.far, strings.Join(strings.Fields(route), " "), st.MTU, c.mtu)
			}
			t.Logf("%s: after the transfer: tunnel MTU %d; host route: %s", c.tun.Name, st.MTU, strings.Join(strings.Fields(route), " "))
			if !strings.Contains(route, " mtu 1400") {
				t.Fatalf("%s: the VM's ICMP error did not reach the host kernel: ip route get %s = %q, want mtu 1400", c.tun.Name, c.far, route)
			}
			if st.MTU != c.mtu {
				t.Fatalf("%s: after the VM's ICMP error (MTU 1400): tunnel MTU %d, want %d", c.tun.Name, st.MTU, c.mtu)
			}
		})
	}

	t.Run("inner-ipv6-outer-mtu-1200", func(t *testing.T) {
		// Inner IPv6 over sit across the 1200-byte link: the tunnel MTU
		// would be 1180, below IPv6's minimum of 1280, so, like Linux's
		// sit (ipip6_tunnel_xmit), the tunnel must keep 1280 and let the
		// outer IPv4 packets be fragmented (RFC 4213 section 3.2).
		tun := stack.Tunnel{Name: "small-v6", Transport: stack.Raw,
			Local: netip.AddrPortFrom(usOuter4, 0), Remote: netip.AddrPortFrom(netip.MustParseAddr(farMTU1200), 0),
			Addresses: []netip.Prefix{netip.MustParsePrefix("fd00:0:0:98::1/64")}}
		s := e.startTunnel(t, tun)
		if err := e.tcpToFarErr(t, s, netip.MustParseAddrPort("[fd00:0:0:98::2]:7006"), blob(kind{idx: 98})[:1<<20], 15*time.Second); err != nil {
			st := s.Stats()[0]
			t.Errorf("small-v6: inner IPv6 under an outer MTU below 1280 + 20: %v (tunnel MTU %d, want 1280 with outer fragmentation)", err, st.MTU)
		}
	})
}

// testRecovery waits for the host kernel's path MTU to far to expire, sends
// again and checks that the tunnel MTU is back to 1480.
func (e *env) testRecovery(t *testing.T, s *stack.Stack, data []byte) {
	deadline := time.Now().Add(mtuExpires + 10*time.Second)
	for strings.Contains(e.ns.Run(t, "ip", "route", "get", farMTU1400), " mtu ") {
		if time.Now().After(deadline) {
			t.Fatalf("pmtu-ipip: the host kernel's path MTU to %s did not expire within %v", farMTU1400, mtuExpires+10*time.Second)
		}
		time.Sleep(500 * time.Millisecond)
	}
	// The tunnel learned the path MTU a moment after the kernel did, so
	// its own expiry (PathMTUExpiry = mtuExpires) may come a moment later.
	for deadline := time.Now().Add(mtuExpires + 5*time.Second); s.Stats()[0].MTU != 1480; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("pmtu-ipip: the host kernel's path MTU to %s expired, yet the tunnel MTU stays %d, want 1480 (endpoint/pmtu.go expiry)", farMTU1400, s.Stats()[0].MTU)
		}
	}
	e.tcpToFar(t, s, netip.MustParseAddrPort("10.0.99.2:7005"), data[:1<<20], 50*time.Second)
}

// icmp6InTooBig returns the host kernel's Icmp6InPktTooBigs counter in the
// test's namespace.
func (e *env) icmp6InTooBig(t *testing.T) int {
	t.Helper()
	for _, l := range strings.Split(e.ns.Run(t, "cat", "/proc/net/snmp6"), "\n") {
		if f := strings.Fields(l); len(f) == 2 && f[0] == "Icmp6InPktTooBigs" {
			var n int
			fmt.Sscan(f[1], &n)
			return n
		}
	}
	t.Fatalf("no Icmp6InPktTooBigs in /proc/net/snmp6 of %s", e.ns.Name())
	return 0
}

// startTunnel starts a stack with one tunnel in the test's namespace; it
// closes when the test ends.
func (e *env) startTunnel(t *testing.T, tun stack.Tunnel) *stack.Stack {
	t.Helper()
	var s *stack.Stack
	err := e.ns.Do(func() (err error) {
		s, err = stack.New(stack.Config{Tunnels: []stack.Tunnel{tun}})
		return err
	})
	if err != nil {
		t.Fatalf("%s: stack.New in %s: %v", tun.Name, e.ns.Name(), err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// tcpToFar sends data over TCP to nc in the VM's far namespace, giving up
// after timeout, and checks its SHA-256 there.
func (e *env) tcpToFar(t *testing.T, s *stack.Stack, dst netip.AddrPort, data []byte, timeout time.Duration) {
	t.Helper()
	if err := e.tcpToFarErr(t, s, dst, data, timeout); err != nil {
		t.Fatal(err)
	}
}

func (e *env) tcpToFarErr(t *testing.T, s *stack.Stack, dst netip.AddrPort, data []byte, timeout time.Duration) error {
	t.Helper()
	e.vmRun(t, fmt.Sprintf("rm -f /tmp/rxfar; ip netns exec far timeout %d nc -l -p %d > /tmp/rxfar &", int(timeout.Seconds())+10, dst.Port()), 5*time.Second)
	conn := dialRetry(t, s, dst)
	conn.SetDeadline(time.Now().Add(timeout))
	_, werr := conn.Write(data)
	conn.Close()
	e.vmRun(t, "wait", timeout+20*time.Second)
	if werr != nil {
		return fmt.Errorf("TCP to %s (%d bytes): write: %v", dst, len(data), werr)
	}
	out := e.vmRun(t, "sha256sum /tmp/rxfar; wc -c < /tmp/rxfar", 10*time.Second)
	want := sha256.Sum256(data)
	if f := strings.Fields(out); f[0] != hex.EncodeToString(want[:]) {
		return fmt.Errorf("TCP to %s: the kernel received %s bytes with SHA-256 %s, want %d bytes with %x", dst, f[len(f)-1], f[0], len(data), want)
	}
	return nil
}

// testRawApart runs the ipip and sit kinds' tunnels in one stack (two raw
// IPv4 tunnels from the same local address to different peers) and pings
// over ipip only: the sit tunnel must not see those packets, in its
// counters or its LastSeen.
func (e *env) testRawApart(t *testing.T) {
	ipip, sit := kinds[0], kinds[1]
	if ipip.name != "ipip" || sit.name != "sit" {
		t.Fatalf("kinds[0:2] = %s, %s; want ipip, sit", ipip.name, sit.name)
	}
	var s *stack.Stack
	err := e.ns.Do(func() (err error) {
		s, err = stack.New(stack.Config{Tunnels: []stack.Tunnel{ipip.tunnel(), sit.tunnel()}})
		return err
	})
	if err != nil {
		t.Fatalf("stack.New(ipip, sit) in %s: %v", e.ns.Name(), err)
	}
	t.Cleanup(func() { s.Close() })
	before := s.Stats()[1]
	out, err := e.vm.Run(fmt.Sprintf("ping -c 3 -W 2 %s", ipip.usInner().Addr()), 20*time.Second)
	if err != nil || !strings.Contains(out, "3 packets received") {
		t.Fatalf("ping over ipip with sit beside it: want 3 of 3 replies (%v):\n%s", err, out)
	}
	after := s.Stats()[1]
	var drops uint64
	var reasons []string
	for r := range after.Drops {
		if d := after.Drops[r] - before.Drops[r]; d != 0 {
			drops += d
			reasons = append(reasons, fmt.Sprintf("%v=%d", encap.Reason(r), d))
		}
	}
	if after.RxPackets != before.RxPackets || drops != 0 || !after.LastSeen.Equal(before.LastSeen) {
		t.Errorf("raw tunnels counting each other's packets: 3 pings over ipip (%s) moved the sit tunnel's counters: rx %d -> %d, drops %v, LastSeen %v -> %v",
			ipip.vmOuter(), before.RxPackets, after.RxPackets, reasons, before.LastSeen, after.LastSeen)
	}
}
