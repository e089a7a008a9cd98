//go:build linux

package stack_test

import (
	"encoding/binary"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/internal/netnstest"
	"github.com/ipipstack/ipipstack/stack"
	"golang.org/x/sys/unix"
)

// TestRawIPv6PacketTooBigSharedSocket: raw IPv6 tunnels share unconnected
// receive sockets, and an unconnected IPv6 raw socket ignores ICMPv6
// errors unless it asks for them (rawv6_err), so a Packet Too Big for the
// tunnel's outer packets must still reach the kernel's path MTU for the
// peer, which the tunnel then learns from its next oversize send.
func TestRawIPv6PacketTooBigSharedSocket(t *testing.T) {
	netnstest.Privileged(t)
	a, b := netnstest.New(t), netnstest.New(t)
	a.Run(t, "ip", "link", "add", "vA", "type", "veth", "peer", "name", "vB", "netns", b.Name())
	a.Run(t, "ip", "addr", "add", "2001:db8::1/64", "dev", "vA", "nodad")
	b.Run(t, "ip", "addr", "add", "2001:db8::2/64", "dev", "vB", "nodad")
	for _, ns := range []*netnstest.NS{a, b} {
		ns.Run(t, "ip", "link", "set", "lo", "up")
	}
	a.Run(t, "ip", "link", "set", "vA", "up")
	b.Run(t, "ip", "link", "set", "vB", "up")
	local, peer := netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8::2")

	var s *stack.Stack
	if err := a.Do(func() (err error) {
		s, err = stack.New(stack.Config{Tunnels: []stack.Tunnel{
			{Name: "t1", Transport: stack.Raw, Local: netip.AddrPortFrom(local, 0), Remote: netip.AddrPortFrom(peer, 0),
				Addresses: []netip.Prefix{netip.MustParsePrefix("fd00:96::1/64")}},
			{Name: "t2", Transport: stack.Raw, Local: netip.AddrPortFrom(local, 0), Remote: netip.MustParseAddrPort("[2001:db8::3]:0"),
				Addresses: []netip.Prefix{netip.MustParsePrefix("fd00:97::1/64")}},
		}})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if ss := s.SocketStats(); len(ss) != 1 || ss[0].Tunnels != 2 {
		t.Fatalf("socket stats %+v, want one raw socket set shared by 2 tunnels", ss)
	}

	// The Packet Too Big a router on the path would send: MTU 1400,
	// quoting an outer packet local -> peer carrying IPv6 (41).
	msg := make([]byte, 8+40+40)
	msg[0] = 2 // ICMPv6 Packet Too Big; the kernel fills in the checksum
	binary.BigEndian.PutUint32(msg[4:], 1400)
	q := msg[8:]
	q[0] = 6 << 4
	binary.BigEndian.PutUint16(q[4:], 40)
	q[6], q[7] = 41, 64
	copy(q[8:24], local.AsSlice())
	copy(q[24:40], peer.AsSlice())
	q[40] = 6 << 4 // the inner packet's first bytes
	if err := b.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMPV6)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return unix.Sendto(fd, msg, 0, &unix.SockaddrInet6{Addr: local.As16()})
	}); err != nil {
		t.Fatal(err)
	}
	var route string
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(route, "mtu 1400"); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the kernel did not take the Packet Too Big for the shared raw socket's peer: ip -6 route get %v = %q, want mtu 1400", peer, route)
		}
		route = a.Run(t, "ip", "-6", "route", "get", peer.String())
	}

	// The next full-size outer packet is refused, and the tunnel learns
	// the path: 1400 - 40 bytes of outer header.
	c, err := s.Dial("udp6", "[fd00:96::2]:9")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if mtu := s.Stats()[0].MTU; mtu == 1360 {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("tunnel MTU %d after the Packet Too Big and full-size sends, want 1360", mtu)
		}
		c.Write(make([]byte, 1400))
	}
}
