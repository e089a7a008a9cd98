package stack_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/endpoint"
	"github.com/ipipstack/ipipstack/stack"
)

// TestSharedPortTwoTunnels runs two UDP tunnels of one stack on one local
// address and port, to two peers: each carries its own peer's traffic
// (issue 14; before shared sockets the second tunnel could not bind).
func TestSharedPortTwoTunnels(t *testing.T) {
	hub := freeUDPPort(t, "127.0.0.1")
	var peers []*stack.Stack
	var tunnels []stack.Tunnel
	for i := 1; i <= 2; i++ {
		pp := freeUDPPort(t, "127.0.0.1")
		tunnels = append(tunnels, stack.Tunnel{Name: fmt.Sprintf("p%d", i), Local: hub, Remote: pp,
			Addresses: []netip.Prefix{peerInner(i, 1)}})
		peers = append(peers, newPeerStack(t, stack.Tunnel{Name: "hub", Local: pp, Remote: hub,
			Addresses: []netip.Prefix{peerInner(i, 2)}}))
	}
	a, err := stack.New(stack.Config{Tunnels: tunnels})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	for i, p := range peers {
		pingWithin(t, p, peerInner(i+1, 1).Addr().String())
		pingWithin(t, a, peerInner(i+1, 2).Addr().String())
	}
	// The tx counter moves after the write returns, which may be after
	// the reply arrived.
	waitFor(t, "both tunnels to count two packets each way", func() bool {
		for _, st := range a.Stats() {
			if st.RxPackets < 2 || st.TxPackets < 2 {
				return false
			}
		}
		return true
	})
	for _, st := range a.Stats() {
		if st.RxPackets < 2 || st.TxPackets < 2 || st.DropTotal() != 0 {
			t.Errorf("%s: rx %d tx %d drops %d; want at least 2 each way and no drops", st.Name, st.RxPackets, st.TxPackets, st.DropTotal())
		}
	}
}

// hubInner is the inner /30 of hub tunnel i: host 1 is the hub's, 2 the
// peer's (10.200.0.0/18 holds 4096 of them).
func hubInner(i, host int) netip.Prefix {
	a := netip.AddrFrom4([4]byte{10, 200, byte(i * 4 / 256), byte(i*4%256 + host)})
	return netip.PrefixFrom(a, 30)
}

// splitTransport receives on one socket and sends from another, as a
// Linux FOU peer with encap-sport auto does: its datagrams come from a
// port other than the one it is sent to.
type splitTransport struct {
	endpoint.Transport // receives
	out                endpoint.Transport
}

func (s *splitTransport) WriteBatch(msgs []endpoint.Message) (int, error) {
	return s.out.WriteBatch(msgs)
}

func (s *splitTransport) Close() error {
	s.out.Close()
	return s.Transport.Close()
}

// TestHubThousandTunnels runs a hub of 1,000 UDP tunnels on one local
// port, of which 50 have a peer that sends: each peer's datagrams arrive
// on its own tunnel and no other, a datagram from an unknown peer is
// counted once, by the socket, and a peer that sends from another port
// than it receives on works with AnySourcePort.
func TestHubThousandTunnels(t *testing.T) {
	const n, every, count = 1000, 20, 3
	hubPort := freeUDPPort(t, "127.0.0.1")
	// The peers: one stack, one tunnel (and socket) per active peer.
	var peerTunnels []stack.Tunnel
	for i := 0; i < n; i += every {
		peerTunnels = append(peerTunnels, stack.Tunnel{Name: fmt.Sprintf("h%d", i),
			Local: netip.MustParseAddrPort("127.0.0.1:0"), Remote: hubPort, Addresses: []netip.Prefix{hubInner(i, 2)}})
	}
	peers, err := stack.New(stack.Config{Tunnels: peerTunnels})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { peers.Close() })

	// The any_source_port peer, on 127.0.0.2: it receives on recv and
	// sends from send.
	recv, err := endpoint.ListenUDP(netip.MustParseAddrPort("127.0.0.2:0"), endpoint.SocketOptions{})
	if err != nil {
		t.Fatal(err)
	}
	send, err := endpoint.ListenUDP(netip.MustParseAddrPort("127.0.0.2:0"), endpoint.SocketOptions{})
	if err != nil {
		recv.Close()
		t.Fatal(err)
	}
	const anyIdx = n
	anyPeer := newPeerStack(t, stack.Tunnel{Name: "hub", Local: recv.LocalAddr(), Remote: hubPort,
		Addresses: []netip.Prefix{hubInner(anyIdx, 2)}, Conn: &splitTransport{Transport: recv, out: send}})

	var tunnels []stack.Tunnel
	for i := range n {
		// Idle peers on 127.0.0.3, which nothing sends from.
		remote := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.3"), uint16(1024+i))
		if i%every == 0 {
			remote, _ = peers.LocalAddr(fmt.Sprintf("h%d", i))
		}
		tunnels = append(tunnels, stack.Tunnel{Name: fmt.Sprintf("p%d", i), Local: hubPort, Remote: remote,
			Addresses: []netip.Prefix{hubInner(i, 1)}})
	}
	tunnels = append(tunnels, stack.Tunnel{Name: "any", Local: hubPort, Remote: recv.LocalAddr(), AnySourcePort: true,
		Addresses: []netip.Prefix{hubInner(anyIdx, 1)}})
	start := time.Now()
	hub, err := stack.New(stack.Config{Tunnels: tunnels})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hub.Close() })
	t.Logf("hub of %d tunnels up in %v", len(tunnels), time.Since(start).Round(time.Millisecond))
	if ss := hub.SocketStats(); len(ss) != 1 || ss[0].Local != hubPort || ss[0].Tunnels != n+1 || ss[0].Transport != stack.UDP {
		t.Fatalf("SocketStats() = %+v, want one UDP socket on %v with %d tunnels", ss, hubPort, n+1)
	}

	// An echo server on every hub address.
	pc, err := hub.ListenPacket("udp4", "0.0.0.0:7000")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	go func() {
		buf := make([]byte, 2048)
		for {
			m, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:m], from)
		}
	}()
	for i := 0; i < n; i += every {
		echo(t, peers, hubInner(i, 1).Addr(), count, i)
	}
	pingWithin(t, anyPeer, hubInner(anyIdx, 1).Addr().String())

	// A datagram from no tunnel's peer: a valid inner packet, from an
	// inner address tunnel p0 accepts, so that only the demultiplexing
	// keeps it out.
	stranger, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(hubPort))
	if err != nil {
		t.Fatal(err)
	}
	defer stranger.Close()
	if _, err := stranger.Write(innerUDP(hubInner(0, 2).Addr(), hubInner(0, 1).Addr())); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the stranger's datagram to count as wrong_peer", func() bool {
		ss := hub.SocketStats()
		return len(ss) == 1 && ss[0].WrongPeer >= 1
	})
	ss := hub.SocketStats()[0]
	if ss.WrongPeer != 1 {
		t.Errorf("socket wrong_peer = %d, want 1", ss.WrongPeer)
	}
	if want := uint64(n/every*count + 2); ss.Received < want {
		t.Errorf("socket received = %d, want at least %d (echoes, the ping, the stranger)", ss.Received, want)
	}
	for _, st := range hub.Stats() {
		var i int
		fmt.Sscanf(st.Name, "p%d", &i)
		wantRx := uint64(0)
		switch {
		case st.Name == "any":
			wantRx = 1 // the echo request
		case i%every == 0:
			wantRx = count
		}
		if st.RxPackets != wantRx || st.TxPackets != wantRx || st.DropTotal() != 0 {
			t.Errorf("%s: rx %d tx %d drops %v; want rx and tx %d, no drops", st.Name, st.RxPackets, st.TxPackets, st.Drops, wantRx)
		}
	}
}

// echo sends count datagrams from s to dst:7000 and reads their echoes.
func echo(t *testing.T, s *stack.Stack, dst netip.Addr, count, id int) {
	t.Helper()
	c, err := s.DialUDPAddrPort(netip.AddrPort{}, netip.AddrPortFrom(dst, 7000))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 64)
	for k := range count {
		msg := fmt.Appendf(nil, "peer %d datagram %d", id, k)
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		m, err := c.Read(buf)
		if err != nil {
			t.Fatalf("echo of %q from %v: %v", msg, dst, err)
		}
		if !bytes.Equal(buf[:m], msg) {
			t.Fatalf("echo from %v = %q, want %q", dst, buf[:m], msg)
		}
	}
}

// innerUDP is an IPv4 UDP packet src -> dst:7000 with valid checksums.
func innerUDP(src, dst netip.Addr) []byte {
	p := make([]byte, 28+4)
	p[0], p[8], p[9] = 0x45, 64, 17
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	s, d := src.As4(), dst.As4()
	copy(p[12:], s[:])
	copy(p[16:], d[:])
	binary.BigEndian.PutUint16(p[10:], ^onesSum(p[:20], 0))
	binary.BigEndian.PutUint16(p[20:], 4000)
	binary.BigEndian.PutUint16(p[22:], 7000)
	binary.BigEndian.PutUint16(p[24:], uint16(len(p)-20))
	copy(p[28:], "ping")
	pseudo := append(append(s[:], d[:]...), 0, 17, 0, byte(len(p)-20))
	binary.BigEndian.PutUint16(p[26:], ^onesSum(p[20:], onesSum(pseudo, 0)))
	return p
}

// onesSum is the one's complement sum of b added to sum (RFC 1071).
func onesSum(b []byte, sum uint16) uint16 {
	s := uint32(sum)
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return uint16(s)
}

// TestSharedPortAddRemoveWhileTransferring adds a tunnel to a shared port
// and removes another from it while a TCP transfer over a third on the
// same port completes byte-exact; the socket follows the tunnels and
// closes with the last.
func TestSharedPortAddRemoveWhileTransferring(t *testing.T) {
	hubPort := freeUDPPort(t, "127.0.0.1")
	peer := func(i int) (stack.Tunnel, *stack.Stack) {
		pp := freeUDPPort(t, "127.0.0.1")
		s := newPeerStack(t, stack.Tunnel{Name: "hub", Local: pp, Remote: hubPort, Addresses: []netip.Prefix{peerInner(i, 2)}})
		return stack.Tunnel{Name: fmt.Sprintf("t%d", i), Local: hubPort, Remote: pp, Addresses: []netip.Prefix{peerInner(i, 1)}}, s
	}
	t1, b := peer(1)
	t2, d := peer(2)
	t3, c := peer(3)
	a, err := stack.New(stack.Config{Tunnels: []stack.Tunnel{t1, t3}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	pingWithin(t, c, peerInner(3, 1).Addr().String())

	transferMidway(t, a, b, netip.AddrPortFrom(peerInner(1, 2).Addr(), 9000).String(), transferSize(t), func() error {
		if err := a.AddTunnel(t2); err != nil {
			return err
		}
		return a.RemoveTunnel("t3")
	})
	pingWithin(t, d, peerInner(2, 1).Addr().String())
	if ss := a.SocketStats(); len(ss) != 1 || ss[0].Tunnels != 2 {
		t.Errorf("SocketStats() = %+v, want one socket with 2 tunnels", ss)
	}
	for _, name := range []string{"t1", "t2"} {
		if err := a.RemoveTunnel(name); err != nil {
			t.Fatal(err)
		}
	}
	if ss := a.SocketStats(); len(ss) != 0 {
		t.Errorf("SocketStats() = %+v after the last tunnel left, want none", ss)
	}
	// The port is free again.
	pc, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(hubPort))
	if err != nil {
		t.Fatalf("the shared port is still bound after its last tunnel left: %v", err)
	}
	pc.Close()
}

// TestSharedSocketConflicts checks the errors of tunnels that one socket
// cannot serve, and that a failed tunnel leaves the socket as it was.
func TestSharedSocketConflicts(t *testing.T) {
	hubPort := freeUDPPort(t, "127.0.0.1")
	base := stack.Tunnel{Name: "t1", Local: hubPort, Remote: netip.MustParseAddrPort("127.0.0.5:4000"),
		Addresses: []netip.Prefix{peerInner(1, 1)}, Roaming: true}
	a, err := stack.New(stack.Config{Tunnels: []stack.Tunnel{base}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	for _, tc := range []struct {
		name string
		edit func(*stack.Tunnel)
		want string
	}{
		// Not roaming, so that only the peer check can refuse them.
		{"same peer", func(tu *stack.Tunnel) { tu.Roaming = false }, `tunnel "t1"`},
		{"any source port", func(tu *stack.Tunnel) {
			tu.Remote, tu.AnySourcePort, tu.Roaming = netip.MustParseAddrPort("127.0.0.5:4001"), true, false
		}, `tunnel "t1"`},
		{"second roaming", func(tu *stack.Tunnel) {
			tu.Remote, tu.Roaming = netip.MustParseAddrPort("127.0.0.6:4000"), true
		}, `tunnel "t1"`},
		{"socket buffer", func(tu *stack.Tunnel) {
			tu.Remote, tu.Roaming, tu.SocketBuffer = netip.MustParseAddrPort("127.0.0.6:4000"), false, 1<<20
		}, "SocketBuffer"},
		{"zero checksum", func(tu *stack.Tunnel) {
			tu.Remote, tu.Roaming, tu.ZeroUDPChecksum = netip.MustParseAddrPort("127.0.0.6:4000"), false, true
		}, "ZeroUDPChecksum"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tu := base
			tu.Name, tu.Addresses = "t2", []netip.Prefix{peerInner(2, 1)}
			tc.edit(&tu)
			err := a.AddTunnel(tu)
			if err == nil || !strings.Contains(err.Error(), `"t2"`) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("AddTunnel = %v, want an error naming t2 and %s", err, tc.want)
			}
			if ss := a.SocketStats(); len(ss) != 1 || ss[0].Tunnels != 1 {
				t.Errorf("SocketStats() = %+v, want the one socket with its one tunnel", ss)
			}
		})
	}
}
