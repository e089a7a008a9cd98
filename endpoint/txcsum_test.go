package endpoint

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"sort"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/endpoint/encap"
	"github.com/ipipstack/ipipstack/internal/pkttest"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// setUDPChecksum writes the full UDP checksum of a packet built with its
// UDP header in TransportHeader, as gVisor does without TX checksum
// offload.
func setUDPChecksum(pkt *stack.PacketBuffer) {
	u := header.UDP(pkt.TransportHeader().Slice())
	src, dst := netAddrs(pkt.NetworkHeader().Slice())
	u.SetChecksum(0)
	sum := header.PseudoHeaderChecksum(header.UDPProtocolNumber, src, dst, u.Length())
	sum = checksum.Combine(sum, pkt.Data().Checksum())
	u.SetChecksum(^u.CalculateChecksum(sum))
}

// flatten is the bytes of pkt from its network header on.
func flatten(pkt *stack.PacketBuffer) []byte {
	v := pkt.ToView()
	defer v.Release()
	return append([]byte(nil), v.AsSlice()...)
}

func netAddrs(ip []byte) (src, dst tcpip.Address) {
	if ip[0]>>4 == 6 {
		h := header.IPv6(ip)
		return h.SourceAddress(), h.DestinationAddress()
	}
	h := header.IPv4(ip)
	return h.SourceAddress(), h.DestinationAddress()
}

// csumRig is an Endpoint over a memTransport, the NIC of a gVisor
// stack at 10.99.0.1/24 and fd99::1/64 whose routes all point at it.
type csumRig struct {
	e  *Endpoint
	tr *memTransport
	s  *stack.Stack
}

func newCsumRig(t *testing.T) *csumRig {
	t.Helper()
	tr := newMemTransport(FramingUDP, netip.AddrPortFrom(outer4L, 4700))
	e, err := New(Options{Transport: tr, Remote: netip.AddrPortFrom(outer4R, 4701), DisableGSO: true})
	if err != nil {
		t.Fatal(err)
	}
	s := attachGVisor(t, e)
	return &csumRig{e: e, tr: tr, s: s}
}

// endpoint opens a gVisor socket of the transport protocol trans on r's
// stack, of dst's family; the caller closes it.
func (r *csumRig) endpoint(t *testing.T, trans tcpip.TransportProtocolNumber, dst netip.Addr) tcpip.Endpoint {
	t.Helper()
	proto := ipv4.ProtocolNumber
	if dst.Is6() {
		proto = ipv6.ProtocolNumber
	}
	var wq waiter.Queue
	ep, terr := r.s.NewEndpoint(trans, proto, &wq)
	if terr != nil {
		t.Fatal(terr)
	}
	return ep
}

// sendUDP sends payload from a gVisor UDP socket to dst:53 with DF clear.
func (r *csumRig) sendUDP(t *testing.T, dst netip.Addr, payload []byte) {
	t.Helper()
	ep := r.endpoint(t, udp.ProtocolNumber, dst)
	defer ep.Close()
	if terr := ep.SetSockOptInt(tcpip.MTUDiscoverOption, int(tcpip.PMTUDiscoveryDont)); terr != nil {
		t.Fatal(terr)
	}
	to := tcpip.FullAddress{Addr: tcpip.AddrFromSlice(dst.AsSlice()), Port: 53}
	if _, terr := ep.Write(bytes.NewReader(payload), tcpip.WriteOptions{To: &to}); terr != nil {
		t.Fatal(terr)
	}
}

// sendSYN starts a TCP connection to dst:80 and returns once its SYN
// has been written.
func (r *csumRig) sendSYN(t *testing.T, dst netip.Addr) {
	t.Helper()
	ep := r.endpoint(t, tcp.ProtocolNumber, dst)
	defer ep.Close()
	before := r.e.Stats().TxPackets
	ep.Connect(tcpip.FullAddress{Addr: tcpip.AddrFromSlice(dst.AsSlice()), Port: 80})
	for deadline := time.Now().Add(5 * time.Second); r.e.Stats().TxPackets == before; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no SYN sent")
		}
	}
}

// l4Packet is an inner packet split into its addresses, transport protocol,
// fragment offset (bytes), MF, identification and the bytes after the IP
// headers (parseInner).
type l4Packet struct {
	src, dst netip.Addr
	proto    uint8
	offset   int
	more     bool
	id       uint32
	payload  []byte
}

func parseInner(t *testing.T, p []byte) l4Packet {
	t.Helper()
	var r l4Packet
	switch p[0] >> 4 {
	case 4:
		ihl := int(p[0]&0xf) * 4
		r.src, r.dst = netip.AddrFrom4([4]byte(p[12:16])), netip.AddrFrom4([4]byte(p[16:20]))
		r.proto = p[9]
		fo := binary.BigEndian.Uint16(p[6:])
		r.offset, r.more, r.id = int(fo&0x1fff)*8, fo&0x2000 != 0, uint32(binary.BigEndian.Uint16(p[4:]))
		r.payload = p[ihl:binary.BigEndian.Uint16(p[2:])]
	case 6:
		r.src, r.dst = netip.AddrFrom16([16]byte(p[8:24])), netip.AddrFrom16([16]byte(p[24:40]))
		r.proto, r.payload = p[6], p[40:40+int(binary.BigEndian.Uint16(p[4:]))]
		if r.proto == 44 {
			fo := binary.BigEndian.Uint16(r.payload[2:])
			r.proto, r.offset, r.more, r.id = r.payload[0], int(fo&^7), fo&1 != 0, binary.BigEndian.Uint32(r.payload[4:])
			r.payload = r.payload[8:]
		}
	default:
		t.Fatalf("not IP: % x", p[:min(len(p), 20)])
	}
	return r
}

// TestTXChecksumLocal sends UDP datagrams and TCP SYNs from a gVisor stack
// over the endpoint, which declares TX checksum offload: every packet
// leaves with a correct checksum, a fragmented datagram's first fragment
// included (sent after the others), and no UDP checksum is 0.
func TestTXChecksumLocal(t *testing.T) {
	r := newCsumRig(t)
	if r.e.Capabilities()&stack.CapabilityTXChecksumOffload == 0 {
		t.Fatal("TX checksum offload not declared")
	}
	big := make([]byte, 4000)
	for i := range big {
		big[i] = byte(i*7 + i>>8)
	}
	tests := []struct {
		name  string
		send  func()
		dst   netip.Addr
		proto uint8
		frags int // 0: one whole packet
	}{
		{"udp4", func() { r.sendUDP(t, inner4R, []byte("hello, checksum")) }, inner4R, 17, 0},
		{"udp6", func() { r.sendUDP(t, inner6R, []byte("hello, checksum")) }, inner6R, 17, 0},
		{"tcp4 syn", func() { r.sendSYN(t, inner4R) }, inner4R, 6, 0},
		{"tcp6 syn", func() { r.sendSYN(t, inner6R) }, inner6R, 6, 0},
		{"udp4 fragmented", func() { r.sendUDP(t, inner4R, big) }, inner4R, 17, 3},
		{"udp6 fragmented", func() { r.sendUDP(t, inner6R, big) }, inner6R, 17, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r.tr.takeData()
			tt.send()
			// Only this test's packets: not a RST or a retransmitted SYN.
			var ps []l4Packet
			for _, b := range r.tr.takeData() {
				if p := parseInner(t, b); p.proto == tt.proto && p.dst == tt.dst {
					ps = append(ps, p)
				}
			}
			if tt.frags == 0 {
				if len(ps) != 1 {
					t.Fatalf("%d packets sent, want 1", len(ps))
				}
				p := ps[0]
				if !checksumOK(p.src, p.dst, p.proto, p.payload) {
					t.Errorf("checksum of % x does not verify", p.payload[:min(len(p.payload), 24)])
				}
				checkGVisorVerifies(t, p)
				return
			}
			if len(ps) != tt.frags {
				t.Fatalf("%d fragments sent, want %d", len(ps), tt.frags)
			}
			if ps[len(ps)-1].offset != 0 {
				t.Errorf("the first fragment did not go out last, after the one that completes its checksum")
			}
			sort.Slice(ps, func(i, j int) bool { return ps[i].offset < ps[j].offset })
			var dgram []byte
			for i, p := range ps {
				if p.offset != len(dgram) || p.more != (i < len(ps)-1) || p.id != ps[0].id {
					t.Fatalf("fragment %d: offset %d MF %v ID %#x, want offset %d MF %v ID %#x", i, p.offset, p.more, p.id, len(dgram), i < len(ps)-1, ps[0].id)
				}
				dgram = append(dgram, p.payload...)
			}
			if !bytes.Equal(dgram[8:], big) {
				t.Fatal("reassembled payload differs from what was sent")
			}
			if c := binary.BigEndian.Uint16(dgram[6:]); c == 0 {
				t.Errorf("UDP checksum 0 (none) on a fragmented datagram")
			}
			if !checksumOK(ps[0].src, ps[0].dst, 17, dgram) {
				t.Errorf("checksum %#04x of the reassembled datagram does not verify", binary.BigEndian.Uint16(dgram[6:]))
			}
		})
	}
	if st := r.e.Stats(); st.DropTotal() != 0 {
		t.Errorf("%d packets dropped: %v", st.DropTotal(), st.Drops)
	}
}

// checkGVisorVerifies checks a whole segment with gVisor's own checksum
// functions too.
func checkGVisorVerifies(t *testing.T, p l4Packet) {
	t.Helper()
	src, dst := tcpip.AddrFromSlice(p.src.AsSlice()), tcpip.AddrFromSlice(p.dst.AsSlice())
	switch p.proto {
	case 17:
		u := header.UDP(p.payload)
		if !u.IsChecksumValid(src, dst, checksum.Checksum(u.Payload(), 0)) {
			t.Errorf("header.UDP.IsChecksumValid = false")
		}
	case 6:
		h := header.TCP(p.payload)
		data := p.payload[h.DataOffset():]
		if !h.IsChecksumValid(src, dst, checksum.Checksum(data, 0), uint16(len(data))) {
			t.Errorf("header.TCP.IsChecksumValid = false")
		}
	}
}

// forwardedPacket builds an IPv4 or IPv6 packet 10.99.0.2 -> 10.99.0.3 (or
// fd99::2 -> fd99::3) around seg, marked as forwarded by gVisor.
func forwardedPacket(v6 bool, proto uint8, frag uint16, seg []byte) *stack.PacketBuffer {
	var b []byte
	if v6 {
		if frag != 0 {
			fh := make([]byte, 8, 8+len(seg))
			fh[0] = proto
			binary.BigEndian.PutUint16(fh[2:], frag)
			binary.BigEndian.PutUint32(fh[4:], 0x01020304)
			seg, proto = append(fh, seg...), 44
		}
		b = seedIPv6(inner6R, netip.MustParseAddr("fd99::3"), proto, seg)
	} else {
		b = seedIPv4(inner4R, netip.MustParseAddr("10.99.0.3"), proto, 0, frag, seg)
	}
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(b), IsForwardedPacket: true})
	n := header.IPv4MinimumSize
	pkt.NetworkProtocolNumber = ipv4.ProtocolNumber
	if v6 {
		n = header.IPv6MinimumSize
		pkt.NetworkProtocolNumber = ipv6.ProtocolNumber
	}
	pkt.NetworkHeader().Consume(n)
	return pkt
}

// TestTXChecksumForwarded writes packets that gVisor forwards, with wrong
// checksums and with fragment data where a checksum would sit: the
// endpoint sends them exactly as they are.
func TestTXChecksumForwarded(t *testing.T) {
	r := newCsumRig(t)
	udpBad := seedUDP(inner4R, netip.MustParseAddr("10.99.0.3"), "corrupted on the way")
	udpBad[6] ^= 0x55
	tcpBad := seedTCPSyn(inner4R, netip.MustParseAddr("10.99.0.3"))
	tcpBad[17]++
	data := bytes.Repeat([]byte{0xa5}, 64)
	tests := []struct {
		name  string
		v6    bool
		proto uint8
		frag  uint16
		seg   []byte
	}{
		{"udp4 bad checksum", false, 17, 0, udpBad},
		{"tcp4 bad checksum", false, 6, 0, tcpBad},
		{"udp6 bad checksum", true, 17, 0, udpBad},
		{"udp4 first fragment", false, 17, 0x2000, append(udpBad[:8:8], data...)},
		{"udp4 later fragment", false, 17, 0x2000 | 100, data},
		{"tcp4 last fragment", false, 6, 100, data},
		{"udp6 first fragment", true, 17, 1, append(udpBad[:8:8], data...)},
		{"udp6 later fragment", true, 17, 100 << 3, data},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pkt := forwardedPacket(tt.v6, tt.proto, tt.frag, tt.seg)
			defer pkt.DecRef()
			want := flatten(pkt)
			r.tr.takeData()
			var l stack.PacketBufferList
			l.PushBack(pkt)
			r.e.WritePackets(l)
			sent := r.tr.takeData()
			if len(sent) != 1 || !bytes.Equal(sent[0], want) {
				t.Errorf("sent %d packets, want exactly\n% x", len(sent), want)
				for _, s := range sent {
					t.Errorf("sent\n% x", s)
				}
			}
		})
	}
}

// localFragment builds a fragment of a UDP datagram as gVisor's IPv4
// fragmentation hands it over: IP header in NetworkHeader, everything
// else (the UDP header, for the first) in Data.
func localFragment(id uint16, flagsOffset uint16, data []byte) *stack.PacketBuffer {
	b := seedIPv4(inner4L, inner4R, 17, 0, flagsOffset, data)
	binary.BigEndian.PutUint16(b[4:], id)
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(b)})
	pkt.NetworkProtocolNumber = ipv4.ProtocolNumber
	pkt.NetworkHeader().Consume(header.IPv4MinimumSize)
	return pkt
}

// TestTXChecksumLostFragment: when a fragment between the first and the
// last never reaches the endpoint (a full NIC queue drops it), the held
// first fragment cannot be completed and is dropped and counted; the
// endpoint then completes the next datagram as usual, and more datagrams
// in flight than it can hold evict the oldest.
func TestTXChecksumLostFragment(t *testing.T) {
	r := newCsumRig(t)
	udpHdr := func(n int) []byte {
		u := make([]byte, 8)
		binary.BigEndian.PutUint16(u[4:], uint16(n))
		return u
	}
	write := func(pkts ...*stack.PacketBuffer) {
		var l stack.PacketBufferList
		for _, p := range pkts {
			l.PushBack(p)
		}
		r.e.WritePackets(l)
		for _, p := range pkts {
			p.DecRef()
		}
	}
	chunk := bytes.Repeat([]byte{1}, 16)
	// 8 + 16 + 24 + 16 bytes: the fragment at 24 is lost.
	write(localFragment(7, 0x2000, append(udpHdr(64), chunk...)))
	write(localFragment(7, 48/8, chunk))
	if sent := r.tr.takeData(); len(sent) != 1 {
		t.Fatalf("%d packets sent, want the last fragment only", len(sent))
	}
	if n := r.e.Stats().Drops[encap.SendError]; n != 1 {
		t.Errorf("SendError drops = %d, want 1 (the held first fragment)", n)
	}
	// More datagrams than slots: the oldest is dropped.
	for i := range maxHeldFragments + 1 {
		write(localFragment(uint16(100+i), 0x2000, append(udpHdr(40), chunk...)))
	}
	if n := r.e.Stats().Drops[encap.SendError]; n != 2 {
		t.Errorf("SendError drops = %d, want 2 (one evicted)", n)
	}
	for i := range maxHeldFragments + 1 {
		write(localFragment(uint16(100+i), 24/8, chunk))
	}
	if sent := r.tr.takeData(); len(sent) != 2*maxHeldFragments+1 {
		t.Errorf("%d packets sent, want %d (every last fragment, every first but the evicted one)", len(sent), 2*maxHeldFragments+1)
	}
}

// TestTXChecksumAllocs: completing the checksum of a whole packet does not
// allocate.
func TestTXChecksumAllocs(t *testing.T) {
	r := newCsumRig(t)
	for _, pkt := range []*stack.PacketBuffer{gvPacketTCP(t, false), gvPacketTCP(t, true)} {
		defer pkt.DecRef()
		tb := r.e.txPool.Get().(*txBatch)
		remote, mtu := r.e.Remote(), int(r.e.MTU())
		n := testing.AllocsPerRun(1000, func() {
			if r.e.txChecksum(tb, pkt, remote, mtu) {
				t.Fatal("a whole packet was held")
			}
		})
		if n != 0 {
			t.Errorf("txChecksum allocates %.1f times per packet, want 0", n)
		}
		r.e.txPool.Put(tb)
		p := parseInner(t, flatten(pkt))
		if !checksumOK(p.src, p.dst, p.proto, p.payload) {
			t.Errorf("checksum does not verify")
		}
	}
}

// gvPacketTCP builds a TCP segment with 100 bytes of data as gVisor's TCP
// hands it to a link endpoint with TX checksum offload: checksum 0, TCP
// header and data in separate views.
func gvPacketTCP(t *testing.T, v6 bool) *stack.PacketBuffer {
	t.Helper()
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{
		ReserveHeaderBytes: header.IPv6MinimumSize + header.TCPMinimumSize,
		Payload:            buffer.MakeWithData(bytes.Repeat([]byte{0x5a}, 100)),
	})
	h := header.TCP(pkt.TransportHeader().Push(header.TCPMinimumSize))
	h.Encode(&header.TCPFields{SrcPort: 40000, DstPort: 80, SeqNum: 1, AckNum: 2,
		DataOffset: header.TCPMinimumSize, Flags: header.TCPFlagAck, WindowSize: 1000})
	pkt.TransportProtocolNumber = header.TCPProtocolNumber
	if v6 {
		ip := header.IPv6(pkt.NetworkHeader().Push(header.IPv6MinimumSize))
		ip.Encode(&header.IPv6Fields{PayloadLength: uint16(header.TCPMinimumSize + 100), TransportProtocol: header.TCPProtocolNumber,
			HopLimit: 64, SrcAddr: tcpip.AddrFrom16(inner6L.As16()), DstAddr: tcpip.AddrFrom16(inner6R.As16())})
		pkt.NetworkProtocolNumber = ipv6.ProtocolNumber
		return pkt
	}
	ip := header.IPv4(pkt.NetworkHeader().Push(header.IPv4MinimumSize))
	ip.Encode(&header.IPv4Fields{TotalLength: uint16(pkt.Size()), TTL: 64, Protocol: uint8(header.TCPProtocolNumber),
		SrcAddr: tcpip.AddrFrom4(inner4L.As4()), DstAddr: tcpip.AddrFrom4(inner4R.As4())})
	ip.SetChecksum(^ip.CalculateChecksum())
	pkt.NetworkProtocolNumber = ipv4.ProtocolNumber
	return pkt
}

// checksumOK verifies a whole transport segment's checksum.
var checksumOK = pkttest.Valid

// TestTXChecksumTCPFragments: a TCP segment that gVisor fragmented (it
// does so for the segments it sends itself when the MTU dropped below the
// segment size, DF or not) leaves with a checksum over the whole segment
// in its first fragment, sent after the others; before, it left with
// checksum 0 and the receiver dropped every retransmission.
func TestTXChecksumTCPFragments(t *testing.T) {
	for _, sizes := range [][]int{{24, 16, 9}, {40, 40, 40, 3}, {32, 8}} {
		var c TXChecksummer
		total := 0
		for _, n := range sizes {
			total += n
		}
		seg := make([]byte, total)
		for i := range seg {
			seg[i] = byte(i*13 + 5)
		}
		seg[12] = 5 << 4 // data offset: 20 bytes
		seg[16], seg[17] = 0, 0
		var sent [][]byte
		var firstSent []byte
		off := 0
		for i, n := range sizes {
			fo := uint16(off / 8)
			if i < len(sizes)-1 {
				fo |= 0x2000 // MF
			}
			b := seedIPv4(inner4L, inner4R, 6, 0, fo, seg[off:off+n])
			binary.BigEndian.PutUint16(b[4:], 99)
			pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(b)})
			pkt.NetworkProtocolNumber = ipv4.ProtocolNumber
			pkt.NetworkHeader().Consume(header.IPv4MinimumSize)
			v, first, dropped := c.Complete(pkt)
			switch {
			case dropped:
				t.Fatalf("sizes %v: fragment %d: a held fragment was dropped", sizes, i)
			case i == 0 && v != TXHeld:
				t.Fatalf("sizes %v: first fragment: %v, want held", sizes, v)
			case i > 0 && i < len(sizes)-1 && v != TXSend:
				t.Fatalf("sizes %v: fragment %d: %v, want send", sizes, i, v)
			case i == len(sizes)-1 && v != TXSendWithFirst:
				t.Fatalf("sizes %v: last fragment: %v, want send with first", sizes, v)
			}
			sent = append(sent, flatten(pkt)[header.IPv4MinimumSize:])
			if first != nil {
				firstSent = flatten(first)[header.IPv4MinimumSize:]
				first.DecRef()
			}
			pkt.DecRef()
			off += n
		}
		whole := append(append([]byte(nil), firstSent...), bytes.Join(sent[1:], nil)...)
		if !bytes.Equal(whole[18:], seg[18:]) || !bytes.Equal(whole[:16], seg[:16]) {
			t.Fatalf("sizes %v: the segment's bytes changed beyond its checksum", sizes)
		}
		if !checksumOK(inner4L, inner4R, 6, whole) {
			t.Errorf("sizes %v: checksum %#04x of the reassembled segment does not verify", sizes, binary.BigEndian.Uint16(whole[16:]))
		}
	}
}
