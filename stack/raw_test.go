//go:build linux

package stack_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/endpoint/encap"
	"github.com/ipipstack/ipipstack/stack"
	"golang.org/x/sys/unix"
)

// The tests in this file run the Raw transport for real: two network
// namespaces joined by a veth pair, one stack in each, whose raw sockets
// are opened inside its namespace. They need root and skip without it
// (fail, with IPIPSTACK_PRIVILEGED=1).
//
//	nsA: vA 192.0.2.1/24 2001:db8::1/64  <-- veth -->  nsB: vB 192.0.2.2/24 2001:db8::2/64
//
// Inside the tunnel: 10.99.0.1/30 and fd99::1/64 (A), 10.99.0.2/30 and
// fd99::2/64 (B), as in stack_test.go.

var (
	rawOuterA4 = netip.MustParseAddr("192.0.2.1")
	rawOuterB4 = netip.MustParseAddr("192.0.2.2")
	rawForged4 = netip.MustParseAddr("192.0.2.3") // a third host on A's link
	rawOuterA6 = netip.MustParseAddr("2001:db8::1")
	rawOuterB6 = netip.MustParseAddr("2001:db8::2")
)

// rawPrivileged skips the test unless it runs as root; with
// IPIPSTACK_PRIVILEGED=1 (CI) not being root is a failure.
func rawPrivileged(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("IPIPSTACK_PRIVILEGED") == "1" {
		t.Fatal("IPIPSTACK_PRIVILEGED=1 but not root: network namespaces and raw sockets need root")
	}
	t.Skip("needs root: network namespaces and raw sockets")
}

// rawNS is a named network namespace (ip netns) made by the test.
type rawNS struct{ name string }

// rawNewNS creates a network namespace with a unique name and deletes it
// when the test ends, whether it passed or not.
func rawNewNS(t *testing.T, tag string) *rawNS {
	t.Helper()
	var r [4]byte
	rand.Read(r[:])
	ns := &rawNS{name: fmt.Sprintf("ipipst-%d-%x-%s", os.Getpid(), r, tag)}
	rawIP(t, "netns", "add", ns.name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns.name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", ns.name, err, out)
		}
	})
	ns.ip(t, "link", "set", "lo", "up")
	// No duplicate address detection on links made from now on, not even
	// for their link-local addresses: neighbour discovery would wait a
	// second for it, and the first outer IPv6 packet would be lost.
	err := ns.do(func() error {
		for _, conf := range []string{"all", "default"} {
			if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+conf+"/accept_dad", []byte("0"), 0); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("namespace %s: %v", ns.name, err)
	}
	return ns
}

// rawIP runs ip(8) with args and fails the test if it fails.
func rawIP(t *testing.T, args ...string) {
	t.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// ip runs ip(8) inside the namespace.
func (ns *rawNS) ip(t *testing.T, args ...string) {
	t.Helper()
	rawIP(t, append([]string{"-n", ns.name}, args...)...)
}

// do runs fn on an OS thread switched into the namespace with setns(2),
// then switches the thread back. Sockets fn opens stay in the namespace.
// If the thread cannot be switched back it stays locked, so that the
// runtime retires it instead of reusing it.
func (ns *rawNS) do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		target, err := os.Open("/var/run/netns/" + ns.name)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("setns %s: %w", ns.name, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns back from %s: %w", ns.name, err) // the thread stays locked and dies
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// rawNet is the two namespaces and the veth pair between them.
type rawNet struct{ a, b *rawNS }

func rawNewNet(t *testing.T) *rawNet {
	t.Helper()
	n := &rawNet{a: rawNewNS(t, "a"), b: rawNewNS(t, "b")}
	rawIP(t, "link", "add", "vA", "netns", n.a.name, "type", "veth", "peer", "name", "vB", "netns", n.b.name)
	for _, s := range []struct {
		ns       *rawNS
		dev      string
		v4, v6   netip.Addr
		extraV4s []netip.Addr
	}{
		{n.a, "vA", rawOuterA4, rawOuterA6, []netip.Addr{rawForged4}},
		{n.b, "vB", rawOuterB4, rawOuterB6, nil},
	} {
		s.ns.ip(t, "link", "set", s.dev, "mtu", "1500")
		s.ns.ip(t, "addr", "add", s.v4.String()+"/24", "dev", s.dev)
		for _, a := range s.extraV4s {
			s.ns.ip(t, "addr", "add", a.String()+"/24", "dev", s.dev)
		}
		s.ns.ip(t, "addr", "add", s.v6.String()+"/64", "dev", s.dev, "nodad")
		s.ns.ip(t, "link", "set", s.dev, "up")
	}
	// The kernel brings a link's IPv6 up (link-local address, neighbour
	// discovery) only when it processes the carrier change, up to a second
	// later; until then neighbour solicitations go unanswered and the
	// first outer IPv6 packet waits a second. Wait for it.
	for _, s := range []struct {
		ns  *rawNS
		dev string
	}{{n.a, "vA"}, {n.b, "vB"}} {
		deadline := time.Now().Add(5 * time.Second)
		for {
			link, _ := exec.Command("ip", "-n", s.ns.name, "-o", "link", "show", s.dev).CombinedOutput()
			addr, _ := exec.Command("ip", "-n", s.ns.name, "-o", "-6", "addr", "show", "dev", s.dev, "scope", "link").CombinedOutput()
			if strings.Contains(string(link), "state UP") && strings.Contains(string(addr), "fe80::") && !strings.Contains(string(addr), "tentative") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s in %s not up after 5 s: %s%s", s.dev, s.ns.name, link, addr)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return n
}

// rawPair starts a Raw-transport stack in each namespace, with outer
// addresses of the family of outerV6; edit adjusts each side's tunnel (0 is
// A, 1 is B). The stacks close when the (sub)test ends.
func rawPair(t *testing.T, n *rawNet, outerV6 bool, edit func(side int, tun *stack.Tunnel)) *pair {
	t.Helper()
	oa, ob := rawOuterA4, rawOuterB4
	if outerV6 {
		oa, ob = rawOuterA6, rawOuterB6
	}
	ta := stack.Tunnel{Name: "to-b", Transport: stack.Raw, Local: netip.AddrPortFrom(oa, 0), Remote: netip.AddrPortFrom(ob, 0),
		Addresses: []netip.Prefix{addrA, addrA6}}
	tb := stack.Tunnel{Name: "to-a", Transport: stack.Raw, Local: netip.AddrPortFrom(ob, 0), Remote: netip.AddrPortFrom(oa, 0),
		Addresses: []netip.Prefix{addrB, addrB6}}
	if edit != nil {
		edit(0, &ta)
		edit(1, &tb)
	}
	start := func(ns *rawNS, tun stack.Tunnel) *stack.Stack {
		var s *stack.Stack
		err := ns.do(func() (err error) {
			s, err = stack.New(stack.Config{Tunnels: []stack.Tunnel{tun}})
			return err
		})
		if err != nil {
			t.Fatalf("stack in %s: %v", ns.name, err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	return &pair{a: start(n.a, ta), b: start(n.b, tb), ta: ta, tb: tb}
}

// rawFrame is one frame an AF_PACKET socket saw: the first bytes of it
// (Ethernet header on) and its full length.
type rawFrame struct {
	incoming bool // PACKET_HOST: sent by the other namespace
	size     int
	head     []byte
}

// rawCapture records the frames of one interface of a namespace.
type rawCapture struct {
	fd     int
	stop   chan struct{}
	done   chan struct{}
	mu     sync.Mutex
	frames []rawFrame
}

func rawHtons(v uint16) uint16 { return v<<8 | v>>8 }

// rawStartCapture opens an AF_PACKET socket for every protocol on dev
// inside ns and records what it sees until stopCapture.
func rawStartCapture(t *testing.T, ns *rawNS, dev string) *rawCapture {
	t.Helper()
	c := &rawCapture{fd: -1, stop: make(chan struct{}), done: make(chan struct{})}
	err := ns.do(func() error {
		ifi, err := net.InterfaceByName(dev)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(rawHtons(unix.ETH_P_ALL)))
		if err != nil {
			return fmt.Errorf("AF_PACKET socket: %w", err)
		}
		c.fd = fd
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 32<<20); err != nil {
			return fmt.Errorf("SO_RCVBUFFORCE: %w", err)
		}
		tv := unix.NsecToTimeval(int64(20 * time.Millisecond))
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return fmt.Errorf("SO_RCVTIMEO: %w", err)
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: rawHtons(unix.ETH_P_ALL), Ifindex: ifi.Index})
	})
	if err != nil {
		if c.fd >= 0 {
			unix.Close(c.fd)
		}
		t.Fatalf("capture on %s in %s: %v", dev, ns.name, err)
	}
	go func() {
		defer close(c.done)
		buf := make([]byte, 1<<16)
		stopping := false
		for {
			flags := unix.MSG_TRUNC
			if !stopping {
				select {
				case <-c.stop:
					// Read what the socket still holds, then stop: a
					// fast transfer ends with frames queued.
					stopping = true
				default:
				}
			}
			if stopping {
				flags |= unix.MSG_DONTWAIT
			}
			n, from, err := unix.Recvfrom(c.fd, buf, flags)
			if err != nil {
				if stopping && err != unix.EINTR {
					return
				}
				continue // EAGAIN on the receive timeout, EINTR
			}
			f := rawFrame{size: n, head: append([]byte(nil), buf[:min(n, len(buf), 128)]...)}
			if ll, ok := from.(*unix.SockaddrLinklayer); ok {
				f.incoming = ll.Pkttype == unix.PACKET_HOST
			}
			c.mu.Lock()
			c.frames = append(c.frames, f)
			c.mu.Unlock()
		}
	}()
	t.Cleanup(func() { c.close(t) })
	return c
}

func (c *rawCapture) close(t *testing.T) []rawFrame {
	select {
	case <-c.stop:
	default:
		close(c.stop)
		<-c.done
		if st, err := unix.GetsockoptTpacketStats(c.fd, unix.SOL_PACKET, unix.PACKET_STATISTICS); err == nil && st.Drops > 0 {
			t.Logf("capture: the kernel dropped %d of %d frames (socket buffer full); only those seen are checked", st.Drops, st.Packets)
		}
		unix.Close(c.fd)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.frames
}

// rawTunnelFrame is what a captured frame says about the tunnel packet in
// it, if it is one.
type rawTunnelFrame struct {
	ip       []byte // from the outer IP header on (at most 114 bytes)
	ipLen    int    // the whole outer IP packet's length on the wire
	v6       bool
	proto    uint8 // the protocol carrying the inner packet: 4 or 41
	innerOff int   // offset of the inner packet in ip
	ttl, tos uint8
}

// rawTunnelFrames returns the incoming frames that carry IP-in-IP.
func rawTunnelFrames(frames []rawFrame) []rawTunnelFrame {
	var out []rawTunnelFrame
	for _, f := range frames {
		if !f.incoming || len(f.head) < 14+40 {
			continue
		}
		tf := rawTunnelFrame{ip: f.head[14:], ipLen: f.size - 14}
		switch binary.BigEndian.Uint16(f.head[12:]) {
		case 0x0800:
			tf.proto, tf.innerOff, tf.ttl, tf.tos = tf.ip[9], int(tf.ip[0]&0xf)*4, tf.ip[8], tf.ip[1]
		case 0x86dd:
			tf.v6, tf.proto, tf.innerOff, tf.ttl = true, tf.ip[6], 40, tf.ip[7]
			tf.tos = tf.ip[0]<<4 | tf.ip[1]>>4
			if tf.proto == 60 && len(tf.ip) >= 48 { // destination options
				tf.proto, tf.innerOff = tf.ip[40], 40+(int(tf.ip[41])+1)*8
			}
		default:
			continue
		}
		if tf.proto == encap.ProtoIPIP || tf.proto == encap.ProtoIPv6 {
			out = append(out, tf)
		}
	}
	return out
}

// checkFrames checks the tunnel frames A sent during a subtest: each is at
// most 1500 bytes of IP and its outer protocol matches its inner version;
// wantProtos are the protocols that must have been seen.
func checkFrames(t *testing.T, frames []rawFrame, wantProtos ...uint8) {
	t.Helper()
	seen := map[uint8]int{}
	big := 0
	for _, f := range rawTunnelFrames(frames) {
		seen[f.proto]++
		if f.ipLen > 1500 {
			big++
		}
		if f.innerOff < len(f.ip) {
			want := encap.ProtoIPIP
			if f.ip[f.innerOff]>>4 == 6 {
				want = encap.ProtoIPv6
			}
			if f.proto != want {
				t.Errorf("outer protocol %d carries an inner IPv%d packet", f.proto, f.ip[f.innerOff]>>4)
			}
		}
	}
	if big > 0 {
		t.Errorf("%d outer packets larger than the 1500-byte veth MTU", big)
	}
	for _, p := range wantProtos {
		if seen[p] == 0 {
			t.Errorf("no outer packet with protocol %d on the wire (seen %v)", p, seen)
		}
	}
	t.Logf("outer packets A->B on the wire by protocol: %v", seen)
}

// rawTransferSize is the size of the long transfers: 16 MiB, 4 MiB with
// -short.
func rawTransferSize() int64 {
	if testing.Short() {
		return 4 << 20
	}
	return 16 << 20
}

func rawPing(t *testing.T, s *stack.Stack, dst netip.Addr) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	rtt, err := s.Ping(ctx, dst)
	if err != nil {
		t.Fatalf("Ping(%v): %v", dst, err)
	}
	t.Logf("ping %v: %v", dst, rtt)
}

func rawNoDrops(t *testing.T, p *pair) {
	t.Helper()
	for _, st := range append(p.a.Stats(), p.b.Stats()...) {
		if st.DropTotal() != 0 {
			var ds []string
			for r, n := range st.Drops {
				if n != 0 {
					ds = append(ds, fmt.Sprintf("%v=%d", encap.Reason(r), n))
				}
			}
			t.Errorf("%s dropped %s", st.Name, strings.Join(ds, " "))
		}
	}
}

// TestRawTransport runs TCP, ping and the counters over real IP-in-IP
// between two namespaces: IPv4 and IPv6 inside IPv4 and IPv6 outer
// headers, with and without the IPv6 encapsulation limit.
func TestRawTransport(t *testing.T) {
	rawPrivileged(t)
	start := time.Now()
	n := rawNewNet(t)
	t.Logf("namespaces %s and %s up in %v", n.a.name, n.b.name, time.Since(start).Round(time.Millisecond))

	t.Run("ipv4-outer", func(t *testing.T) {
		p := rawPair(t, n, false, nil)
		for _, st := range append(p.a.Stats(), p.b.Stats()...) {
			if st.MTU != 1480 {
				t.Errorf("%s MTU = %d, want 1480 (1500 - 20)", st.Name, st.MTU)
			}
		}
		t.Run("inner-ipv4", func(t *testing.T) {
			c := rawStartCapture(t, n.b, "vB")
			size := rawTransferSize()
			d := transfer(t, p.a, p.b, "10.99.0.2:6001", size)
			t.Logf("a->b %d MiB in %v (%.2f Gbit/s)", size>>20, d.Round(time.Millisecond), float64(size)*8/d.Seconds()/1e9)
			rawPing(t, p.a, addrB.Addr())
			checkFrames(t, c.close(t), encap.ProtoIPIP)
		})
		t.Run("inner-ipv6", func(t *testing.T) {
			c := rawStartCapture(t, n.b, "vB")
			transfer(t, p.a, p.b, "[fd99::2]:6002", 4<<20)
			rawPing(t, p.a, addrB6.Addr())
			checkFrames(t, c.close(t), encap.ProtoIPv6)
		})
		t.Run("counters", func(t *testing.T) {
			rawCounters(t, n, p)
		})
	})

	t.Run("ipv6-outer", func(t *testing.T) {
		for _, limit := range []bool{false, true} {
			name, wantMTU := "no-encap-limit", uint32(1460)
			if limit {
				name, wantMTU = "encap-limit", 1452
			}
			t.Run(name, func(t *testing.T) {
				p := rawPair(t, n, true, func(_ int, tun *stack.Tunnel) {
					tun.Policy = encap.Policy{UseEncapLimit: limit, EncapLimit: encap.DefaultEncapLimit}
				})
				for _, st := range append(p.a.Stats(), p.b.Stats()...) {
					if st.MTU != wantMTU {
						t.Errorf("%s MTU = %d, want %d", st.Name, st.MTU, wantMTU)
					}
				}
				c := rawStartCapture(t, n.b, "vB")
				transfer(t, p.a, p.b, "10.99.0.2:6003", 2<<20)
				transfer(t, p.b, p.a, "[fd99::1]:6004", 2<<20)
				rawPing(t, p.a, addrB.Addr())
				rawPing(t, p.a, addrB6.Addr())
				frames := c.close(t)
				checkFrames(t, frames, encap.ProtoIPIP, encap.ProtoIPv6)
				for _, f := range rawTunnelFrames(frames) {
					if hasOpts := f.innerOff > 40; hasOpts != limit {
						t.Fatalf("outer IPv6 packet with a destination options header: %v, want %v: % x", hasOpts, limit, f.ip[:min(len(f.ip), 56)])
					}
				}
				rawNoDrops(t, p)
			})
		}
	})
}

// rawCounters checks that a transfer moves both sides' counters without a
// drop, and that a well-formed protocol-4 packet from a third address on
// the link never reaches B's tunnel (its raw sockets are connected to A's
// address) nor B's stack, while the same packet from A's outer address
// does.
func rawCounters(t *testing.T, n *rawNet, p *pair) {
	a0, b0 := p.a.Stats()[0], p.b.Stats()[0]
	transfer(t, p.a, p.b, "10.99.0.2:6005", 1<<20)
	transfer(t, p.b, p.a, "10.99.0.1:6006", 1<<20)
	// A batch is counted once its send returns, which can be just after
	// the data arrived: give the last one a moment.
	waitFor(t, "the senders to count 1 MiB each", func() bool {
		return p.a.Stats()[0].TxBytes-a0.TxBytes >= 1<<20 && p.b.Stats()[0].TxBytes-b0.TxBytes >= 1<<20
	})
	a1, b1 := p.a.Stats()[0], p.b.Stats()[0]
	for _, s := range []struct {
		name   string
		s0, s1 stack.TunnelStats
	}{{"a", a0, a1}, {"b", b0, b1}} {
		min := uint64(1 << 20 / 1480)
		if s.s1.RxPackets-s.s0.RxPackets < min || s.s1.TxPackets-s.s0.TxPackets < min {
			t.Errorf("%s: rx %d -> %d, tx %d -> %d packets, want each to grow by at least %d", s.name, s.s0.RxPackets, s.s1.RxPackets, s.s0.TxPackets, s.s1.TxPackets, min)
		}
		if s.s1.RxBytes-s.s0.RxBytes < 1<<20 || s.s1.TxBytes-s.s0.TxBytes < 1<<20 {
			t.Errorf("%s: rx %d -> %d, tx %d -> %d bytes, want each to grow by at least 1 MiB", s.name, s.s0.RxBytes, s.s1.RxBytes, s.s0.TxBytes, s.s1.TxBytes)
		}
		if s.s1.LastSeen.IsZero() {
			t.Errorf("%s: LastSeen not set", s.name)
		}
	}
	rawNoDrops(t, p)
	rawQuiesce(t, p)

	// An ICMP echo request 10.99.0.1 -> 10.99.0.2, valid in every field,
	// inside a protocol-4 packet, sent from namespace A by hand.
	echo := func(outerSrc netip.Addr) []byte {
		inner := make([]byte, 20+8+8)
		copy(inner, mustHexRaw(t, "4500 0024 7777 0000 4001 0000 0a63 0001 0a63 0002"))
		binary.BigEndian.PutUint16(inner[10:], encap.Checksum(inner[:20]))
		copy(inner[20:], mustHexRaw(t, "0800 0000 abcd 0001 6669 7273 7420 2121"))
		binary.BigEndian.PutUint16(inner[22:], encap.Checksum(inner[20:]))
		enc, err := encap.NewEncoder(outerSrc, rawOuterB4, encap.Policy{})
		if err != nil {
			t.Fatal(err)
		}
		pkt := make([]byte, 20+len(inner))
		enc.Encode(pkt, inner, 0x5555)
		copy(pkt[20:], inner)
		return pkt
	}
	send := func(pkt []byte) {
		t.Helper()
		err := n.a.do(func() error {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
			if err != nil {
				return err
			}
			defer unix.Close(fd)
			return unix.Sendto(fd, pkt, 0, &unix.SockaddrInet4{Addr: rawOuterB4.As4()})
		})
		if err != nil {
			t.Fatalf("send a hand-made packet from %s: %v", n.a.name, err)
		}
	}
	echoes := func() uint64 {
		return p.b.GVisor().Stats().ICMP.V4.PacketsReceived.EchoRequest.Value()
	}
	wait := func(what string, cond func() bool) bool {
		for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			if cond() {
				return true
			}
		}
		t.Errorf("timed out waiting for %s", what)
		return false
	}

	// The forged packet first, then the same bytes from A's address: B's
	// receiving socket is connected to A's address, so the kernel never
	// hands it the forged one, and the endpoint neither delivers nor
	// counts it. Both go through the same queue in order, so once the
	// genuine one is answered the forged one would have been seen.
	before, echo0 := p.b.Stats()[0], echoes()
	send(echo(rawForged4))
	send(echo(rawOuterA4))
	if wait("B's stack to receive the genuine echo request", func() bool { return echoes() >= echo0+1 }) {
		after := p.b.Stats()[0]
		if e := echoes(); e != echo0+1 {
			t.Errorf("B's stack received %d echo requests, want 1: the forged one got through", e-echo0)
		}
		if after.RxPackets != before.RxPackets+1 || after.DropTotal() != before.DropTotal() {
			t.Errorf("rx %d -> %d, drops %v -> %v; want one packet received and no drop (the forged one never reaches the endpoint)",
				before.RxPackets, after.RxPackets, before.Drops, after.Drops)
		}
	}
}

// rawQuiesce waits until no tunnel packet has moved for 300 ms, so that the
// last ACKs and FINs of a transfer are not mistaken for what comes after.
func rawQuiesce(t *testing.T, p *pair) {
	t.Helper()
	count := func() uint64 {
		a, b := p.a.Stats()[0], p.b.Stats()[0]
		return a.RxPackets + a.TxPackets + b.RxPackets + b.TxPackets
	}
	last, since := count(), time.Now()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if c := count(); c != last {
			last, since = c, time.Now()
		} else if time.Since(since) >= 300*time.Millisecond {
			return
		}
	}
	t.Fatal("the tunnel did not fall quiet within 5 s")
}

// TestRawTransportWire captures, on B's veth, what A's stack puts on the
// wire with Policy{TTL: 200, TOS: 0x20, DF: DFSet} and checks the outer
// headers byte by byte.
func TestRawTransportWire(t *testing.T) {
	rawPrivileged(t)
	n := rawNewNet(t)
	const ttl, tos = 200, 0x20
	polA := encap.Policy{TTL: ttl, TOS: tos, DF: encap.DFSet}

	t.Run("ipv4-outer", func(t *testing.T) {
		p := rawPair(t, n, false, func(side int, tun *stack.Tunnel) {
			if side == 0 {
				tun.Policy = polA
			}
		})
		c := rawStartCapture(t, n.b, "vB")
		rawPing(t, p.a, addrB.Addr())
		rawPing(t, p.a, addrB6.Addr())
		transfer(t, p.a, p.b, "10.99.0.2:6101", 1<<20)
		transfer(t, p.a, p.b, "[fd99::2]:6102", 1<<20)
		frames := rawTunnelFrames(c.close(t))
		if len(frames) < 2*(1<<20)/1480 {
			t.Fatalf("captured %d tunnel frames, want at least %d", len(frames), 2*(1<<20)/1480)
		}
		seen := map[uint8]int{}
		bad := 0
		for _, f := range frames {
			if bad > 5 {
				t.Fatal("too many bad frames")
			}
			h := f.ip
			seen[f.proto]++
			innerVer := h[20] >> 4
			wantProto := map[uint8]uint8{4: 4, 6: 41}[innerVer]
			var errs []string
			if h[0] != 0x45 {
				errs = append(errs, fmt.Sprintf("version/IHL %#x", h[0]))
			}
			if h[9] != wantProto {
				errs = append(errs, fmt.Sprintf("protocol %d for inner IPv%d", h[9], innerVer))
			}
			if h[8] != ttl {
				errs = append(errs, fmt.Sprintf("TTL %d, want %d", h[8], ttl))
			}
			if h[6]&0x40 == 0 || binary.BigEndian.Uint16(h[6:])&0x3fff != 0 {
				errs = append(errs, fmt.Sprintf("flags/offset %#04x, want DF alone", binary.BigEndian.Uint16(h[6:])))
			}
			if encap.Checksum(h[:20]) != 0 {
				errs = append(errs, "header checksum does not verify")
			}
			if tl := int(binary.BigEndian.Uint16(h[2:])); tl != f.ipLen {
				errs = append(errs, fmt.Sprintf("total length %d, frame carries %d", tl, f.ipLen))
			}
			if f.ipLen > 1500 {
				errs = append(errs, fmt.Sprintf("%d bytes of IP, more than the 1500-byte MTU", f.ipLen))
			}
			if src, dst := netip.AddrFrom4([4]byte(h[12:16])), netip.AddrFrom4([4]byte(h[16:20])); src != rawOuterA4 || dst != rawOuterB4 {
				errs = append(errs, fmt.Sprintf("%v -> %v", src, dst))
			}
			// RFC 6040: the configured DSCP, and the inner ECN bits with
			// CE sent as ECT(0).
			innerTOS := h[21]
			if innerVer == 6 {
				innerTOS = h[20]<<4 | h[21]>>4
			}
			if want := tos&^3 | encap.EncapECN(innerTOS); h[1] != want {
				errs = append(errs, fmt.Sprintf("ToS %#x, want %#x for inner %#x", h[1], want, innerTOS))
			}
			if len(errs) > 0 {
				bad++
				t.Errorf("outer header %s: %s", hex.EncodeToString(h[:20]), strings.Join(errs, "; "))
			}
		}
		if seen[4] == 0 || seen[41] == 0 {
			t.Errorf("outer packets by protocol %v, want both 4 and 41", seen)
		}
		t.Logf("checked %d outer IPv4 headers: %v", len(frames), seen)
		rawNoDrops(t, p)
	})

	for _, limit := range []bool{false, true} {
		name, mtu := "ipv6-outer", 1460
		if limit {
			name, mtu = "ipv6-outer-encap-limit", 1452
		}
		t.Run(name, func(t *testing.T) {
			p := rawPair(t, n, true, func(side int, tun *stack.Tunnel) {
				tun.Policy = encap.Policy{UseEncapLimit: limit, EncapLimit: 4}
				if side == 0 {
					tun.Policy.TTL, tun.Policy.TOS = ttl, tos
				}
			})
			c := rawStartCapture(t, n.b, "vB")
			rawPing(t, p.a, addrB.Addr())
			rawPing(t, p.a, addrB6.Addr())
			transfer(t, p.a, p.b, "10.99.0.2:6103", 1<<20)
			transfer(t, p.a, p.b, "[fd99::2]:6104", 1<<20)
			frames := rawTunnelFrames(c.close(t))
			if len(frames) < 2*(1<<20)/mtu {
				t.Fatalf("captured %d tunnel frames, want at least %d", len(frames), 2*(1<<20)/mtu)
			}
			seen := map[uint8]int{}
			bad := 0
			wantOpts := []byte{4, 1, 4, 1, 1, 0} // encapsulation limit 4, PadN
			for _, f := range frames {
				if bad > 5 {
					t.Fatal("too many bad frames")
				}
				h := f.ip
				seen[f.proto]++
				var errs []string
				innerVer := h[f.innerOff] >> 4
				wantProto := map[uint8]uint8{4: 4, 6: 41}[innerVer]
				if limit {
					if h[6] != 60 {
						errs = append(errs, fmt.Sprintf("next header %d, want 60 (destination options)", h[6]))
					}
					if h[40] != wantProto || h[41] != 0 {
						errs = append(errs, fmt.Sprintf("options header next %d length %d for inner IPv%d", h[40], h[41], innerVer))
					}
					if !bytes.Equal(h[42:48], wantOpts) {
						errs = append(errs, fmt.Sprintf("options % x, want % x", h[42:48], wantOpts))
					}
				} else if h[6] != wantProto {
					errs = append(errs, fmt.Sprintf("next header %d for inner IPv%d", h[6], innerVer))
				}
				if h[7] != ttl {
					errs = append(errs, fmt.Sprintf("hop limit %d, want %d", h[7], ttl))
				}
				if pl := int(binary.BigEndian.Uint16(h[4:])); pl+40 != f.ipLen {
					errs = append(errs, fmt.Sprintf("payload length %d, frame carries %d bytes of IP", pl, f.ipLen))
				}
				if f.ipLen > 1500 {
					errs = append(errs, fmt.Sprintf("%d bytes of IP, more than the 1500-byte MTU", f.ipLen))
				}
				if src, dst := netip.AddrFrom16([16]byte(h[8:24])), netip.AddrFrom16([16]byte(h[24:40])); src != rawOuterA6 || dst != rawOuterB6 {
					errs = append(errs, fmt.Sprintf("%v -> %v", src, dst))
				}
				innerTOS := h[f.innerOff+1]
				if innerVer == 6 {
					innerTOS = h[f.innerOff]<<4 | h[f.innerOff+1]>>4
				}
				if want := tos&^3 | encap.EncapECN(innerTOS); f.tos != want {
					errs = append(errs, fmt.Sprintf("traffic class %#x, want %#x for inner %#x", f.tos, want, innerTOS))
				}
				if len(errs) > 0 {
					bad++
					t.Errorf("outer header %s: %s", hex.EncodeToString(h[:f.innerOff]), strings.Join(errs, "; "))
				}
			}
			if seen[4] == 0 || seen[41] == 0 {
				t.Errorf("outer packets by protocol %v, want both 4 and 41", seen)
			}
			t.Logf("checked %d outer IPv6 headers: %v", len(frames), seen)
			rawNoDrops(t, p)
		})
	}
}

func mustHexRaw(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}
