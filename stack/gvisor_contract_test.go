package stack

// gVisor contract tests: one test per behaviour of the pinned gVisor that
// this module relies on, run against bare gVisor stacks (no ipipstack code
// in the data path), so that a gVisor upgrade that changes one fails here
// first and says which assumption broke. Each test names the code that
// relies on the behaviour. Tests of gVisor bugs that stack/forward.go works
// around assert the bug: when gVisor fixes one, its test fails and says
// which workaround to delete.
//
// The rigs: gvcLink, a gVisor channel endpoint whose capabilities a test
// may change between packets; gvcNet, a bare gVisor stack on such links;
// gvcPair, two of them joined by goroutines that copy every packet across
// and keep the ones the first one sent. Helpers are prefixed gvc (gVisor
// contract) to keep out of the way of the package's other tests.

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/internal/pkttest"
	"github.com/ipipstack/ipipstack/internal/transfer"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/faketime"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	gvstack "gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/stack/gro"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// gvcLink is a gVisor channel endpoint whose capabilities can change
// between packets, and whose GSOMaxSize can be chosen.
type gvcLink struct {
	*channel.Endpoint
	caps   atomic.Uint64
	gsoMax uint32 // 0: channel's own
}

var _ gvstack.GSOEndpoint = (*gvcLink)(nil)

func newGVCLink(mtu uint32, caps gvstack.LinkEndpointCapabilities) *gvcLink {
	l := &gvcLink{Endpoint: channel.New(512, mtu, "")}
	l.caps.Store(uint64(caps))
	return l
}

// Capabilities implements stack.LinkEndpoint.Capabilities.
func (l *gvcLink) Capabilities() gvstack.LinkEndpointCapabilities {
	return gvstack.LinkEndpointCapabilities(l.caps.Load())
}

// GSOMaxSize implements stack.GSOEndpoint.GSOMaxSize.
func (l *gvcLink) GSOMaxSize() uint32 {
	if l.gsoMax != 0 {
		return l.gsoMax
	}
	return l.Endpoint.GSOMaxSize()
}

// inject delivers the IP packet b to the NIC above l. The stack verifies
// checksums by l's capabilities of the moment; validated is what the link
// claims in pkt.RXChecksumValidated.
func (l *gvcLink) inject(b []byte, validated bool) {
	pkt := gvstack.NewPacketBuffer(gvstack.PacketBufferOptions{Payload: buffer.MakeWithData(b)})
	pkt.RXChecksumValidated = validated
	l.InjectInbound(gvcNetProto(b), pkt)
	pkt.DecRef()
}

// written returns the bytes of every packet the stack has written to l
// so far.
func (l *gvcLink) written() [][]byte {
	var out [][]byte
	for pkt := l.Read(); pkt != nil; pkt = l.Read() {
		out = append(out, gvcBytes(pkt))
		pkt.DecRef()
	}
	return out
}

func gvcBytes(pkt *gvstack.PacketBuffer) []byte {
	v := pkt.ToView()
	defer v.Release()
	return bytes.Clone(v.AsSlice())
}

func gvcNetProto(b []byte) tcpip.NetworkProtocolNumber {
	if b[0]>>4 == 6 {
		return ipv6.ProtocolNumber
	}
	return ipv4.ProtocolNumber
}

// newGVCStack returns a bare gVisor stack with IPv4, IPv6, TCP, UDP and
// ICMP, on clock (nil: the real one), closed at the end of the test.
func newGVCStack(t testing.TB, clock tcpip.Clock) *gvstack.Stack {
	t.Helper()
	s := gvstack.New(gvstack.Options{
		NetworkProtocols:   []gvstack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
		TransportProtocols: []gvstack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4, icmp.NewProtocol6},
		Clock:              clock,
	})
	t.Cleanup(func() {
		s.Close()
		s.Wait()
	})
	return s
}

// gvcAddNIC adds link to s as NIC id with the given addresses, and a route
// to each address's subnet through it.
func gvcAddNIC(t testing.TB, s *gvstack.Stack, id tcpip.NICID, link gvstack.LinkEndpoint, prefixes ...string) {
	t.Helper()
	if err := s.CreateNIC(id, link); err != nil {
		t.Fatalf("CreateNIC(%d): %v", id, err)
	}
	for _, p := range prefixes {
		pfx := netip.MustParsePrefix(p)
		proto := ipv4.ProtocolNumber
		if pfx.Addr().Is6() {
			proto = ipv6.ProtocolNumber
		}
		pa := tcpip.ProtocolAddress{Protocol: proto, AddressWithPrefix: tcpip.AddressWithPrefix{
			Address: tcpipAddr(pfx.Addr()), PrefixLen: pfx.Bits()}}
		if err := s.AddProtocolAddress(id, pa, gvstack.AddressProperties{}); err != nil {
			t.Fatalf("AddProtocolAddress(%d, %v): %v", id, pfx, err)
		}
		s.AddRoute(tcpip.Route{Destination: subnet(pfx), NIC: id})
	}
}

// gvcUDPListener returns a UDP endpoint of s bound to addr.
func gvcUDPListener(t testing.TB, s *gvstack.Stack, addr netip.AddrPort) tcpip.Endpoint {
	t.Helper()
	proto := ipv4.ProtocolNumber
	if addr.Addr().Is6() {
		proto = ipv6.ProtocolNumber
	}
	var wq waiter.Queue
	ep, err := s.NewEndpoint(udp.ProtocolNumber, proto, &wq)
	if err != nil {
		t.Fatalf("NewEndpoint(udp): %v", err)
	}
	t.Cleanup(ep.Close)
	if err := ep.Bind(tcpip.FullAddress{Addr: tcpipAddr(addr.Addr()), Port: addr.Port()}); err != nil {
		t.Fatalf("Bind(%v): %v", addr, err)
	}
	return ep
}

// gvcReadUDP returns the payload of the datagram waiting on ep, or nil
// if there is none.
func gvcReadUDP(t testing.TB, ep tcpip.Endpoint) []byte {
	t.Helper()
	var b bytes.Buffer
	if _, err := ep.Read(&b, tcpip.ReadOptions{}); err != nil {
		if _, ok := err.(*tcpip.ErrWouldBlock); ok {
			return nil
		}
		t.Fatalf("Read: %v", err)
	}
	return b.Bytes()
}

// Packet builders. Checksums come from pkttest, not from gVisor.

const (
	gvcProtoTCP = uint8(header.TCPProtocolNumber)
	gvcProtoUDP = uint8(header.UDPProtocolNumber)
)

// gvcIPv4 returns an IPv4 packet without options around payload. off is
// the fragment offset in bytes.
func gvcIPv4(src, dst netip.Addr, proto, ttl uint8, id uint16, df, more bool, off int, payload []byte) []byte {
	b := make([]byte, header.IPv4MinimumSize+len(payload))
	var flags uint8
	if df {
		flags |= header.IPv4FlagDontFragment
	}
	if more {
		flags |= header.IPv4FlagMoreFragments
	}
	header.IPv4(b).Encode(&header.IPv4Fields{
		TotalLength: uint16(len(b)), ID: id, Flags: flags, FragmentOffset: uint16(off),
		TTL: ttl, Protocol: proto, SrcAddr: tcpipAddr(src), DstAddr: tcpipAddr(dst),
	})
	binary.BigEndian.PutUint16(b[10:], pkttest.Checksum(b[:header.IPv4MinimumSize], 0))
	copy(b[header.IPv4MinimumSize:], payload)
	return b
}

// gvcIPv6 returns an IPv6 packet around payload, with a Fragment header
// (RFC 8200 §4.5) if frag.
func gvcIPv6(src, dst netip.Addr, proto uint8, frag bool, id uint32, more bool, off int, payload []byte) []byte {
	ext := 0
	if frag {
		ext = header.IPv6FragmentExtHdrLength
	}
	b := make([]byte, header.IPv6MinimumSize+ext+len(payload))
	nh := proto
	if frag {
		nh = uint8(header.IPv6FragmentExtHdrIdentifier)
		fh := b[header.IPv6MinimumSize:]
		fh[0] = proto
		fo := uint16(off)
		if more {
			fo |= 1
		}
		binary.BigEndian.PutUint16(fh[2:], fo)
		binary.BigEndian.PutUint32(fh[4:], id)
	}
	header.IPv6(b).Encode(&header.IPv6Fields{
		PayloadLength: uint16(ext + len(payload)), TransportProtocol: tcpip.TransportProtocolNumber(nh),
		HopLimit: 64, SrcAddr: tcpipAddr(src), DstAddr: tcpipAddr(dst),
	})
	copy(b[header.IPv6MinimumSize+ext:], payload)
	return b
}

// gvcIP returns an unfragmented IPv4 or IPv6 packet (by src's family).
func gvcIP(src, dst netip.Addr, proto uint8, payload []byte) []byte {
	if src.Is4() {
		return gvcIPv4(src, dst, proto, 64, 1, false, false, 0, payload)
	}
	return gvcIPv6(src, dst, proto, false, 0, false, 0, payload)
}

// gvcUDP returns a UDP header and data with a correct checksum.
func gvcUDP(src, dst netip.AddrPort, data []byte) []byte {
	b := make([]byte, header.UDPMinimumSize+len(data))
	binary.BigEndian.PutUint16(b[0:], src.Port())
	binary.BigEndian.PutUint16(b[2:], dst.Port())
	binary.BigEndian.PutUint16(b[4:], uint16(len(b)))
	copy(b[header.UDPMinimumSize:], data)
	c := pkttest.Checksum(b, pkttest.PseudoSum(src.Addr(), dst.Addr(), gvcProtoUDP, len(b)))
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(b[6:], c)
	return b
}

// gvcTCP returns a 20-byte TCP header and data with a correct checksum.
func gvcTCP(src, dst netip.AddrPort, seq, ack uint32, flags uint8, data []byte) []byte {
	b := make([]byte, header.TCPMinimumSize+len(data))
	header.TCP(b).Encode(&header.TCPFields{
		SrcPort: src.Port(), DstPort: dst.Port(), SeqNum: seq, AckNum: ack,
		DataOffset: header.TCPMinimumSize, Flags: header.TCPFlags(flags), WindowSize: 65535,
	})
	copy(b[header.TCPMinimumSize:], data)
	binary.BigEndian.PutUint16(b[header.TCPChecksumOffset:], pkttest.Checksum(b, pkttest.PseudoSum(src.Addr(), dst.Addr(), gvcProtoTCP, len(b))))
	return b
}

// gvcPattern is n bytes that differ from one offset to the next.
func gvcPattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7)
	}
	return b
}

// gvcFamily is what a test needs to run on IPv4 and on IPv6.
type gvcFamily struct {
	name        string
	local, peer netip.Addr // the stack's address and a host on its link
	prefix      string     // local with its prefix length
	proto       tcpip.NetworkProtocolNumber
	l3          int // IP header length
	fragmentPkt func(src, dst netip.Addr, id uint32, more bool, off int, payload []byte) []byte
	gsoType     gvstack.GSOType
	peerPrefix  string
}

var gvcFamilies = []gvcFamily{
	{
		name: "ipv4", local: netip.MustParseAddr("10.0.0.1"), peer: netip.MustParseAddr("10.0.0.2"),
		prefix: "10.0.0.1/24", peerPrefix: "10.0.0.2/24", proto: ipv4.ProtocolNumber, l3: header.IPv4MinimumSize,
		fragmentPkt: func(src, dst netip.Addr, id uint32, more bool, off int, payload []byte) []byte {
			return gvcIPv4(src, dst, gvcProtoUDP, 64, uint16(id), false, more, off, payload)
		},
		gsoType: gvstack.GSOTCPv4,
	},
	{
		name: "ipv6", local: netip.MustParseAddr("fd00::1"), peer: netip.MustParseAddr("fd00::2"),
		prefix: "fd00::1/64", peerPrefix: "fd00::2/64", proto: ipv6.ProtocolNumber, l3: header.IPv6MinimumSize,
		fragmentPkt: func(src, dst netip.Addr, id uint32, more bool, off int, payload []byte) []byte {
			return gvcIPv6(src, dst, gvcProtoUDP, true, id, more, off, payload)
		},
		gsoType: gvstack.GSOTCPv6,
	},
}

// TestGVisorNICRXChecksumFromCapabilities: the NIC reads its link
// endpoint's Capabilities() for every packet delivered to it and sets
// pkt.RXChecksumValidated from CapabilityRXChecksumOffload, overwriting
// whatever the link endpoint set (nic.go DeliverNetworkPacket). So an
// endpoint that declares the offload for one packet and not for the next
// gets the stack to verify exactly the second.
//
// Relied on by the endpoint's receive checksum model: endpoint/offload.go
// checksumFixer and endpoint/coalesce.go canCoalesce decide per packet from
// the endpoint's Capabilities() whether the stack will verify checksums,
// and nothing the endpoint sets in RXChecksumValidated survives the NIC
// (nor does stack/forward.go forward4's copy of it onto the pieces it
// cuts).
func TestGVisorNICRXChecksumFromCapabilities(t *testing.T) {
	for _, fam := range gvcFamilies {
		t.Run(fam.name, func(t *testing.T) {
			s := newGVCStack(t, nil)
			link := newGVCLink(1500, 0)
			gvcAddNIC(t, s, 1, link, fam.prefix)
			dst, src := netip.AddrPortFrom(fam.local, 7), netip.AddrPortFrom(fam.peer, 9)
			ep := gvcUDPListener(t, s, dst)

			data := []byte("a datagram with a wrong checksum")
			pkt := gvcIP(src.Addr(), dst.Addr(), gvcProtoUDP, gvcUDP(src, dst, data))
			pkt[fam.l3+6] ^= 0x5a // the UDP checksum, still non-zero
			errs := s.Stats().UDP.ChecksumErrors

			// Offload declared, the link claims "not validated": not verified.
			link.caps.Store(uint64(gvstack.CapabilityRXChecksumOffload))
			link.inject(pkt, false)
			if got := gvcReadUDP(t, ep); !bytes.Equal(got, data) || errs.Value() != 0 {
				t.Errorf("with CapabilityRXChecksumOffload and RXChecksumValidated false: read %q, %d checksum errors; "+
					"want the datagram delivered unverified, 0 errors: the NIC no longer takes RXChecksumValidated from Capabilities()",
					got, errs.Value())
			}
			// No offload, the link claims "validated": verified and dropped.
			link.caps.Store(0)
			link.inject(pkt, true)
			if got := gvcReadUDP(t, ep); got != nil || errs.Value() != 1 {
				t.Errorf("without CapabilityRXChecksumOffload and RXChecksumValidated true: read %q, %d checksum errors; "+
					"want nothing delivered, 1 error: the NIC no longer re-reads Capabilities() per packet or keeps the link's RXChecksumValidated",
					got, errs.Value())
			}
		})
	}
}

// TestGVisorReassemblyInheritsFirstFragmentRXChecksum: a reassembled IPv4
// or IPv6 datagram is a clone of the packet of its fragment at offset 0
// (fragmentation reassembler.go clones holes[0].pkt after sorting by
// offset), so it inherits that fragment's RXChecksumValidated, whichever
// fragment arrived first or last and whatever the others had.
//
// Relied on by the endpoint's receive checksum model: a fragmented
// datagram is verified by the stack exactly when the NIC did not mark its
// first fragment validated (see TestGVisorNICRXChecksumFromCapabilities).
func TestGVisorReassemblyInheritsFirstFragmentRXChecksum(t *testing.T) {
	tests := []struct {
		name         string
		lastFirst    bool // the fragment at the end arrives before the one at offset 0
		firstOffload bool // offload declared for the fragment at offset 0
		lastOffload  bool
	}{
		{"offset 0 first, with offload", false, true, false},
		{"offset 0 first, without offload", false, false, true},
		{"offset 0 last, with offload", true, true, false},
		{"offset 0 last, without offload", true, false, true},
	}
	for _, fam := range gvcFamilies {
		for i, tt := range tests {
			t.Run(fam.name+"/"+tt.name, func(t *testing.T) {
				s := newGVCStack(t, nil)
				link := newGVCLink(1500, 0)
				gvcAddNIC(t, s, 1, link, fam.prefix)
				dst, src := netip.AddrPortFrom(fam.local, 7), netip.AddrPortFrom(fam.peer, 9)
				ep := gvcUDPListener(t, s, dst)

				data := gvcPattern(300, byte(i))
				u := gvcUDP(src, dst, data)
				u[6] ^= 0x5a // a wrong, non-zero checksum
				first := fam.fragmentPkt(src.Addr(), dst.Addr(), uint32(100+i), true, 0, u[:160])
				last := fam.fragmentPkt(src.Addr(), dst.Addr(), uint32(100+i), false, 160, u[160:])
				caps := func(offload bool) uint64 {
					if offload {
						return uint64(gvstack.CapabilityRXChecksumOffload)
					}
					return 0
				}
				order := []struct {
					b       []byte
					offload bool
				}{{first, tt.firstOffload}, {last, tt.lastOffload}}
				if tt.lastFirst {
					order[0], order[1] = order[1], order[0]
				}
				for _, f := range order {
					link.caps.Store(caps(f.offload))
					link.inject(f.b, f.offload)
				}
				got, errs := gvcReadUDP(t, ep), s.Stats().UDP.ChecksumErrors.Value()
				if tt.firstOffload {
					if !bytes.Equal(got, data) || errs != 0 {
						t.Errorf("read %d bytes, %d checksum errors; want the 300-byte datagram delivered unverified: "+
							"the reassembled datagram no longer inherits RXChecksumValidated (true) from its fragment at offset 0", len(got), errs)
					}
				} else if got != nil || errs != 1 {
					t.Errorf("read %d bytes, %d checksum errors; want nothing delivered, 1 error: "+
						"the reassembled datagram no longer inherits RXChecksumValidated (false) from its fragment at offset 0", len(got), errs)
				}
			})
		}
	}
}

// gvcRecorder is a NetworkDispatcher that keeps what it is handed.
type gvcRecorder struct {
	pkts      [][]byte
	validated []bool
}

func (r *gvcRecorder) DeliverNetworkPacket(_ tcpip.NetworkProtocolNumber, pkt *gvstack.PacketBuffer) {
	r.pkts = append(r.pkts, gvcBytes(pkt))
	r.validated = append(r.validated, pkt.RXChecksumValidated)
}

func (r *gvcRecorder) DeliverLinkPacket(tcpip.NetworkProtocolNumber, *gvstack.PacketBuffer) {}

// TestGVisorGROMerge: gVisor's GRO (stack/gro) updates only the IP length
// of a merged packet (IPv4 total length, IPv6 payload length): the IPv4
// header checksum and the TCP checksum stay the first segment's. It
// verifies the checksums of a segment before merging it unless the segment
// has RXChecksumValidated set, and flushes one that fails unmerged.
//
// Relied on by endpoint/offload.go: checksumFixer recomputes both checksums
// of a merged packet where the stack will verify them, and trusts GRO to
// have verified each segment; endpoint/coalesce.go merger.packet copies
// the same convention (only lengths change, TCP checksum the first's).
func TestGVisorGROMerge(t *testing.T) {
	const n = 100 // payload of each segment
	tests := []struct {
		name       string
		validated  bool // RXChecksumValidated of the segments
		corrupt    bool // their TCP checksums are wrong
		wantMerged bool
	}{
		{"verified by GRO", false, false, true},
		{"marked validated, wrong checksums", true, true, true},
		{"not validated, wrong checksums", false, true, false},
	}
	for _, fam := range gvcFamilies {
		for _, tt := range tests {
			t.Run(fam.name+"/"+tt.name, func(t *testing.T) {
				src, dst := netip.AddrPortFrom(fam.peer, 1000), netip.AddrPortFrom(fam.local, 2000)
				d1, d2 := gvcPattern(n, 1), gvcPattern(n, 2)
				seg := func(seq uint32, d []byte) []byte {
					p := gvcIP(src.Addr(), dst.Addr(), gvcProtoTCP, gvcTCP(src, dst, seq, 77, uint8(header.TCPFlagAck), d))
					if tt.corrupt {
						p[fam.l3+header.TCPChecksumOffset] ^= 0x5a
					}
					return p
				}
				s1, s2 := seg(1000, d1), seg(1000+n, d2)
				rec := &gvcRecorder{}
				var g gro.GRO
				g.Dispatcher = rec
				g.Init(true)
				for _, b := range [][]byte{s1, s2} {
					pkt := gvstack.NewPacketBuffer(gvstack.PacketBufferOptions{Payload: buffer.MakeWithData(b)})
					pkt.NetworkProtocolNumber = fam.proto
					pkt.RXChecksumValidated = tt.validated
					g.Enqueue(pkt)
					pkt.DecRef()
				}
				g.Flush()

				if !tt.wantMerged {
					if len(rec.pkts) != 2 || !bytes.Equal(rec.pkts[0], s1) || !bytes.Equal(rec.pkts[1], s2) {
						t.Fatalf("GRO delivered %d packets; want the 2 segments with wrong checksums as they came: "+
							"GRO no longer verifies segments that are not RXChecksumValidated", len(rec.pkts))
					}
					return
				}
				if len(rec.pkts) != 1 {
					t.Fatalf("GRO delivered %d packets, want 1 merged: GRO no longer merges (or, with wrong checksums, "+
						"no longer skips verifying segments marked RXChecksumValidated)", len(rec.pkts))
				}
				got := rec.pkts[0]
				want := append(bytes.Clone(s1), d2...)
				// Only the length changes.
				if fam.proto == ipv4.ProtocolNumber {
					binary.BigEndian.PutUint16(want[2:], uint16(len(want)))
				} else {
					binary.BigEndian.PutUint16(want[4:], uint16(len(want)-header.IPv6MinimumSize))
				}
				if !bytes.Equal(got, want) {
					t.Errorf("merged packet\n got %x\nwant %x\n(the first segment with the IP length updated, "+
						"IPv4 header checksum and TCP checksum left as they were): GRO now rewrites more of a merged packet; "+
						"review endpoint/offload.go checksumFixer and endpoint/coalesce.go merger.packet", got, want)
				}
				if !rec.validated[0] {
					t.Error("merged packet not RXChecksumValidated")
				}
			})
		}
	}
}

// gvcPair is two bare gVisor stacks, a and b, each on one gvcLink, joined
// by goroutines that copy every packet across; the packets a writes are
// kept (fromA) with their GSO options.
type gvcPair struct {
	fam      gvcFamily
	a, b     *gvstack.Stack
	la, lb   *gvcLink
	mu       sync.Mutex
	fromA    [][]byte
	fromAGSO []gvstack.GSO
}

func newGVCPair(t *testing.T, fam gvcFamily, la, lb *gvcLink) *gvcPair {
	t.Helper()
	p := &gvcPair{fam: fam, a: newGVCStack(t, nil), b: newGVCStack(t, nil), la: la, lb: lb}
	gvcAddNIC(t, p.a, 1, la, fam.prefix)
	gvcAddNIC(t, p.b, 1, lb, fam.peerPrefix)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	pump := func(from, to *gvcLink, keep bool) {
		defer wg.Done()
		for {
			pkt := from.ReadContext(ctx)
			if pkt == nil {
				return
			}
			b := gvcBytes(pkt)
			if keep {
				p.mu.Lock()
				p.fromA = append(p.fromA, b)
				p.fromAGSO = append(p.fromAGSO, pkt.GSOOptions)
				p.mu.Unlock()
			}
			pkt.DecRef()
			to.inject(b, false)
		}
	}
	wg.Add(2)
	go pump(la, lb, true)
	go pump(lb, la, false)
	// Registered after the stacks' cleanups, so it runs first.
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	return p
}

// transferTCP sends n bytes from a to b over TCP and checks that b
// received them intact (internal/transfer).
func (p *gvcPair) transferTCP(t *testing.T, n int) {
	t.Helper()
	addr := tcpip.FullAddress{NIC: 1, Addr: tcpipAddr(p.fam.peer), Port: 80}
	l, err := gonet.ListenTCP(p.b, addr, p.fam.proto)
	if err != nil {
		t.Fatalf("ListenTCP: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second) // a hang fails, not a slow run
	defer cancel()
	dial := func(context.Context) (net.Conn, error) { return gonet.DialTCP(p.a, addr, p.fam.proto) }
	if _, err := transfer.Run(ctx, l, dial, int64(n), nil); err != nil {
		t.Fatalf("a to b: %v", err)
	}
}

// sent returns the packets a has sent so far, with their GSO options.
func (p *gvcPair) sent() ([][]byte, []gvstack.GSO) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([][]byte(nil), p.fromA...), append([]gvstack.GSO(nil), p.fromAGSO...)
}

// gvcL4 returns the transport protocol and bytes of the IP packet b (after
// an IPv6 Fragment header, if any), and the fragment offset in bytes.
func gvcL4(b []byte) (proto uint8, l4 []byte, off int) {
	if b[0]>>4 == 4 {
		h := header.IPv4(b)
		return h.Protocol(), b[h.HeaderLength():h.TotalLength()], int(h.FragmentOffset())
	}
	proto, l4 = b[6], b[header.IPv6MinimumSize:]
	if proto == uint8(header.IPv6FragmentExtHdrIdentifier) {
		proto, off = l4[0], int(binary.BigEndian.Uint16(l4[2:])&^7)
		l4 = l4[header.IPv6FragmentExtHdrLength:]
	}
	return proto, l4, off
}

// TestGVisorTCPHostGSO: with a link endpoint that supports host GSO
// (SupportedGSO HostGSOSupported) and GSOMaxSize S, gVisor's TCP sends
// super-segments of up to S - 161 payload bytes (tcp/snd.go sendData:
// MaxSize - header.TCPTotalHeaderMaximumSize - 1), and every packet after
// the handshake carries GSO options (GSOTCPv4/v6, NeedsCsum) and, in its
// checksum field, only the pseudo-header sum over the packet's TCP length
// (tcp/connect.go buildTCPHdr: CHECKSUM_PARTIAL). The SYN carries no GSO
// options.
//
// Relied on by endpoint/offload.go: gsoMaxSize asks for exactly as many
// full packets as one UDP_SEGMENT send holds, by adding those 161 bytes;
// finishChecksum completes the partial checksum, and segmentTCP cuts the
// super-segments by GSOOptions.
func TestGVisorTCPHostGSO(t *testing.T) {
	const gsoMax = 8000
	const wantMax = gsoMax - header.TCPTotalHeaderMaximumSize - 1
	for _, fam := range gvcFamilies {
		t.Run(fam.name, func(t *testing.T) {
			la := newGVCLink(1500, 0)
			la.SupportedGSOKind = gvstack.HostGSOSupported
			la.gsoMax = gsoMax
			// b trusts the partial checksums it receives.
			p := newGVCPair(t, fam, la, newGVCLink(1500, gvstack.CapabilityRXChecksumOffload))
			p.transferTCP(t, 64<<10)

			pkts, gso := p.sent()
			maxPayload, checked := 0, 0
			for i, b := range pkts {
				proto, l4, _ := gvcL4(b)
				if proto != gvcProtoTCP {
					continue
				}
				tcph := header.TCP(l4)
				if tcph.Flags().Contains(header.TCPFlagSyn) {
					if gso[i].Type != gvstack.GSONone {
						t.Errorf("SYN sent with GSO options %+v, want none", gso[i])
					}
					continue
				}
				checked++
				maxPayload = max(maxPayload, len(l4)-int(tcph.DataOffset()))
				if gso[i].Type != fam.gsoType || !gso[i].NeedsCsum || gso[i].CsumOffset != header.TCPChecksumOffset {
					t.Errorf("packet %d (flags %v, %d bytes) has GSO options %+v; want type %v, NeedsCsum, CsumOffset %d",
						i, tcph.Flags(), len(b), gso[i], fam.gsoType, header.TCPChecksumOffset)
				}
				want := ^pkttest.Checksum(nil, pkttest.PseudoSum(fam.local, fam.peer, gvcProtoTCP, len(l4)))
				if got := tcph.Checksum(); got != want {
					t.Errorf("packet %d (flags %v): TCP checksum field %#04x, want the pseudo-header sum %#04x: "+
						"gVisor no longer leaves host GSO checksums partial (endpoint/offload.go finishChecksum)", i, tcph.Flags(), got, want)
				}
			}
			if checked == 0 {
				t.Fatal("a sent no TCP packet after its SYN")
			}
			if maxPayload != wantMax {
				t.Errorf("largest TCP payload a sent = %d, want GSOMaxSize %d - 161 = %d: gVisor's host GSO cap changed; "+
					"fix endpoint/offload.go gsoMaxSize", maxPayload, gsoMax, wantMax)
			}
		})
	}
}

// TestGVisorTXChecksumOffload: on a link endpoint that declares
// CapabilityTXChecksumOffload (and no GSO), gVisor leaves the checksum of
// every TCP segment and UDP datagram it sends 0 (tcp/connect.go
// buildTCPHdr, udp/endpoint.go), the first fragment of a fragmented UDP
// datagram included; ICMP it always checksums.
//
// Relied on by endpoint/txcsum.go: TXChecksummer completes exactly these
// (it holds a first fragment only if its UDP checksum is 0), and by
// stack/forward.go's forwardLink, which declares the offload for links
// that lack it (bug 1).
func TestGVisorTXChecksumOffload(t *testing.T) {
	for _, fam := range gvcFamilies {
		t.Run(fam.name, func(t *testing.T) {
			p := newGVCPair(t, fam, newGVCLink(1500, gvstack.CapabilityTXChecksumOffload),
				newGVCLink(1500, gvstack.CapabilityRXChecksumOffload))
			p.transferTCP(t, 16<<10)

			u, err := gonet.DialUDP(p.a, nil, &tcpip.FullAddress{NIC: 1, Addr: tcpipAddr(fam.peer), Port: 53}, fam.proto)
			if err != nil {
				t.Fatalf("DialUDP: %v", err)
			}
			defer u.Close()
			for _, size := range []int{100, 3000} { // 3000: fragmented
				if _, err := u.Write(gvcPattern(size, 4)); err != nil {
					t.Fatalf("UDP Write(%d bytes): %v", size, err)
				}
			}
			// The pump copies asynchronously: wait for the UDP
			// packets (2 fragments and 1 whole at least).
			var pkts [][]byte
			for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
				pkts, _ = p.sent()
				udps := 0
				for _, b := range pkts {
					if proto, _, _ := gvcL4(b); proto == gvcProtoUDP {
						udps++
					}
				}
				if udps >= 4 || time.Now().After(deadline) {
					break
				}
			}
			var tcps, udps, firstFrags int
			for i, b := range pkts {
				proto, l4, off := gvcL4(b)
				switch {
				case proto == gvcProtoTCP:
					tcps++
					if c := header.TCP(l4).Checksum(); c != 0 {
						t.Errorf("packet %d: TCP (flags %v) checksum %#04x, want 0: gVisor now computes TCP checksums under "+
							"CapabilityTXChecksumOffload (endpoint/txcsum.go would sum them twice)", i, header.TCP(l4).Flags(), c)
					}
				case proto == gvcProtoUDP && off == 0:
					udps++
					if len(l4) < 2000 && len(b) > 1400 { // a first fragment
						firstFrags++
					}
					if c := binary.BigEndian.Uint16(l4[6:]); c != 0 {
						t.Errorf("packet %d: UDP (%d bytes) checksum %#04x, want 0: gVisor now computes UDP checksums under "+
							"CapabilityTXChecksumOffload (endpoint/txcsum.go)", i, len(b), c)
					}
				}
			}
			if tcps < 4 || udps != 2 || firstFrags != 1 {
				t.Errorf("a sent %d TCP packets, %d UDP packets at offset 0 (%d of them a first fragment); want >= 4, 2, 1", tcps, udps, firstFrags)
			}
		})
	}
}

// TestGVisorReassemblyFieldsTakeEffect: the unexported fields of gVisor's
// fragmentation.Fragmentation that stack/reassembly_unsafe.go sets through
// reflection (findFragState) do what their names say: a lower memory limit
// (highLimit, lowLimit) evicts the oldest incomplete datagram, and a
// shorter timeout times one out, with ICMP Time Exceeded, code 1.
// (TestFragStateFound checks that the fields exist with gVisor's
// defaults.)
//
// Relied on by stack/reassembly.go setupReassembly (Config.ReassemblyMemory
// and Config.ReassemblyTimeout) and ReassemblyBytes (memSize).
func TestGVisorReassemblyFieldsTakeEffect(t *testing.T) {
	for _, fam := range gvcFamilies {
		// frag returns fragment i (0 or 1) of datagram id to port 7.
		src, dst := netip.AddrPortFrom(fam.peer, 9), netip.AddrPortFrom(fam.local, 7)
		datagram := func(id uint32) []byte { return gvcUDP(src, dst, gvcPattern(600, byte(id))) }
		frag := func(id uint32, i int) []byte {
			u := datagram(id)
			if i == 0 {
				return fam.fragmentPkt(src.Addr(), dst.Addr(), id, true, 0, u[:512])
			}
			return fam.fragmentPkt(src.Addr(), dst.Addr(), id, false, 512, u[512:])
		}
		setup := func(t *testing.T, clock tcpip.Clock) (*gvcLink, tcpip.Endpoint, *fragState) {
			s := newGVCStack(t, clock)
			link := newGVCLink(1500, 0)
			fs, err := findFragState(s.NetworkProtocolInstance(fam.proto))
			if err != nil {
				t.Fatalf("findFragState: %v", err)
			}
			gvcAddNIC(t, s, 1, link, fam.prefix)
			return link, gvcUDPListener(t, s, dst), fs
		}
		memSize := func(fs *fragState) int {
			fs.mu.Lock()
			defer fs.mu.Unlock()
			return *fs.memSize
		}

		for _, lower := range []bool{false, true} {
			name := fam.name + "/memory/default"
			if lower {
				name = fam.name + "/memory/lowered"
			}
			t.Run(name, func(t *testing.T) {
				link, ep, fs := setup(t, faketime.NewManualClock())
				link.inject(frag(1, 0), false)
				m := memSize(fs) // what one pending fragment counts
				if m <= 0 {
					t.Fatalf("memSize = %d after one fragment, want > 0: gVisor no longer counts reassembly memory there", m)
				}
				if lower {
					// Room for two pending fragments: a third evicts
					// down to one and a half, the two oldest.
					fs.mu.Lock()
					*fs.highLimit, *fs.lowLimit = 2*m+m/2, m+m/2
					fs.mu.Unlock()
				}
				link.inject(frag(2, 0), false)
				link.inject(frag(3, 0), false)
				if got := memSize(fs); lower && got != m || !lower && got != 3*m {
					t.Errorf("memSize %d after 3 first fragments, want %d (lowered limits: the 2 oldest evicted) or %d (default)", got, m, 3*m)
				}
				link.inject(frag(1, 1), false) // completes datagram 1, unless evicted
				got := gvcReadUDP(t, ep)
				want := datagram(1)[header.UDPMinimumSize:]
				switch {
				case !lower && !bytes.Equal(got, want):
					t.Errorf("default limits: datagram 1 not delivered (read %d bytes)", len(got))
				case lower && got != nil:
					t.Errorf("highLimit %d, lowLimit %d: datagram 1 delivered; want it evicted: "+
						"setting gVisor's reassembly memory limits no longer changes what it keeps (stack/reassembly_unsafe.go)", 2*m+m/2, m+m/2)
				}
			})
		}

		for _, shorter := range []bool{false, true} {
			name := fam.name + "/timeout/default"
			if shorter {
				name = fam.name + "/timeout/1s"
			}
			t.Run(name, func(t *testing.T) {
				clock := faketime.NewManualClock()
				link, _, fs := setup(t, clock)
				if shorter {
					fs.mu.Lock()
					*fs.timeout = time.Second
					fs.mu.Unlock()
				}
				link.inject(frag(1, 0), false)
				clock.Advance(time.Second - time.Millisecond)
				if memSize(fs) == 0 {
					t.Fatal("the datagram timed out before its timeout")
				}
				clock.Advance(time.Millisecond)
				timedOut := memSize(fs) == 0
				var icmpTE bool
				for _, b := range link.written() {
					proto, l4, _ := gvcL4(b)
					// ICMPv4 type 11 or ICMPv6 type 3, code 1: fragment
					// reassembly time exceeded.
					if (proto == uint8(header.ICMPv4ProtocolNumber) && l4[0] == 11 ||
						proto == uint8(header.ICMPv6ProtocolNumber) && l4[0] == 3) && l4[1] == 1 {
						icmpTE = true
					}
				}
				if shorter && (!timedOut || !icmpTE) {
					t.Errorf("timeout 1s, 1s later: timed out %v, ICMP Time Exceeded sent %v; want both: "+
						"setting gVisor's reassembly timeout no longer changes when it gives up (stack/reassembly_unsafe.go)", timedOut, icmpTE)
				}
				if !shorter && (timedOut || icmpTE) {
					t.Errorf("default timeout, 1s later: timed out %v, ICMP sent %v; want neither", timedOut, icmpTE)
				}
			})
		}
	}
}

// gvcRouter is a bare gVisor IPv4 router between two links without
// offloads: in (NIC 1, 10.1.0.1/24) and out (NIC 2, 10.2.0.1/24).
type gvcRouter struct {
	in, out  *gvcLink
	src, dst netip.Addr // hosts on in's and out's subnets
}

func newGVCRouter(t *testing.T, outMTU uint32) *gvcRouter {
	s := newGVCStack(t, nil)
	r := &gvcRouter{in: newGVCLink(1500, 0), out: newGVCLink(outMTU, 0),
		src: netip.MustParseAddr("10.1.0.2"), dst: netip.MustParseAddr("10.2.0.2")}
	gvcAddNIC(t, s, 1, r.in, "10.1.0.1/24")
	gvcAddNIC(t, s, 2, r.out, "10.2.0.1/24")
	if err := s.SetForwardingDefaultAndAllNICs(ipv4.ProtocolNumber, true); err != nil {
		t.Fatalf("SetForwardingDefaultAndAllNICs: %v", err)
	}
	return r
}

// TestGVisorBugForwardRecomputesChecksum asserts bug 1 of stack/forward.go:
// a gVisor router recomputes the TCP or UDP checksum of a packet it
// forwards out of a NIC without TX checksum offload: it repairs a corrupted
// checksum, sums a first fragment as if it were the whole datagram, and in
// a later IPv4 fragment writes a "checksum" into bytes 6-7 of the data.
func TestGVisorBugForwardRecomputesChecksum(t *testing.T) {
	const fixed = "gVisor fixed bug 1 (a router recomputes transport checksums): delete workaround 1 in stack/forward.go " +
		"(forwardLink.tx and the TX checksum offload it declares; the endpoint's reason to declare it, endpoint/txcsum.go)"
	src, dst := netip.AddrPortFrom(netip.MustParseAddr("10.1.0.2"), 9), netip.AddrPortFrom(netip.MustParseAddr("10.2.0.2"), 7)
	u := gvcUDP(src, dst, gvcPattern(2000, 5)) // a correct checksum over all 2008 bytes
	corrupt := gvcUDP(src, dst, gvcPattern(500, 5))
	corrupt[6] ^= 0x5a
	tests := []struct {
		name string
		pkt  []byte
	}{
		{"corrupted checksum", gvcIPv4(src.Addr(), dst.Addr(), gvcProtoUDP, 64, 1, false, false, 0, corrupt)},
		{"first fragment", gvcIPv4(src.Addr(), dst.Addr(), gvcProtoUDP, 64, 2, false, true, 0, u[:1000])},
		{"later fragment", gvcIPv4(src.Addr(), dst.Addr(), gvcProtoUDP, 64, 3, false, false, 1000, u[1000:])},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newGVCRouter(t, 1500)
			r.in.inject(tt.pkt, false)
			out := r.out.written()
			if len(out) != 1 {
				t.Fatalf("router forwarded %d packets, want 1", len(out))
			}
			_, gotL4, _ := gvcL4(out[0])
			_, wantL4, _ := gvcL4(tt.pkt)
			if bytes.Equal(gotL4, wantL4) {
				t.Fatal(fixed)
			}
			// The bug changes exactly the two bytes it takes for a
			// UDP checksum.
			diff := []int{}
			for i := range gotL4 {
				if gotL4[i] != wantL4[i] {
					diff = append(diff, i)
				}
			}
			if len(diff) == 0 || diff[0] < 6 || diff[len(diff)-1] > 7 {
				t.Errorf("forwarded IP payload differs at offsets %v, want within 6-7 (the UDP checksum field)", diff)
			}
		})
	}
}

// TestGVisorBugRefragmentFromZero asserts bug 2 of stack/forward.go: a
// gVisor IPv4 router that cuts a packet which is already a fragment
// (handleFragments, buildNextFragment) numbers the pieces from offset 0
// (the original offset is lost; More Fragments is the original's on the
// last piece).
func TestGVisorBugRefragmentFromZero(t *testing.T) {
	const fixed = "gVisor fixed bug 2 (a router refragments a fragment from offset 0): delete workaround 2 in stack/forward.go " +
		"(forwardLink.forward4's splitIPv4)"
	r := newGVCRouter(t, 600)
	const off = 1480
	payload := gvcPattern(1000, 6)
	r.in.inject(gvcIPv4(r.src, r.dst, gvcProtoUDP, 64, 7, false, true, off, payload), false)
	out := r.out.written()
	if len(out) < 2 {
		t.Fatalf("router sent %d pieces of a 1020-byte fragment to a 600-byte link, want >= 2", len(out))
	}
	switch first := header.IPv4(out[0]).FragmentOffset(); first {
	case off:
		t.Fatal(fixed)
	case 0:
	default:
		t.Fatalf("first piece at offset %d; want the bug's 0 or the fix's %d", first, off)
	}
	// Otherwise the pieces are right: consecutive, More Fragments on
	// all (the original had it), and the fragment's data but for
	// bytes 6-7, bug 1's "UDP checksum".
	var got []byte
	for i, b := range out {
		h := header.IPv4(b)
		if int(h.FragmentOffset()) != len(got) || !h.More() {
			t.Errorf("piece %d at offset %d, MF %v; want %d, true", i, h.FragmentOffset(), h.More(), len(got))
		}
		_, l4, _ := gvcL4(b)
		got = append(got, l4...)
	}
	want := bytes.Clone(payload)
	if len(got) == len(want) {
		want[6], want[7] = got[6], got[7]
	}
	if !bytes.Equal(got, want) {
		t.Errorf("the pieces carry %d bytes that are not the fragment's %d", len(got), len(payload))
	}
}

// TestGVisorBugForwardTTL1 asserts bug 3 of stack/forward.go: a gVisor IPv4
// router tests the TTL for 0 before decrementing it, so it forwards a
// packet that arrives with TTL 1 with TTL 0 instead of answering Time
// Exceeded.
func TestGVisorBugForwardTTL1(t *testing.T) {
	const fixed = "gVisor fixed bug 3 (a router forwards TTL 1 with TTL 0): delete workaround 3 in stack/forward.go " +
		"(forwardLink.forward4's expireTTL)"
	r := newGVCRouter(t, 1500)
	src, dst := netip.AddrPortFrom(r.src, 9), netip.AddrPortFrom(r.dst, 7)
	r.in.inject(gvcIPv4(r.src, r.dst, gvcProtoUDP, 1, 8, false, false, 0, gvcUDP(src, dst, []byte("ttl 1"))), false)
	out, back := r.out.written(), r.in.written()
	if len(out) == 0 {
		if len(back) == 1 && header.IPv4(back[0]).Protocol() == uint8(header.ICMPv4ProtocolNumber) {
			t.Fatal(fixed)
		}
		t.Fatalf("router forwarded nothing and sent back %d packets; want the bug's TTL 0 packet", len(back))
	}
	if len(out) != 1 || header.IPv4(out[0]).TTL() != 0 || len(back) != 0 {
		t.Errorf("router forwarded %d packets (first TTL %d) and sent back %d; want 1 with TTL 0 and none back",
			len(out), header.IPv4(out[0]).TTL(), len(back))
	}
}

// TestGVisorUDPIgnoresPacketTooBig: gVisor's IPv6 keeps no path MTU for
// UDP: after an ICMPv6 Packet Too Big (RFC 8201) with MTU 1280 quoting its
// datagram, it still fragments the next datagram to the same destination
// for the NIC MTU (udp/endpoint.go HandleError ignores the message; ipv6.go
// writePacket fragments to the NIC MTU).
//
// Relied on by endpoint/pmtu6.go, which keeps the path MTU cache gVisor
// lacks; when this test fails, that cache may go.
func TestGVisorUDPIgnoresPacketTooBig(t *testing.T) {
	fam := gvcFamilies[1]
	s := newGVCStack(t, nil)
	link := newGVCLink(1500, 0)
	gvcAddNIC(t, s, 1, link, fam.prefix)
	remote := netip.MustParseAddr("fd00::99")
	u, err := gonet.DialUDP(s, nil, &tcpip.FullAddress{NIC: 1, Addr: tcpipAddr(remote), Port: 53}, fam.proto)
	if err != nil {
		t.Fatalf("DialUDP: %v", err)
	}
	defer u.Close()
	send := func() [][]byte {
		t.Helper()
		if _, err := u.Write(gvcPattern(2000, 9)); err != nil {
			t.Fatalf("UDP Write: %v", err)
		}
		return link.written()
	}
	before := send()
	if len(before) != 2 || len(before[0]) != 1496 {
		t.Fatalf("a 2000-byte datagram left as %d packets (the first %d bytes); want 2, the first 1496 (NIC MTU 1500)", len(before), len(before[0]))
	}
	// Packet Too Big from the router fd00::2, quoting the first fragment
	// (as much as fits in 1280 bytes).
	const mtu = 1280
	quote := before[0][:mtu-header.IPv6MinimumSize-header.ICMPv6MinimumSize]
	icmp := make([]byte, header.ICMPv6MinimumSize+len(quote))
	icmp[0] = byte(header.ICMPv6PacketTooBig)
	binary.BigEndian.PutUint32(icmp[4:], mtu)
	copy(icmp[header.ICMPv6MinimumSize:], quote)
	binary.BigEndian.PutUint16(icmp[2:], pkttest.Checksum(icmp, pkttest.PseudoSum(fam.peer, fam.local, uint8(header.ICMPv6ProtocolNumber), len(icmp))))
	link.inject(gvcIPv6(fam.peer, fam.local, uint8(header.ICMPv6ProtocolNumber), false, 0, false, 0, icmp), false)
	if got := s.Stats().ICMP.V6.PacketsReceived.PacketTooBig.Value(); got != 1 {
		t.Fatalf("stack counted %d Packet Too Big received, want 1", got)
	}

	after := send()
	if len(after) > 0 && len(after[0]) <= mtu {
		t.Fatalf("after Packet Too Big (MTU %d) the first packet of the next datagram is %d bytes: "+
			"gVisor now keeps a path MTU for UDP over IPv6; endpoint/pmtu6.go's cache may go", mtu, len(after[0]))
	}
	if len(after) != 2 || len(after[0]) != 1496 {
		t.Errorf("after Packet Too Big: %d packets, the first %d bytes; want 2, 1496 as before", len(after), len(after[0]))
	}
}
