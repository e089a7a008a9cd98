package bench

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	gvstack "gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
)

// The naive baseline: what anyone gets by wiring gVisor to a UDP socket
// the obvious way. One sendto per outbound packet, one recvfrom and one
// DeliverNetworkPacket per inbound datagram, no batching, no GSO or GRO, no
// checksum offload (gVisor computes and verifies every checksum), 4 MiB
// socket buffers, and the gVisor settings of wireguard-go's tun/netstack
// (tun.go, CreateNetTUN): IPv4 and IPv6, TCP, UDP and ICMP, HandleLocal,
// SACK on, one NIC with a default route, everything else gVisor's default.
// It carries the same bare inner packets as ipipstack's udp transport, and
// encrypts nothing, so it differs from ipipstack only in the endpoint and
// stack tuning; it differs from wireguard-go's netstack in the crypto and
// in wireguard-go's channel endpoint and goroutine pipeline.

const naiveSocketBuffer = 4 << 20

// naiveLink is the minimal stack.LinkEndpoint over an unconnected
// *net.UDPConn that sends to, and accepts datagrams from, one peer. It owns
// conn: Close closes it.
type naiveLink struct {
	conn *net.UDPConn
	peer netip.AddrPort
	mtu  atomic.Uint32

	// mu guards dispatcher and started.
	mu         sync.Mutex
	dispatcher gvstack.NetworkDispatcher
	started    bool
	done       sync.WaitGroup

	// Drops, by reason; a benchmark reports them if any moved.
	dropNotPeer, dropBadVersion, dropDetached, dropWrite atomic.Uint64
}

var _ gvstack.LinkEndpoint = (*naiveLink)(nil)

// newNaiveLink binds 127.0.0.1:local and sends to peer.
func newNaiveLink(tb testing.TB, local, peer netip.AddrPort, mtu int) *naiveLink {
	tb.Helper()
	conn, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(local))
	if err != nil {
		tb.Fatalf("naive link: listen on %v: %v", local, err)
	}
	if err := setNaiveBuffers(conn); err != nil {
		conn.Close()
		tb.Fatalf("naive link: %v", err)
	}
	l := &naiveLink{conn: conn, peer: peer}
	l.mtu.Store(uint32(mtu))
	return l
}

// setNaiveBuffers asks for 4 MiB SO_RCVBUF and SO_SNDBUF, with the FORCE
// variants first (root lifts net.core.rmem_max), as ipipstack's endpoint
// and wireguard-go's conn package do.
func setNaiveBuffers(c *net.UDPConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		for _, o := range [][2]int{{unix.SO_RCVBUFFORCE, unix.SO_RCVBUF}, {unix.SO_SNDBUFFORCE, unix.SO_SNDBUF}} {
			if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, o[0], naiveSocketBuffer) != nil {
				if e := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, o[1], naiveSocketBuffer); e != nil {
					serr = fmt.Errorf("setsockopt SO_RCVBUF/SO_SNDBUF %d: %w", naiveSocketBuffer, e)
				}
			}
		}
	})
	if err != nil {
		return err
	}
	return serr
}

// readLoop delivers one datagram at a time until the socket is closed, to
// the dispatcher attached at the time (none after Attach(nil)).
func (l *naiveLink) readLoop() {
	defer l.done.Done()
	buf := make([]byte, 65535)
	for {
		n, from, err := l.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return // closed
		}
		if from != l.peer {
			l.dropNotPeer.Add(1)
			continue
		}
		var proto tcpip.NetworkProtocolNumber
		switch {
		case n > 0 && buf[0]>>4 == 4:
			proto = header.IPv4ProtocolNumber
		case n > 0 && buf[0]>>4 == 6:
			proto = header.IPv6ProtocolNumber
		default:
			l.dropBadVersion.Add(1)
			continue
		}
		l.mu.Lock()
		d := l.dispatcher
		l.mu.Unlock()
		if d == nil {
			l.dropDetached.Add(1)
			continue
		}
		// MakeWithData copies: buf is reused for the next datagram.
		pkt := gvstack.NewPacketBuffer(gvstack.PacketBufferOptions{Payload: buffer.MakeWithData(buf[:n])})
		d.DeliverNetworkPacket(proto, pkt)
		pkt.DecRef()
	}
}

// WritePackets implements stack.LinkEndpoint.WritePackets: one WriteTo per
// packet. A failed send is counted and the packet dropped, as a full
// socket buffer would drop it; TCP retransmits.
func (l *naiveLink) WritePackets(pkts gvstack.PacketBufferList) (int, tcpip.Error) {
	n := 0
	for _, pkt := range pkts.AsSlice() {
		v := pkt.ToView()
		if _, err := l.conn.WriteToUDPAddrPort(v.AsSlice(), l.peer); err != nil {
			l.dropWrite.Add(1)
		}
		v.Release()
		n++
	}
	return n, nil
}

// Attach implements stack.LinkEndpoint.Attach. The read goroutine starts on
// the first non-nil dispatcher and ends when Close closes the socket.
func (l *naiveLink) Attach(d gvstack.NetworkDispatcher) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.dispatcher = d
	if d != nil && !l.started {
		l.started = true
		l.done.Add(1)
		go l.readLoop()
	}
}

// IsAttached implements stack.LinkEndpoint.IsAttached.
func (l *naiveLink) IsAttached() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.dispatcher != nil
}

// MTU implements stack.LinkEndpoint.MTU.
func (l *naiveLink) MTU() uint32 { return l.mtu.Load() }

// SetMTU implements stack.LinkEndpoint.SetMTU.
func (l *naiveLink) SetMTU(mtu uint32) { l.mtu.Store(mtu) }

// MaxHeaderLength implements stack.LinkEndpoint.MaxHeaderLength: no link header.
func (*naiveLink) MaxHeaderLength() uint16 { return 0 }

// LinkAddress implements stack.LinkEndpoint.LinkAddress.
func (*naiveLink) LinkAddress() tcpip.LinkAddress { return "" }

// SetLinkAddress implements stack.LinkEndpoint.SetLinkAddress.
func (*naiveLink) SetLinkAddress(tcpip.LinkAddress) {}

// Capabilities implements stack.LinkEndpoint.Capabilities: none, so gVisor
// checksums every packet both ways, like wireguard-go's channel endpoint.
func (*naiveLink) Capabilities() gvstack.LinkEndpointCapabilities { return 0 }

// Wait implements stack.LinkEndpoint.Wait.
func (l *naiveLink) Wait() { l.done.Wait() }

// ARPHardwareType implements stack.LinkEndpoint.ARPHardwareType.
func (*naiveLink) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareNone }

// AddHeader implements stack.LinkEndpoint.AddHeader.
func (*naiveLink) AddHeader(*gvstack.PacketBuffer) {}

// ParseHeader implements stack.LinkEndpoint.ParseHeader.
func (*naiveLink) ParseHeader(*gvstack.PacketBuffer) bool { return true }

// SetOnCloseAction implements stack.LinkEndpoint.SetOnCloseAction.
func (*naiveLink) SetOnCloseAction(func()) {}

// Close implements stack.LinkEndpoint.Close: it closes the socket, which
// ends the read goroutine.
func (l *naiveLink) Close() { l.conn.Close() }

// naiveNet is one gVisor stack on a naiveLink, configured like
// wireguard-go's CreateNetTUN.
type naiveNet struct {
	s    *gvstack.Stack
	link *naiveLink
}

func newNaiveNet(tb testing.TB, addr netip.Addr, local, peer netip.AddrPort, mtu int) *naiveNet {
	tb.Helper()
	link := newNaiveLink(tb, local, peer, mtu)
	s := gvstack.New(gvstack.Options{
		NetworkProtocols:   []gvstack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
		TransportProtocols: []gvstack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4, icmp.NewProtocol6},
		HandleLocal:        true,
	})
	tb.Cleanup(func() {
		s.Close()
		link.Close()
		s.Wait()
		link.Wait()
	})
	sack := tcpip.TCPSACKEnabled(true)
	if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, &sack); err != nil {
		tb.Fatalf("naive stack: enable SACK: %v", err)
	}
	if err := s.CreateNIC(1, link); err != nil {
		tb.Fatalf("naive stack: CreateNIC: %v", err)
	}
	pa := tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber, AddressWithPrefix: tcpip.AddrFromSlice(addr.AsSlice()).WithPrefix()}
	if err := s.AddProtocolAddress(1, pa, gvstack.AddressProperties{}); err != nil {
		tb.Fatalf("naive stack: add %v: %v", addr, err)
	}
	s.AddRoute(tcpip.Route{Destination: header.IPv4EmptySubnet, NIC: 1})
	return &naiveNet{s: s, link: link}
}

func (n *naiveNet) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return nil, err
	}
	return gonet.DialContextTCP(ctx, n.s, tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFromSlice(ap.Addr().AsSlice()), Port: ap.Port()}, ipv4.ProtocolNumber)
}

func (n *naiveNet) Listen(network, address string) (net.Listener, error) {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return nil, err
	}
	return gonet.ListenTCP(n.s, tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFromSlice(ap.Addr().AsSlice()), Port: ap.Port()}, ipv4.ProtocolNumber)
}

// txPackets counts what the NIC sent, like txPackets for a stack.Stack.
func (n *naiveNet) txPackets() uint64 {
	return n.s.NICInfo()[1].Stats.Tx.Packets.Value()
}

// drops sums the link's drops of every reason.
func (n *naiveNet) drops() (notPeer, badVersion, detached, write uint64) {
	l := n.link
	return l.dropNotPeer.Load(), l.dropBadVersion.Load(), l.dropDetached.Load(), l.dropWrite.Load()
}

// BenchmarkBaselineNaiveNetstack is BenchmarkTCPStream over the naive
// link: two gVisor stacks in this process joined by loopback UDP, one
// 128 KiB-chunk TCP stream, at the udp transport's wire-compatible MTU
// (1472, a 1500-byte path minus the outer IPv4 and UDP headers) and at
// ipipstack's jumbo MTU (65000; the loopback MTU is 65536).
func BenchmarkBaselineNaiveNetstack(b *testing.B) {
	for _, mtu := range []int{1472, 65000} {
		b.Run(fmt.Sprintf("mtu=%d", mtu), func(b *testing.B) {
			pa, pb := freePort(b), freePort(b)
			a := newNaiveNet(b, netip.MustParseAddr("10.97.0.1"), pa, pb, mtu)
			bb := newNaiveNet(b, netip.MustParseAddr("10.97.0.2"), pb, pa, mtu)
			streamBench(b, a, bb, "10.97.0.2:5001", 1, a.txPackets)
			for _, n := range []*naiveNet{a, bb} {
				if np, bv, dt, w := n.drops(); np+bv+dt+w != 0 {
					b.Logf("naive link drops: %d not from the peer, %d not IPv4/IPv6, %d with no NIC attached, %d failed sends", np, bv, dt, w)
				}
			}
		})
	}
}
