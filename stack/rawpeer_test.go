package stack_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/endpoint/encap"
	"github.com/ipipstack/ipipstack/internal/netnstest"
	"github.com/ipipstack/ipipstack/stack"
)

// The tests in this file check that raw tunnels sharing one outer address
// each receive only their own peer's packets. Namespace A holds one stack
// whose tunnels all use 192.0.2.1; namespace B holds one stack per peer,
// each on an address of its own:
//
//	nsA: vA 192.0.2.1/24  <-- veth -->  nsB: vB 192.0.2.2-5/24
//
// Tunnel i (1 to 3) joins A's 10.99.i.1/30 to 10.99.i.2/30 at 192.0.2.(i+1).

// peerNet is the two namespaces of these tests.
type peerNet struct{ a, b *netnstest.NS }

func newPeerNet(t *testing.T) *peerNet {
	t.Helper()
	netnstest.Privileged(t)
	n := &peerNet{a: netnstest.New(t), b: netnstest.New(t)}
	n.a.Run(t, "ip", "link", "add", "vA", "type", "veth", "peer", "name", "vB", "netns", n.b.Name())
	n.a.Run(t, "ip", "addr", "add", "192.0.2.1/24", "dev", "vA")
	for i := 2; i <= 5; i++ {
		n.b.Run(t, "ip", "addr", "add", fmt.Sprintf("192.0.2.%d/24", i), "dev", "vB")
	}
	for _, ns := range []*netnstest.NS{n.a, n.b} {
		ns.Run(t, "ip", "link", "set", "lo", "up")
	}
	n.a.Run(t, "ip", "link", "set", "vA", "up")
	n.b.Run(t, "ip", "link", "set", "vB", "up")
	return n
}

// start runs stack.New with tunnels inside ns and closes the stack when
// the test ends.
func (n *peerNet) start(t *testing.T, ns *netnstest.NS, tunnels ...stack.Tunnel) *stack.Stack {
	t.Helper()
	var s *stack.Stack
	if err := ns.Do(func() (err error) {
		s, err = stack.New(stack.Config{Tunnels: tunnels})
		return err
	}); err != nil {
		t.Fatalf("stack in %s: %v", ns.Name(), err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func peerOuter(i int) netip.Addr { return netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}) }

func peerInner(tun, host int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 99, byte(tun), byte(host)}), 30)
}

func rawTunnel(name string, local, remote netip.Addr, addr netip.Prefix) stack.Tunnel {
	return stack.Tunnel{Name: name, Transport: stack.Raw, Local: netip.AddrPortFrom(local, 0),
		Remote: netip.AddrPortFrom(remote, 0), Addresses: []netip.Prefix{addr}}
}

func pingOK(t *testing.T, s *stack.Stack, dst netip.Addr) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := s.Ping(ctx, dst); err != nil {
		t.Fatalf("Ping(%v): %v", dst, err)
	}
}

// TestRawTunnelsOwnPeerOnly runs TCP over three raw tunnels of one stack
// that share the outer address 192.0.2.1, one after the other, and checks
// that every tunnel received its own peer's packets and counted none of
// the others' as wrong_peer: each tunnel's receiving sockets see only its
// peer's packets.
func TestRawTunnelsOwnPeerOnly(t *testing.T) {
	n := newPeerNet(t)
	var tunnels []stack.Tunnel
	for i := 1; i <= 3; i++ {
		tunnels = append(tunnels, rawTunnel(fmt.Sprintf("to-%d", i), peerOuter(1), peerOuter(i+1), peerInner(i, 1)))
	}
	a := n.start(t, n.a, tunnels...)
	var peers []*stack.Stack
	for i := 1; i <= 3; i++ {
		peers = append(peers, n.start(t, n.b, rawTunnel("to-a", peerOuter(i+1), peerOuter(1), peerInner(i, 2))))
	}
	before := a.Stats()
	for i, p := range peers {
		transfer(t, p, a, netip.AddrPortFrom(peerInner(i+1, 1).Addr(), 7001).String(), 1<<20)
		transfer(t, a, p, netip.AddrPortFrom(peerInner(i+1, 2).Addr(), 7002).String(), 1<<20)
	}
	after := a.Stats()
	for i := range after {
		b, s := before[i], after[i]
		if got := s.RxBytes - b.RxBytes; got < 1<<20 {
			t.Errorf("%s: rx grew by %d bytes, want at least 1 MiB from its own peer", s.Name, got)
		}
		if got := s.Drops[encap.WrongPeer]; got != 0 {
			t.Errorf("%s: wrong_peer = %d, want 0: it received the other tunnels' packets", s.Name, got)
		}
	}
	for i, p := range peers {
		if got := p.Stats()[0].Drops[encap.WrongPeer]; got != 0 {
			t.Errorf("peer %d: wrong_peer = %d, want 0", i+1, got)
		}
	}
	// The three tunnels share one set of raw sockets, which counted no
	// packet as from a wrong peer; a packet from 192.0.2.5, no tunnel's
	// peer, counts once there and in no tunnel.
	ss := a.SocketStats()
	if len(ss) != 1 || ss[0].Transport != stack.Raw || ss[0].Tunnels != 3 || ss[0].WrongPeer != 0 {
		t.Fatalf("SocketStats() = %+v, want one raw socket set with 3 tunnels and wrong_peer 0", ss)
	}
	sendIPIP(t, n.b, peerOuter(5), peerOuter(1), innerUDP(peerInner(1, 2).Addr(), peerInner(1, 1).Addr()))
	waitFor(t, "the stranger's packet to count as wrong_peer", func() bool { return a.SocketStats()[0].WrongPeer >= 1 })
	if got := a.SocketStats()[0].WrongPeer; got != 1 {
		t.Errorf("socket wrong_peer = %d, want 1", got)
	}
	for i, s := range a.Stats() {
		if d := s.DropTotal() - before[i].DropTotal(); d != 0 {
			t.Errorf("%s: drops grew by %d (%v), want 0", s.Name, d, s.Drops)
		}
	}
}

// TestRawTunnelRoaming checks that a roaming raw tunnel still accepts its
// peer from a new outer address: UDP datagrams the peer sends from there
// arrive whole, and the tunnel takes the new address as its peer's. The
// datagrams go one way only: what the tunnel sends back after a move is
// not what this test is about.
func TestRawTunnelRoaming(t *testing.T) {
	n := newPeerNet(t)
	tun := rawTunnel("to-b", peerOuter(1), peerOuter(2), peerInner(1, 1))
	tun.Roaming = true
	a := n.start(t, n.a, tun)
	old := n.start(t, n.b, rawTunnel("to-a", peerOuter(2), peerOuter(1), peerInner(1, 2)))
	pingOK(t, old, peerInner(1, 1).Addr())
	old.Close()

	moved := n.start(t, n.b, rawTunnel("to-a", peerOuter(5), peerOuter(1), peerInner(1, 2)))
	dst := netip.AddrPortFrom(peerInner(1, 1).Addr(), 7003)
	pc, err := a.ListenPacket("udp4", dst.String())
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	c, err := moved.Dial("udp4", dst.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	before := a.Stats()[0]
	const count, size = 20, 1000
	sent := sha256.New()
	for i := range count {
		msg := bytes.Repeat([]byte{byte(i)}, size)
		sent.Write(msg)
		if _, err := c.Write(msg); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	got := sha256.New()
	buf := make([]byte, 2*size)
	pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	for i := range count {
		n, _, err := pc.ReadFrom(buf)
		if err != nil {
			t.Fatalf("read datagram %d of %d from the moved peer: %v", i+1, count, err)
		}
		got.Write(buf[:n])
	}
	if !bytes.Equal(got.Sum(nil), sent.Sum(nil)) {
		t.Errorf("SHA-256 of the datagrams received %x, sent %x", got.Sum(nil), sent.Sum(nil))
	}
	after := a.Stats()[0]
	if d := after.RxPackets - before.RxPackets; d < count {
		t.Errorf("rx grew by %d packets from the moved peer, want at least %d", d, count)
	}
	if d := after.Drops[encap.WrongPeer] - before.Drops[encap.WrongPeer]; d != 0 {
		t.Errorf("wrong_peer grew by %d, want 0: a roaming tunnel accepts its moved peer", d)
	}
	// The tunnel moves once the new address answered its echo request
	// (endpoint/roam.go); then what it sends reaches the moved peer.
	waitFor(t, "the tunnel to follow its peer to "+peerOuter(5).String(), func() bool {
		return a.Endpoint("to-b").Remote().Addr() == peerOuter(5)
	})
	if st := a.Endpoint("to-b").Stats(); st.Roams != 1 || st.RoamProbes == 0 {
		t.Errorf("Roams %d, RoamProbes %d; want 1 move after at least one probe", st.Roams, st.RoamProbes)
	}
	pingOK(t, a, peerInner(1, 2).Addr())
}
