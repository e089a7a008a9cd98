//go:build linux

package endpoint

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/endpoint/encap"
)

// sharedHarness is a Shared on a loopback UDP port and its tunnels.
type sharedHarness struct {
	t  *testing.T
	sh *Shared
}

func newSharedHarness(t *testing.T) *sharedHarness {
	t.Helper()
	tr, err := ListenUDP(netip.MustParseAddrPort("127.0.0.1:0"), SocketOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sh := NewShared(tr, nil)
	t.Cleanup(func() { sh.Close() })
	return &sharedHarness{t: t, sh: sh}
}

// tunnel joins a tunnel to remote and returns its attached endpoint.
func (h *sharedHarness) tunnel(remote netip.AddrPort, anySourcePort, roaming bool) (*Endpoint, *recDispatcher) {
	h.t.Helper()
	jt, err := h.sh.Join(remote, anySourcePort, roaming)
	if err != nil {
		h.t.Fatal(err)
	}
	ep, err := New(Options{Name: remote.String(), Transport: jt, Remote: remote, AnySourcePort: anySourcePort, Roaming: roaming})
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(ep.Close)
	d := &recDispatcher{}
	ep.Attach(d)
	return ep, d
}

// peerSocket is a UDP socket on addr, a loopback address, for a peer.
func peerSocket(t *testing.T, addr string) (*net.UDPConn, netip.AddrPort) {
	t.Helper()
	c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(addr), 0)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, c.LocalAddr().(*net.UDPAddr).AddrPort()
}

func (h *sharedHarness) send(c *net.UDPConn, n int, tag byte) {
	h.t.Helper()
	for range n {
		p := inner4("10.1.0.2", "10.1.0.1", 0)
		p[len(p)-1] = tag
		if _, err := c.WriteToUDPAddrPort(p, h.sh.LocalAddr()); err != nil {
			h.t.Fatal(err)
		}
	}
}

// waitFor polls cond until it holds, failing after 10 s with what.
func waitFor(t *testing.T, cond func() bool, what func() string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatal(what())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func totalDrops(s Stats) (n uint64) {
	for _, d := range s.Drops {
		n += d
	}
	return n
}

// TestSharedDemux: tunnels on one UDP port each get their own peer's
// datagrams (exact address and port, or any port of the address), among
// hundreds of idle tunnels; a datagram from no tunnel's peer is counted
// once, by the socket set, and by no endpoint; a closed tunnel's peer
// becomes unknown; a tunnel sends from the shared port.
func TestSharedDemux(t *testing.T) {
	h := newSharedHarness(t)
	pa, addrA := peerSocket(t, "127.0.0.2")
	pb1, addrB := peerSocket(t, "127.0.0.3")
	pb2, _ := peerSocket(t, "127.0.0.3")
	pc, addrC := peerSocket(t, "127.0.0.4")
	stranger, _ := peerSocket(t, "127.0.0.2") // A's address, another port

	epA, dA := h.tunnel(addrA, false, false)
	epB, dB := h.tunnel(addrB, true, false)
	epC, _ := h.tunnel(addrC, false, false)
	idle := make([]*Endpoint, 300)
	for i := range idle {
		idle[i], _ = h.tunnel(netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 1, byte(i >> 8), byte(i)}), 5555), false, false)
	}
	if got := h.sh.Tunnels(); got != 3+len(idle) {
		t.Fatalf("Tunnels() = %d, want %d", got, 3+len(idle))
	}

	h.send(pa, 3, 'a')
	h.send(pb1, 2, 'b')
	h.send(pb2, 2, 'b')
	h.send(pc, 1, 'c')
	h.send(stranger, 1, 's')
	want := map[*Endpoint]uint64{epA: 3, epB: 4, epC: 1}
	waitFor(t, func() bool {
		return epA.Stats().RxPackets == 3 && epB.Stats().RxPackets == 4 && epC.Stats().RxPackets == 1 && h.sh.Stats().WrongPeer == 1
	}, func() string {
		return fmt.Sprintf("rx A %d B %d C %d, shared %+v; want 3 4 1 and one wrong peer",
			epA.Stats().RxPackets, epB.Stats().RxPackets, epC.Stats().RxPackets, h.sh.Stats())
	})
	for ep, n := range want {
		if s := ep.Stats(); s.RxPackets != n || totalDrops(s) != 0 {
			t.Errorf("tunnel %v: %d received, %d dropped; want %d and 0", ep.Remote(), s.RxPackets, totalDrops(s), n)
		}
	}
	for _, ep := range idle {
		if s := ep.Stats(); s.RxPackets != 0 || totalDrops(s) != 0 {
			t.Fatalf("idle tunnel %v counted %d received, %d dropped", ep.Remote(), s.RxPackets, totalDrops(s))
		}
	}
	for _, p := range dA.take() {
		if p.data[len(p.data)-1] != 'a' {
			t.Errorf("tunnel A got a packet tagged %q", p.data[len(p.data)-1])
		}
	}
	if got := len(dB.take()); got != 4 {
		t.Errorf("tunnel B delivered %d packets, want 4", got)
	}
	if s := h.sh.Stats(); s.Received != 9 {
		t.Errorf("shared Received = %d, want 9", s.Received)
	}

	// Joining an address:port that is taken, or overlapping one.
	for _, c := range []struct {
		remote  netip.AddrPort
		any     bool
		wantErr error
	}{
		{addrA, false, ErrPeerTaken},
		{netip.AddrPortFrom(addrB.Addr(), 1234), false, ErrPeerTaken},
		{netip.AddrPortFrom(addrA.Addr(), 1), true, ErrPeerTaken},
	} {
		if _, err := h.sh.Join(c.remote, c.any, false); !errors.Is(err, c.wantErr) {
			t.Errorf("Join(%v, any=%v) = %v, want %v", c.remote, c.any, err, c.wantErr)
		}
	}

	// A tunnel sends from the shared port.
	pkt := gvPacket4(t, 0, 64)
	want4 := flat(pkt)
	if _, err := epA.WritePackets(pktList(pkt)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2048)
	pa.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, from, err := pa.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatal(err)
	}
	if from != h.sh.LocalAddr() || !bytes.Equal(buf[:n], want4) {
		t.Errorf("peer A read %d bytes from %v, want the inner packet from %v", n, from, h.sh.LocalAddr())
	}

	// Closed, C leaves: its peer is unknown now.
	epC.Close()
	h.send(pc, 1, 'c')
	waitFor(t, func() bool { return h.sh.Stats().WrongPeer == 2 },
		func() string { return fmt.Sprintf("shared %+v after C left, want 2 wrong peer", h.sh.Stats()) })
	if got := h.sh.Tunnels(); got != 2+len(idle) {
		t.Errorf("Tunnels() = %d after one closed, want %d", got, 2+len(idle))
	}
	if s := epC.Stats(); s.RxPackets != 1 || totalDrops(s) != 0 {
		t.Errorf("closed tunnel C counted %d received, %d dropped; want 1 and 0", s.RxPackets, totalDrops(s))
	}
}

// TestSharedRoaming: one roaming tunnel takes what no other tunnel's peer
// sent; a second one is refused.
func TestSharedRoaming(t *testing.T) {
	h := newSharedHarness(t)
	pa, addrA := peerSocket(t, "127.0.0.2")
	moved, _ := peerSocket(t, "127.0.0.5")
	epA, _ := h.tunnel(addrA, false, false)
	epR, _ := h.tunnel(netip.MustParseAddrPort("127.0.0.6:4000"), false, true)
	if _, err := h.sh.Join(netip.MustParseAddrPort("127.0.0.7:4000"), false, true); !errors.Is(err, ErrRoamingTaken) {
		t.Errorf("second roaming Join = %v, want ErrRoamingTaken", err)
	}
	h.send(pa, 2, 'a')
	h.send(moved, 3, 'r')
	waitFor(t, func() bool { return epA.Stats().RxPackets == 2 && epR.Stats().RxPackets == 3 },
		func() string {
			return fmt.Sprintf("rx A %d roaming %d, shared %+v; want 2 and 3", epA.Stats().RxPackets, epR.Stats().RxPackets, h.sh.Stats())
		})
	if s := h.sh.Stats(); s.WrongPeer != 0 {
		t.Errorf("shared counted %d wrong peer with a roaming tunnel", s.WrongPeer)
	}
}

// TestSharedJoinLeaveUnderTraffic: tunnels join and leave while one peer
// streams; every datagram the socket set reads is its tunnel's, and
// closing endpoints while the receive goroutines deliver is race-free.
func TestSharedJoinLeaveUnderTraffic(t *testing.T) {
	h := newSharedHarness(t)
	pa, addrA := peerSocket(t, "127.0.0.2")
	epA, _ := h.tunnel(addrA, false, false)
	others := make([]*net.UDPConn, 4)
	addrs := make([]netip.AddrPort, len(others))
	for i := range others {
		others[i], addrs[i] = peerSocket(t, fmt.Sprintf("127.0.0.%d", 10+i))
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		p := inner4("10.1.0.2", "10.1.0.1", 0)
		for {
			select {
			case <-stop:
				return
			default:
			}
			pa.WriteToUDPAddrPort(p, h.sh.LocalAddr())
			for _, o := range others {
				o.WriteToUDPAddrPort(p, h.sh.LocalAddr())
			}
		}
	}()
	for round := range 50 {
		i := round % len(others)
		jt, err := h.sh.Join(addrs[i], false, false)
		if err != nil {
			t.Fatal(err)
		}
		ep, err := New(Options{Transport: jt, Remote: addrs[i]})
		if err != nil {
			t.Fatal(err)
		}
		ep.Attach(&recDispatcher{})
		time.Sleep(time.Millisecond)
		ep.Close()
		if s := ep.Stats(); s.Drops[encap.WrongPeer] != 0 {
			t.Fatalf("a joined tunnel counted %d wrong-peer drops", s.Drops[encap.WrongPeer])
		}
	}
	close(stop)
	wg.Wait()
	if got := h.sh.Tunnels(); got != 1 {
		t.Errorf("Tunnels() = %d after the others left, want 1", got)
	}
	if s := epA.Stats(); s.RxPackets == 0 || totalDrops(s) != 0 {
		t.Errorf("tunnel A: %d received, %d dropped while others came and went", s.RxPackets, totalDrops(s))
	}
}
