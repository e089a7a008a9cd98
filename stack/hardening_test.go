//go:build linux

package stack_test

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/endpoint"
	"github.com/ipipstack/ipipstack/endpoint/encap"
	"github.com/ipipstack/ipipstack/internal/pkttest"
	"github.com/ipipstack/ipipstack/stack"
	"golang.org/x/sys/unix"
)

// target is one stack whose tunnel's peer is a plain UDP socket of the
// test, which forges what the peer sends.
type target struct {
	s    *stack.Stack
	peer *net.UDPConn // the configured peer
	port netip.AddrPort
	// in4 and in6 are UDP sockets inside the stack on port 9999 of its
	// inner addresses: nothing forged may reach them.
	in4, in6 net.PacketConn
}

// localAs reports a different local address than the transport is bound
// to, as a tunnel bound to a host's public address would: the Recursion
// check compares inner destinations with it, and loopback addresses are
// martian anyway.
type localAs struct {
	endpoint.Transport
	addr netip.AddrPort
}

func (l localAs) LocalAddr() netip.AddrPort { return l.addr }

func newTarget(t *testing.T, fakeLocal netip.Addr) *target {
	t.Helper()
	peer, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { peer.Close() })
	tun := stack.Tunnel{
		Name:      "forged",
		Local:     freeUDPPort(t, "127.0.0.1"),
		Remote:    peer.LocalAddr().(*net.UDPAddr).AddrPort(),
		Addresses: []netip.Prefix{addrA, addrA6},
	}
	if fakeLocal.IsValid() {
		tr, err := endpoint.ListenUDP(tun.Local, endpoint.SocketOptions{})
		if err != nil {
			t.Fatal(err)
		}
		tun.Conn = localAs{tr, netip.AddrPortFrom(fakeLocal, tun.Local.Port())}
	}
	s, err := stack.New(stack.Config{Tunnels: []stack.Tunnel{tun}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	tg := &target{s: s, peer: peer, port: tun.Local}
	for _, a := range []string{"10.99.0.1:9999", "[fd99::1]:9999"} {
		pc, err := s.ListenPacket("udp", a)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { pc.Close() })
		if tg.in4 == nil {
			tg.in4 = pc
		} else {
			tg.in6 = pc
		}
	}
	return tg
}

// send writes datagram b to the stack's tunnel port from c.
func (tg *target) send(t *testing.T, c *net.UDPConn, b []byte) {
	t.Helper()
	if _, err := c.WriteToUDPAddrPort(b, tg.port); err != nil {
		t.Fatal(err)
	}
}

// probe sends one valid packet from the peer and waits until the stack has
// received it, so that everything sent before it (over loopback, in order)
// has been processed too.
func (tg *target) probe(t *testing.T) {
	t.Helper()
	before := tg.s.Stats()[0].RxPackets
	tg.send(t, tg.peer, ipv4UDP(addrB.Addr(), addrA.Addr(), 1234, 9999, []byte("probe")))
	tg.in4.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 2048)
	n, _, err := tg.in4.ReadFrom(buf)
	if err != nil || string(buf[:n]) != "probe" {
		t.Fatalf("probe: read %q, %v; want \"probe\"", buf[:n], err)
	}
	if got := tg.s.Stats()[0].RxPackets; got != before+1 {
		t.Fatalf("probe: RxPackets went from %d to %d, want +1", before, got)
	}
}

// expectNothing checks that neither inner socket received anything.
func (tg *target) expectNothing(t *testing.T) {
	t.Helper()
	buf := make([]byte, 2048)
	for _, pc := range []net.PacketConn{tg.in4, tg.in6} {
		pc.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		n, from, err := pc.ReadFrom(buf)
		if ne := net.Error(nil); !errors.As(err, &ne) || !ne.Timeout() {
			t.Errorf("%v received %q from %v (err %v): a forged packet got through", pc.LocalAddr(), buf[:n], from, err)
		}
	}
}

// udpSegment builds a UDP header and payload with its checksum.
func udpSegment(src, dst netip.Addr, sport, dport uint16, payload []byte) []byte {
	u := make([]byte, 8+len(payload))
	binary.BigEndian.PutUint16(u[0:], sport)
	binary.BigEndian.PutUint16(u[2:], dport)
	binary.BigEndian.PutUint16(u[4:], uint16(len(u)))
	copy(u[8:], payload)
	c := checksum(u, pseudoSum(src, dst, 17, len(u)))
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(u[6:], c)
	return u
}

// ipv4UDP builds a valid IPv4/UDP packet.
func ipv4UDP(src, dst netip.Addr, sport, dport uint16, payload []byte) []byte {
	u := udpSegment(src, dst, sport, dport, payload)
	h := make([]byte, 20, 20+len(u))
	h[0] = 0x45
	binary.BigEndian.PutUint16(h[2:], uint16(20+len(u)))
	h[6] = 0x40 // DF
	h[8], h[9] = 64, 17
	s4, d4 := src.As4(), dst.As4()
	copy(h[12:], s4[:])
	copy(h[16:], d4[:])
	binary.BigEndian.PutUint16(h[10:], checksum(h, 0))
	return append(h, u...)
}

// ipv6UDP builds a valid IPv6/UDP packet.
func ipv6UDP(src, dst netip.Addr, sport, dport uint16, payload []byte) []byte {
	u := udpSegment(src, dst, sport, dport, payload)
	h := make([]byte, 40, 40+len(u))
	h[0] = 0x60
	binary.BigEndian.PutUint16(h[4:], uint16(len(u)))
	h[6], h[7] = 17, 64
	s16, d16 := src.As16(), dst.As16()
	copy(h[8:], s16[:])
	copy(h[24:], d16[:])
	return append(h, u...)
}

// refix recomputes the IPv4 header checksum of p after an edit.
func refix(p []byte) []byte {
	ihl := int(p[0]&0xf) * 4
	p[10], p[11] = 0, 0
	binary.BigEndian.PutUint16(p[10:], checksum(p[:min(ihl, len(p))], 0))
	return p
}

// TestForgedDatagrams sends forged FOU datagrams to a stack's tunnel port
// from a real UDP socket on loopback and checks that each is dropped and
// counted under its reason, exactly once, and that nothing is delivered.
func TestForgedDatagrams(t *testing.T) {
	var (
		peer4  = addrB.Addr()                      // 10.99.0.2, allowed
		me4    = addrA.Addr()                      // 10.99.0.1
		peer6  = addrB6.Addr()                     // fd99::2
		me6    = addrA6.Addr()                     // fd99::1
		public = netip.MustParseAddr("192.0.2.10") // the tunnel's "outer address" in the Recursion case
		v4     = func(src, dst netip.Addr) []byte { return ipv4UDP(src, dst, 1234, 9999, []byte("forged")) }
		v6     = func(src, dst netip.Addr) []byte { return ipv6UDP(src, dst, 1234, 9999, []byte("forged")) }
		a      = netip.MustParseAddr
	)
	edit := func(p []byte, f func([]byte)) []byte { f(p); return p }
	tests := []struct {
		name      string
		reason    encap.Reason
		fromOther bool       // sent from a socket that is not the peer
		atSocket  bool       // counted by the tunnel's shared socket, not the tunnel (shared.go)
		fakeLocal netip.Addr // the tunnel claims this outer address
		tos       int        // outer ToS set on the sending socket; 0 leaves it
		pkts      [][]byte
	}{
		{name: "wrong peer port", reason: encap.WrongPeer, fromOther: true, atSocket: true, pkts: [][]byte{v4(peer4, me4), v6(peer6, me6)}},
		{name: "truncated", reason: encap.MalformedInner, pkts: [][]byte{
			{}, {0x45}, v4(peer4, me4)[:19], v4(peer4, me4)[:10], {0x60, 0, 0, 0}, v6(peer6, me6)[:39],
		}},
		{name: "bad ihl", reason: encap.MalformedInner, pkts: [][]byte{
			refix(edit(v4(peer4, me4), func(p []byte) { p[0] = 0x44 })), // IHL 16 bytes
			refix(edit(v4(peer4, me4), func(p []byte) { p[0] = 0x4f })), // IHL 60 > packet
			edit(v4(peer4, me4), func(p []byte) { p[0] = 0x40 }),
		}},
		{name: "total length", reason: encap.MalformedInner, pkts: [][]byte{
			refix(edit(v4(peer4, me4), func(p []byte) { binary.BigEndian.PutUint16(p[2:], uint16(len(p)+1)) })),
			refix(edit(v4(peer4, me4), func(p []byte) { binary.BigEndian.PutUint16(p[2:], 19) })),
			edit(v6(peer6, me6), func(p []byte) { binary.BigEndian.PutUint16(p[4:], uint16(len(p)-39)) }),
		}},
		{name: "bad header checksum", reason: encap.MalformedInner, pkts: [][]byte{
			edit(v4(peer4, me4), func(p []byte) { p[10] ^= 0x01 }),
			edit(v4(peer4, me4), func(p []byte) { p[8]-- }), // TTL changed, checksum not
		}},
		{name: "bad version", reason: encap.MalformedInner, pkts: [][]byte{
			edit(v4(peer4, me4), func(p []byte) { p[0] = 0x55 }),
			edit(v6(peer6, me6), func(p []byte) { p[0] = 0x00 }),
		}},
		{name: "martian source", reason: encap.Martian, pkts: [][]byte{
			v4(a("127.0.0.1"), me4), v4(a("224.0.0.1"), me4), v4(a("0.0.0.0"), me4),
			v4(a("255.255.255.255"), me4), v6(a("::1"), me6), v6(a("::ffff:10.99.0.2"), me6), v6(a("ff02::1"), me6),
		}},
		{name: "martian destination", reason: encap.Martian, pkts: [][]byte{
			v4(peer4, a("127.0.0.1")), v4(peer4, a("0.0.0.0")), v6(peer6, a("::1")),
		}},
		{name: "spoofed source", reason: encap.SpoofedSource, pkts: [][]byte{
			v4(a("192.0.2.1"), me4), v4(a("10.99.0.5"), me4), v6(a("fd98::2"), me6),
		}},
		{name: "recursion", reason: encap.Recursion, fakeLocal: public, pkts: [][]byte{v4(peer4, public), v4(peer4, public)}},
		// Outer CE over a Not-ECT inner packet (RFC 6040 section 4.2).
		{name: "ecn ce over not-ect", reason: encap.ECNCongestion, tos: 0x03, pkts: [][]byte{v4(peer4, me4), v6(peer6, me6)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tg := newTarget(t, tt.fakeLocal)
			from := tg.peer
			if tt.fromOther {
				c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				from = c
			}
			if tt.tos != 0 {
				rc, err := from.SyscallConn()
				if err != nil {
					t.Fatal(err)
				}
				var serr error
				rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_TOS, tt.tos) })
				if serr != nil {
					t.Fatal(serr)
				}
				defer rc.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_TOS, 0) })
			}
			before, sockBefore := tg.s.Stats()[0], socketWrongPeer(tg.s)
			for _, p := range tt.pkts {
				tg.send(t, from, p)
			}
			if tt.tos != 0 {
				rc, _ := from.SyscallConn()
				rc.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_TOS, 0) })
			}
			tg.probe(t)
			after := tg.s.Stats()[0]
			for r := range after.Drops {
				want := before.Drops[r]
				if encap.Reason(r) == tt.reason && !tt.atSocket {
					want += uint64(len(tt.pkts))
				}
				if after.Drops[r] != want {
					t.Errorf("Drops[%s] went from %d to %d, want %d", encap.Reason(r), before.Drops[r], after.Drops[r], want)
				}
			}
			want := sockBefore
			if tt.atSocket {
				want += uint64(len(tt.pkts))
			}
			// A datagram from another port is another flow, which the
			// socket group may read on another socket than the probe:
			// wait for it rather than rely on the order.
			got := socketWrongPeer(tg.s)
			for deadline := time.Now().Add(5 * time.Second); got < want && time.Now().Before(deadline); got = socketWrongPeer(tg.s) {
				time.Sleep(time.Millisecond)
			}
			if got != want {
				t.Errorf("the socket's wrong_peer went from %d to %d, want %d", sockBefore, got, want)
			}
			if after.RxPackets != before.RxPackets+1 {
				t.Errorf("RxPackets went from %d to %d, want +1 (the probe)", before.RxPackets, after.RxPackets)
			}
			tg.expectNothing(t)
		})
	}
}

// socketWrongPeer sums wrong_peer of s's shared sockets, where datagrams
// from no tunnel's peer are counted (Stack.SocketStats).
func socketWrongPeer(s *stack.Stack) uint64 {
	var n uint64
	for _, ss := range s.SocketStats() {
		n += ss.WrongPeer
	}
	return n
}

// The reference checksum the tests check packets against.
var (
	checksum  = pkttest.Checksum
	pseudoSum = pkttest.PseudoSum
)
