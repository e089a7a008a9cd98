//go:build linux

package stack_test

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/endpoint"
	"github.com/ipipstack/ipipstack/endpoint/encap"
	"github.com/ipipstack/ipipstack/stack"
	"golang.org/x/sys/unix"
)

// The receive checksum model (endpoint package doc): an inner TCP or UDP
// packet reaches the stack as verified only if the kernel verified a
// non-zero outer UDP checksum and the packet's inner source is on the
// tunnel's own link (the peer originated it), or the endpoint verified its
// checksum itself. These tests run over real sockets, because what the
// kernel verifies is what is relied on.

// csumPeer forges what a tunnel's peer sends: send writes one inner
// packet to the stack's tunnel, encapsulated as the transport expects.
type csumPeer struct {
	name     string
	verified bool // the kernel verifies the outer checksum of what send sends
	send     func(t *testing.T, inner []byte)
}

var (
	offLink4 = netip.MustParseAddr("10.50.0.9")
	offLink6 = netip.MustParseAddr("fd50::9")
)

// csumTunnel is the tunnel under test: inner addresses addrA and addrA6,
// and a route to the off-link sources through the peer.
func csumTunnel(tun stack.Tunnel) stack.Tunnel {
	tun.Name = "csum"
	tun.Addresses = []netip.Prefix{addrA, addrA6}
	tun.Routes = []netip.Prefix{netip.PrefixFrom(offLink4, 16).Masked(), netip.PrefixFrom(offLink6, 64).Masked()}
	return tun
}

// udpCsumPeer returns a stack with one UDP tunnel on host ("127.0.0.1" or
// "::1") and a peer socket that sends with a UDP checksum, or with
// checksum 0 (SO_NO_CHECK) if zero is set.
func udpCsumPeer(t *testing.T, host string, zero bool) (*stack.Stack, csumPeer) {
	network := "udp4"
	if host == "::1" {
		network = "udp6"
	}
	peer, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(host), 0)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { peer.Close() })
	if zero {
		rc, _ := peer.SyscallConn()
		var serr error
		rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_NO_CHECK, 1) })
		if serr != nil {
			t.Fatal(serr)
		}
	}
	tun := csumTunnel(stack.Tunnel{Local: freeUDPPort(t, host), Remote: peer.LocalAddr().(*net.UDPAddr).AddrPort()})
	s := newStack(t, stack.Config{Tunnels: []stack.Tunnel{tun}})
	name := "udp4"
	switch {
	case zero:
		name = "udp4-checksum-0"
	case host == "::1":
		name = "udp6"
	}
	return s, csumPeer{name: name, verified: !zero, send: func(t *testing.T, inner []byte) {
		t.Helper()
		if _, err := peer.WriteToUDPAddrPort(inner, tun.Local); err != nil {
			t.Fatal(err)
		}
	}}
}

// rawCsumPeer returns a stack with one raw tunnel inside a namespace of
// its own, outer IPv4 (127.0.0.1 from 127.0.0.2) or IPv6 (fd00::1 from
// fd00::2), and a peer that sends IP-in-IP from a raw socket.
func rawCsumPeer(t *testing.T, v6 bool) (*stack.Stack, csumPeer) {
	rawPrivileged(t)
	ns := rawNewNS(t, "csum")
	local, remote := netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2")
	if v6 {
		local, remote = netip.MustParseAddr("fd00::1"), netip.MustParseAddr("fd00::2")
		ns.ip(t, "addr", "add", "fd00::1/128", "dev", "lo", "nodad")
		ns.ip(t, "addr", "add", "fd00::2/128", "dev", "lo", "nodad")
	}
	var s *stack.Stack
	fds := map[uint8]int{}
	err := ns.do(func() error {
		var err error
		tun := csumTunnel(stack.Tunnel{Transport: stack.Raw, Local: netip.AddrPortFrom(local, 0), Remote: netip.AddrPortFrom(remote, 0)})
		if s, err = stack.New(stack.Config{Tunnels: []stack.Tunnel{tun}}); err != nil {
			return err
		}
		for _, proto := range []uint8{unix.IPPROTO_IPIP, unix.IPPROTO_IPV6} {
			var fd int
			if v6 {
				if fd, err = unix.Socket(unix.AF_INET6, unix.SOCK_RAW, int(proto)); err != nil {
					return err
				}
				if err = unix.Bind(fd, &unix.SockaddrInet6{Addr: remote.As16()}); err != nil {
					return err
				}
			} else if fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_RAW); err != nil {
				return err
			}
			fds[proto] = fd
		}
		return nil
	})
	for _, fd := range fds {
		t.Cleanup(func() { unix.Close(fd) })
	}
	if s != nil {
		t.Cleanup(func() { s.Close() })
	}
	if err != nil {
		t.Fatalf("raw tunnel in a namespace: %v", err)
	}
	name := "raw4"
	if v6 {
		name = "raw6"
	}
	return s, csumPeer{name: name, send: func(t *testing.T, inner []byte) {
		t.Helper()
		proto := uint8(unix.IPPROTO_IPIP)
		if inner[0]>>4 == 6 {
			proto = unix.IPPROTO_IPV6
		}
		if v6 {
			if err := unix.Sendto(fds[proto], inner, 0, &unix.SockaddrInet6{Addr: local.As16()}); err != nil {
				t.Fatal(err)
			}
			return
		}
		h := make([]byte, 20, 20+len(inner))
		h[0] = 0x45
		binary.BigEndian.PutUint16(h[2:], uint16(20+len(inner)))
		h[8], h[9] = 64, proto
		r4, l4 := remote.As4(), local.As4()
		copy(h[12:], r4[:])
		copy(h[16:], l4[:])
		binary.BigEndian.PutUint16(h[10:], checksum(h, 0))
		if err := unix.Sendto(fds[unix.IPPROTO_IPIP], append(h, inner...), 0, &unix.SockaddrInet4{Addr: l4}); err != nil {
			t.Fatal(err)
		}
	}}
}

// corruptPayload flips a bit in the last byte of an inner UDP packet
// without fixing its checksum.
func corruptPayload(p []byte) []byte {
	p = append([]byte(nil), p...)
	p[len(p)-1] ^= 0x04
	return p
}

// TestRXChecksumModel sends inner UDP datagrams, good and with a flipped
// payload bit, from the peer's own link address and from an address
// routed through the peer, over every transport: a corrupted datagram
// never reaches the application, and each is counted as bad_checksum.
// Only a corrupted datagram that the peer itself originated and that the
// kernel verified is out of scope (the peer sent those bytes).
func TestRXChecksumModel(t *testing.T) {
	setups := []struct {
		name string
		make func(t *testing.T) (*stack.Stack, csumPeer)
	}{
		{"udp4", func(t *testing.T) (*stack.Stack, csumPeer) { return udpCsumPeer(t, "127.0.0.1", false) }},
		{"udp4-checksum-0", func(t *testing.T) (*stack.Stack, csumPeer) { return udpCsumPeer(t, "127.0.0.1", true) }},
		{"udp6", func(t *testing.T) (*stack.Stack, csumPeer) { return udpCsumPeer(t, "::1", false) }},
		{"raw4", func(t *testing.T) (*stack.Stack, csumPeer) { return rawCsumPeer(t, false) }},
		{"raw6", func(t *testing.T) (*stack.Stack, csumPeer) { return rawCsumPeer(t, true) }},
	}
	for _, setup := range setups {
		t.Run(setup.name, func(t *testing.T) {
			s, peer := setup.make(t)
			for _, v6 := range []bool{false, true} {
				dst, onLink, offLink := addrA.Addr(), addrB.Addr(), offLink4
				build := ipv4UDP
				if v6 {
					dst, onLink, offLink, build = addrA6.Addr(), addrB6.Addr(), offLink6, ipv6UDP
				}
				pc, err := s.ListenPacket("udp", netip.AddrPortFrom(dst, 9999).String())
				if err != nil {
					t.Fatal(err)
				}
				for _, tc := range []struct {
					src     netip.Addr
					corrupt bool
				}{{onLink, false}, {onLink, true}, {offLink, false}, {offLink, true}} {
					if tc.corrupt && tc.src == onLink && peer.verified {
						continue
					}
					name := fmt.Sprintf("%s from %v corrupted=%v", familyName(v6), tc.src, tc.corrupt)
					payload := []byte(name)
					pkt := build(tc.src, dst, 1234, 9999, payload)
					if tc.corrupt {
						pkt = corruptPayload(pkt)
					}
					bad0 := s.Stats()[0].Drops[encap.BadChecksum]
					peer.send(t, pkt)
					got := recvOne(pc, 300*time.Millisecond)
					bad := s.Stats()[0].Drops[encap.BadChecksum] - bad0
					switch {
					case tc.corrupt && got != nil:
						t.Errorf("%s: delivered %q", name, got)
					case tc.corrupt && bad != 1:
						t.Errorf("%s: bad_checksum moved by %d, want 1", name, bad)
					case !tc.corrupt && string(got) != name:
						t.Errorf("%s: received %q, want the payload", name, got)
					}
				}
				pc.Close()
			}
		})
	}
}

// flipOnce wraps a transport and, on its send side, flips a payload bit of
// the first inner UDP datagram to port 7777 it sends, after its checksum
// was written: the hop after it is a kernel that adds a valid outer UDP
// checksum over the corrupted bytes.
type flipOnce struct {
	endpoint.Transport
	done atomic.Bool
}

func (f *flipOnce) WriteBatch(msgs []endpoint.Message) (int, error) {
	for i := range msgs {
		b := msgs[i].Buffers[len(msgs[i].Buffers)-1]
		l3 := 0
		switch {
		case len(b) >= 29 && b[0]>>4 == 4 && b[9] == 17:
			l3 = int(b[0]&0xf) * 4
		case len(b) >= 49 && b[0]>>4 == 6 && b[6] == 17:
			l3 = 40
		}
		if l3 > 0 && len(b) > l3+8 && binary.BigEndian.Uint16(b[l3+2:]) == 7777 && !f.done.Swap(true) {
			b[len(b)-1] ^= 0x01
		}
	}
	return f.Transport.WriteBatch(msgs)
}

// TestRXChecksumRouterHop: S1 -> router S2 -> S3 over real loopback UDP
// with checksums. S2 corrupts a datagram from S1 on its way out (as a bad
// link before S2's kernel would), and S2's kernel adds a valid outer UDP
// checksum over the corrupted bytes. S3's kernel verifies that checksum,
// but S2 only forwarded the inner packet: S3 must verify it itself.
func TestRXChecksumRouterHop(t *testing.T) {
	skipIPv4ForwardingUnderRace(t)
	c := newSocketChain(t, 3, func(link, end int, tun *stack.Tunnel) {
		if link == 1 && end == 0 {
			tun.Wrap = func(tr endpoint.Transport) endpoint.Transport { return &flipOnce{Transport: tr} }
		}
	})
	dst := netip.AddrPortFrom(c.addr(2, false), 7777)
	pc, err := c.s[2].ListenPacket("udp", dst.String())
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	sendNoDF(t, c.s[0], dst, []byte("corrupted after the router"))
	if got := recvOne(pc, 500*time.Millisecond); got != nil {
		t.Errorf("S3 delivered a datagram corrupted before the last hop: %q", got)
	}
	if n := c.s[2].Stats()[0].Drops[encap.BadChecksum]; n != 1 {
		t.Errorf("S3 counted %d bad_checksum drops, want 1", n)
	}
	sendNoDF(t, c.s[0], dst, []byte("intact"))
	if got := recvOne(pc, 2*time.Second); string(got) != "intact" {
		t.Errorf("S3 received %q, want the intact datagram", got)
	}
}

// newSocketChain is newChain over real loopback UDP sockets.
func newSocketChain(t *testing.T, n int, edit func(link, end int, tun *stack.Tunnel)) *chain {
	t.Helper()
	ports := map[int][2]netip.AddrPort{}
	return newChain(t, n, func(link, end int, tun *stack.Tunnel) {
		tun.Conn.Close()
		tun.Conn = nil
		if _, ok := ports[link]; !ok {
			ports[link] = [2]netip.AddrPort{freeUDPPort(t, "127.0.0.1"), freeUDPPort(t, "127.0.0.1")}
		}
		tun.Local, tun.Remote = ports[link][end], ports[link][1-end]
		if edit != nil {
			edit(link, end, tun)
		}
	})
}

// TestRXMergedBelowMTU: a receiver with a 9000-byte MTU, whose peer sends
// 1432-byte segments with outer checksum 0, merges segments into packets
// that still fit its MTU. They must reach TCP intact, not be dropped as
// malformed for a stale IPv4 header checksum.
func TestRXMergedBelowMTU(t *testing.T) {
	p := newPair(t, "127.0.0.1", func(side int, tun *stack.Tunnel) {
		if side == 0 {
			tun.ZeroUDPChecksum = true
		} else {
			tun.MTU = 9000
		}
	})
	transfer(t, p.a, p.b, "10.99.0.2:5001", 16<<20)
	gv := p.b.GVisor().Stats()
	if n := gv.IP.MalformedPacketsReceived.Value(); n != 0 {
		t.Errorf("B: %d malformed IP packets", n)
	}
	if n := gv.TCP.ChecksumErrors.Value(); n != 0 {
		t.Errorf("B: %d TCP checksum errors", n)
	}
	if st := p.b.Stats()[0]; st.DropTotal() != 0 {
		t.Errorf("B dropped %v", st.Drops)
	}
}

// flipLarge wraps a transport and, on receive, flips one payload bit of
// the first inner TCP segment larger than limit bytes once armed.
type flipLarge struct {
	endpoint.Transport
	limit   int
	armed   atomic.Bool
	flipped atomic.Bool
}

func (f *flipLarge) Receivers() []endpoint.Receiver {
	rs := f.Transport.Receivers()
	out := make([]endpoint.Receiver, len(rs))
	for i, r := range rs {
		out[i] = flipReceiver{r, f}
	}
	return out
}

type flipReceiver struct {
	endpoint.Receiver
	f *flipLarge
}

func (r flipReceiver) ReadBatch(msgs []endpoint.Message) (int, error) {
	n, err := r.Receiver.ReadBatch(msgs)
	for i := 0; i < n && r.f.armed.Load(); i++ {
		m := &msgs[i]
		b := m.Buffers[0][:m.N]
		if m.GSOSize > 0 {
			b = b[:min(m.GSOSize, len(b))]
		}
		if len(b) > r.f.limit && b[0]>>4 == 4 && b[9] == 6 && !r.f.flipped.Swap(true) {
			b[len(b)-1] ^= 0x20
		}
	}
	return n, err
}

// TestRXCorruptedAfterMTUDrop: the receiver's MTU drops mid-connection
// (a path MTU it learned) while the peer keeps sending segments sized for
// the old MSS, and one of them arrives with a payload bit flipped on a
// link with no checksum (the flip happens after the kernel's check). It
// must be dropped and retransmitted, not given a fresh checksum because
// it is larger than the MTU.
func TestRXCorruptedAfterMTUDrop(t *testing.T) {
	var fl *flipLarge
	p := newPair(t, "127.0.0.1", func(side int, tun *stack.Tunnel) {
		if side == 1 {
			tun.Wrap = func(tr endpoint.Transport) endpoint.Transport {
				fl = &flipLarge{Transport: tr, limit: 1000}
				return fl
			}
		}
	})
	eb := p.b.Endpoint("to-a")
	go func() {
		time.Sleep(50 * time.Millisecond)
		eb.SetMTU(1000)
		fl.armed.Store(true)
	}()
	transfer(t, p.a, p.b, "10.99.0.2:5001", 32<<20)
	if !fl.flipped.Load() {
		t.Fatal("no segment above 1000 bytes arrived after the MTU dropped: the test proves nothing")
	}
	if n := eb.Stats().Drops[encap.BadChecksum]; n != 1 {
		t.Errorf("B counted %d bad_checksum drops, want 1", n)
	}
}

// TestLastSeenOnlyAccepted: datagrams that are dropped (a stranger's, a
// malformed one) do not make the peer look alive.
func TestLastSeenOnlyAccepted(t *testing.T) {
	tg := newTarget(t, netip.Addr{})
	stranger, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer stranger.Close()
	tg.send(t, stranger, ipv4UDP(addrB.Addr(), addrA.Addr(), 1234, 9999, []byte("spoofed")))
	tg.send(t, tg.peer, []byte{0x45, 0, 0})
	waitFor(t, "both drops to be counted", func() bool {
		// The stranger's counts at the shared socket (SocketStats).
		return socketWrongPeer(tg.s) == 1 && tg.s.Stats()[0].Drops[encap.MalformedInner] == 1
	})
	if ls := tg.s.Stats()[0].LastSeen; !ls.IsZero() {
		t.Errorf("LastSeen = %v after only dropped datagrams, want zero", ls)
	}
	tg.probe(t)
	// The endpoint notes the time once its batch is delivered, which
	// can be a moment after the probe reached the application.
	waitFor(t, "LastSeen to be set after an accepted datagram", func() bool {
		return !tg.s.Stats()[0].LastSeen.IsZero()
	})
}

// TestIPv6OuterOffloads: a UDP tunnel over IPv6 gets RX checksum offload
// and coalescing as one over IPv4 does (the kernel never passes a UDP
// datagram over IPv6 with checksum 0 to the socket).
func TestIPv6OuterOffloads(t *testing.T) {
	if os.Getenv("IPIPSTACK_NO_IPV6") != "" {
		t.Skip("IPv6 loopback disabled")
	}
	p := newPair(t, "::1", nil)
	transfer(t, p.a, p.b, "10.99.0.2:5001", 16<<20)
	st := p.b.Stats()[0]
	if st.RxCoalesced == 0 {
		t.Errorf("B: 0 of %d packets received coalesced over an IPv6 outer path", st.RxPackets)
	}
	if st.DropTotal() != 0 {
		t.Errorf("B dropped %v", st.Drops)
	}
}
