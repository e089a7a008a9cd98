package endpoint

import (
	"encoding/binary"
	"net/netip"
	"sync"
	"testing"

	"github.com/ipipstack/ipipstack/endpoint/encap"
	"github.com/ipipstack/ipipstack/internal/pkttest"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
)

// fakeTransport is a Transport of a given framing whose receiver blocks
// until Close and whose writes are discarded: the fuzz target feeds
// datagrams to deliver itself.
type fakeTransport struct {
	framing Framing
	local   netip.AddrPort
	done    chan struct{}
	once    sync.Once
}

func (f *fakeTransport) Framing() Framing                       { return f.framing }
func (f *fakeTransport) Receivers() []Receiver                  { return []Receiver{f} }
func (f *fakeTransport) WriteBatch(msgs []Message) (int, error) { return len(msgs), nil }
func (f *fakeTransport) LocalAddr() netip.AddrPort              { return f.local }
func (f *fakeTransport) Close() error                           { f.once.Do(func() { close(f.done) }); return nil }
func (f *fakeTransport) ReadBatch([]Message) (int, error)       { <-f.done; return 0, ErrClosed }

// checkingDispatcher checks each packet the endpoint delivers and passes it
// on to a real gVisor NIC.
type checkingDispatcher struct {
	t         *testing.T
	next      stack.NetworkDispatcher
	delivered int
}

func (d *checkingDispatcher) DeliverNetworkPacket(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	d.delivered++
	b := pkt.ToView().AsSlice()
	switch proto {
	case ipv4.ProtocolNumber:
		h := header.IPv4(b)
		if !h.IsValid(len(b)) || int(h.TotalLength()) != len(b) || !h.IsChecksumValid() {
			d.t.Fatalf("delivered an invalid IPv4 packet %x", b)
		}
		if encap.IsMartianSource(netip.AddrFrom4(h.SourceAddress().As4())) {
			d.t.Fatalf("delivered a martian source %v", h.SourceAddress())
		}
	case ipv6.ProtocolNumber:
		h := header.IPv6(b)
		if !h.IsValid(len(b)) || int(h.PayloadLength())+header.IPv6MinimumSize != len(b) {
			d.t.Fatalf("delivered an invalid IPv6 packet %x", b)
		}
		if encap.IsMartianSource(netip.AddrFrom16(h.SourceAddress().As16())) {
			d.t.Fatalf("delivered a martian source %v", h.SourceAddress())
		}
	default:
		d.t.Fatalf("delivered network protocol %d", proto)
	}
	d.next.DeliverNetworkPacket(proto, pkt)
}

func (d *checkingDispatcher) DeliverLinkPacket(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	d.next.DeliverLinkPacket(proto, pkt)
}

// fuzzRig is an Endpoint of one framing attached to a real gVisor stack.
type fuzzRig struct {
	e      *Endpoint
	remote netip.AddrPort
	disp   stack.NetworkDispatcher
}

var (
	outer4L, outer4R = netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	outer6L, outer6R = netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8::2")
	inner4L, inner4R = netip.MustParseAddr("10.99.0.1"), netip.MustParseAddr("10.99.0.2")
	inner6L, inner6R = netip.MustParseAddr("fd99::1"), netip.MustParseAddr("fd99::2")
)

func newFuzzRig(tb testing.TB, framing Framing) *fuzzRig {
	tb.Helper()
	local, remote := netip.AddrPortFrom(outer4L, 4700), netip.AddrPortFrom(outer4R, 4701)
	switch framing {
	case FramingRawIPv4:
		local, remote = netip.AddrPortFrom(outer4L, 0), netip.AddrPortFrom(outer4R, 0)
	case FramingRawIPv6:
		local, remote = netip.AddrPortFrom(outer6L, 0), netip.AddrPortFrom(outer6R, 0)
	}
	return newFuzzRigOn(tb, &fakeTransport{framing: framing, local: local, done: make(chan struct{})}, remote)
}

// newFuzzRigOn is newFuzzRig on a given transport.
func newFuzzRigOn(tb testing.TB, tr Transport, remote netip.AddrPort) *fuzzRig {
	tb.Helper()
	e, err := New(Options{Transport: tr, Remote: remote, AllowedSources: []netip.Prefix{
		netip.MustParsePrefix("10.99.0.0/24"), netip.MustParsePrefix("fd99::/64")}})
	if err != nil {
		tb.Fatal(err)
	}
	attachGVisor(tb, e)
	e.mu.RLock()
	disp := e.dispatcher
	e.mu.RUnlock()
	if disp == nil {
		tb.Fatal("endpoint not attached")
	}
	return &fuzzRig{e: e, remote: remote, disp: disp}
}

// attachGVisor makes e the only NIC of a gVisor stack at 10.99.0.1/24 and
// fd99::1/64 whose routes all point at it, closed when tb ends.
func attachGVisor(tb testing.TB, e *Endpoint) *stack.Stack {
	tb.Helper()
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4, icmp.NewProtocol6},
	})
	if terr := s.CreateNIC(1, e); terr != nil {
		tb.Fatal(terr)
	}
	for _, a := range []tcpip.ProtocolAddress{
		{Protocol: ipv4.ProtocolNumber, AddressWithPrefix: tcpip.AddressWithPrefix{Address: tcpip.AddrFrom4(inner4L.As4()), PrefixLen: 24}},
		{Protocol: ipv6.ProtocolNumber, AddressWithPrefix: tcpip.AddressWithPrefix{Address: tcpip.AddrFrom16(inner6L.As16()), PrefixLen: 64}},
	} {
		if terr := s.AddProtocolAddress(1, a, stack.AddressProperties{}); terr != nil {
			tb.Fatal(terr)
		}
	}
	s.SetRouteTable([]tcpip.Route{
		{Destination: header.IPv4EmptySubnet, NIC: 1},
		{Destination: header.IPv6EmptySubnet, NIC: 1},
	})
	// gVisor waits for link endpoints but does not close them: close ours
	// first, as stack.Stack.Close does.
	tb.Cleanup(func() { e.Close(); s.Close(); s.Wait() })
	return s
}

// rxDrops sums the drop reasons the receive path can count.
func rxDrops(s *Stats) uint64 {
	n := s.DropTotal()
	for _, r := range []encap.Reason{encap.TooBig, encap.NotIP, encap.SendError} {
		n -= s.Drops[r]
	}
	return n
}

// Seed packets, built by hand so that each byte is deliberate.

// seedIPv4 is an IPv4 header with flags/offset frag around payload.
func seedIPv4(src, dst netip.Addr, proto uint8, tos uint8, frag uint16, payload []byte) []byte {
	h := make([]byte, 20, 20+len(payload))
	h[0], h[1] = 0x45, tos
	binary.BigEndian.PutUint16(h[2:], uint16(20+len(payload)))
	binary.BigEndian.PutUint16(h[4:], 0x1234)
	binary.BigEndian.PutUint16(h[6:], frag)
	h[8], h[9] = 64, proto
	s, d := src.As4(), dst.As4()
	copy(h[12:], s[:])
	copy(h[16:], d[:])
	binary.BigEndian.PutUint16(h[10:], csum(h, 0))
	return append(h, payload...)
}

func seedIPv6(src, dst netip.Addr, next uint8, payload []byte) []byte {
	h := make([]byte, 40, 40+len(payload))
	h[0] = 0x60
	binary.BigEndian.PutUint16(h[4:], uint16(len(payload)))
	h[6], h[7] = next, 64
	s, d := src.As16(), dst.As16()
	copy(h[8:], s[:])
	copy(h[24:], d[:])
	return append(h, payload...)
}

func seedTCPSyn(src, dst netip.Addr) []byte {
	t := make([]byte, 24)
	binary.BigEndian.PutUint16(t[0:], 40000)
	binary.BigEndian.PutUint16(t[2:], 80)
	binary.BigEndian.PutUint32(t[4:], 1)
	t[12], t[13] = 6<<4, 0x02 // data offset 6 words, SYN
	binary.BigEndian.PutUint16(t[14:], 65535)
	t[20], t[21] = 2, 4 // MSS option
	binary.BigEndian.PutUint16(t[22:], 1400)
	binary.BigEndian.PutUint16(t[16:], csum(t, pseudo(src, dst, 6, len(t))))
	return t
}

func seedUDP(src, dst netip.Addr, payload string) []byte {
	u := make([]byte, 8+len(payload))
	binary.BigEndian.PutUint16(u[0:], 5353)
	binary.BigEndian.PutUint16(u[2:], 53)
	binary.BigEndian.PutUint16(u[4:], uint16(len(u)))
	copy(u[8:], payload)
	binary.BigEndian.PutUint16(u[6:], csum(u, pseudo(src, dst, 17, len(u))))
	return u
}

// seedOuter4 wraps inner in an outer IPv4 header of protocol proto.
func seedOuter4(proto uint8, tos uint8, inner []byte) []byte {
	return seedIPv4(outer4R, outer4L, proto, tos, 0x4000, inner)
}

type fuzzSeed struct {
	framing  uint8
	fromPeer bool
	proto    uint8 // outer next header for FramingRawIPv6
	tos      uint8
	hasTOS   bool
	data     []byte
}

func fuzzSeeds() []fuzzSeed {
	tcp4 := seedIPv4(inner4R, inner4L, 6, 0, 0x4000, seedTCPSyn(inner4R, inner4L))
	udp6 := seedIPv6(inner6R, inner6L, 17, seedUDP(inner6R, inner6L, "hello"))
	udp4 := seedIPv4(inner4R, inner4L, 17, 0x02, 0, seedUDP(inner4R, inner4L, "ect(0)"))
	// The first fragment of a UDP datagram (MF set), and a later one.
	frag4a := seedIPv4(inner4R, inner4L, 17, 0, 0x2000, seedUDP(inner4R, inner4L, "first fragment..")[:16])
	frag4b := seedIPv4(inner4R, inner4L, 17, 0, 0x0002, []byte("tail of datagram"))
	fh := []byte{17, 0, 0, 1, 0, 0, 0, 42} // next UDP, offset 0, M, ID 42
	frag6 := seedIPv6(inner6R, inner6L, 44, append(fh, seedUDP(inner6R, inner6L, "frag6")...))
	icmp6 := seedIPv6(inner6R, inner6L, 58, []byte{128, 0, 0, 0, 0, 1, 0, 1})
	return []fuzzSeed{
		{uint8(FramingUDP), true, 0, 0, false, tcp4},
		{uint8(FramingUDP), true, 0, 0, false, udp6},
		{uint8(FramingUDP), true, 0, 0x03, true, udp4}, // outer CE over ECT(0)
		{uint8(FramingUDP), true, 0, 0x03, true, tcp4}, // outer CE over Not-ECT: dropped
		{uint8(FramingUDP), true, 0, 0, false, frag4a},
		{uint8(FramingUDP), true, 0, 0, false, frag4b},
		{uint8(FramingUDP), true, 0, 0, false, frag6},
		{uint8(FramingUDP), true, 0, 0, false, icmp6},
		{uint8(FramingUDP), false, 0, 0, false, tcp4},
		{uint8(FramingUDP), true, 0, 0, false, nil},
		{uint8(FramingRawIPv4), true, 0, 0, false, seedOuter4(4, 0, tcp4)},
		{uint8(FramingRawIPv4), true, 0, 0, false, seedOuter4(41, 0, udp6)},
		{uint8(FramingRawIPv4), true, 0, 0, false, seedOuter4(4, 0, udp6)}, // version mismatch
		{uint8(FramingRawIPv4), true, 0, 0, false, seedIPv4(outer4R, outer4L, 4, 0, 0x2000, tcp4)},
		{uint8(FramingRawIPv4), true, 0, 0, false, seedOuter4(47, 0, tcp4)},
		{uint8(FramingRawIPv6), true, 4, 0, false, tcp4},
		{uint8(FramingRawIPv6), true, 41, 0x01, true, udp6},
		{uint8(FramingRawIPv6), true, 41, 0, false, tcp4},
	}
}

// FuzzDeliver feeds one received datagram to an endpoint of each framing,
// through deliver as the receive loop does, with a real gVisor stack
// behind it. Every datagram must be delivered or counted under exactly one
// drop reason, a delivered packet must have a valid IP header and a
// non-martian source, and nothing may panic.
func FuzzDeliver(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add(s.framing, s.fromPeer, s.proto, s.tos, s.hasTOS, s.data)
	}
	rigs := map[Framing]*fuzzRig{}
	for _, fr := range []Framing{FramingUDP, FramingRawIPv4, FramingRawIPv6} {
		rigs[fr] = newFuzzRig(f, fr)
	}
	buf := make([]byte, 1<<16)
	f.Fuzz(func(t *testing.T, framing uint8, fromPeer bool, proto, tos uint8, hasTOS bool, data []byte) {
		fr := Framing(framing % 3)
		r := rigs[fr]
		n := copy(buf, data)
		m := Message{Buffers: [][]byte{buf}, N: n, Addr: r.remote, TOS: tos, HasTOS: hasTOS, Proto: proto}
		if !fromPeer {
			m.Addr = netip.AddrPortFrom(m.Addr.Addr(), m.Addr.Port()+1)
			if fr != FramingUDP {
				a := m.Addr.Addr().Next()
				m.Addr = netip.AddrPortFrom(a, 0)
			}
		}
		before := r.e.Stats()
		d := &checkingDispatcher{t: t, next: r.disp}
		b := directRX(d)
		r.e.deliver(b, &m)
		r.e.deliverPending(b)
		after := r.e.Stats()
		rx := after.RxPackets - before.RxPackets
		drops := rxDrops(&after) - rxDrops(&before)
		if rx+drops != 1 || uint64(d.delivered) != rx {
			t.Fatalf("deliver(%v, %x): rx +%d, drops +%d (%v -> %v), delivered %d; want exactly one of rx and drops, and rx = delivered",
				fr, data, rx, drops, before.Drops, after.Drops, d.delivered)
		}
	})
}

// The reference checksum the tests check packets against.
var (
	csum   = pkttest.Checksum
	pseudo = pkttest.PseudoSum
)
