//go:build linux

package stack_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/endpoint"
	"github.com/ipipstack/ipipstack/endpoint/encap"
	"github.com/ipipstack/ipipstack/internal/pkttest"
	"github.com/ipipstack/ipipstack/stack"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// The hosts behind the link that linkRig adds with AddLink.
var (
	linkHost4 = netip.MustParseAddr("10.77.0.2")
	linkHost6 = netip.MustParseAddr("fd77::2")
)

func linkHost(v6 bool) netip.Addr {
	if v6 {
		return linkHost6
	}
	return linkHost4
}

// corruptPort is the TCP port whose segments innerTap corrupts.
const corruptPort = 7778

// innerTap wraps a FOU transport and keeps a copy of every inner packet
// written through it. It first flips a bit of the checksum of every TCP
// segment to corruptPort, as a bad link might.
type innerTap struct {
	endpoint.Transport
	mu   sync.Mutex
	pkts [][]byte
}

// WriteBatch implements endpoint.Transport.WriteBatch.
func (w *innerTap) WriteBatch(msgs []endpoint.Message) (int, error) {
	w.mu.Lock()
	for i := range msgs {
		var b []byte
		for _, s := range msgs[i].Buffers {
			b = append(b, s...)
		}
		if p, ok := parseIP(b); ok && p.proto == 6 && len(p.l4) >= header.TCPMinimumSize &&
			binary.BigEndian.Uint16(p.l4[2:]) == corruptPort {
			at := len(b) - len(p.l4) + header.TCPChecksumOffset
			b[at] ^= 0x10
			flipByte(msgs[i].Buffers, at, 0x10)
		}
		w.pkts = append(w.pkts, b)
	}
	w.mu.Unlock()
	return w.Transport.WriteBatch(msgs)
}

// flipByte XORs byte at of the concatenation of bufs with x.
func flipByte(bufs [][]byte, at int, x byte) {
	for _, s := range bufs {
		if at < len(s) {
			s[at] ^= x
			return
		}
		at -= len(s)
	}
}

// take returns the packets recorded since the last call.
func (w *innerTap) take() [][]byte {
	w.mu.Lock()
	defer w.mu.Unlock()
	p := w.pkts
	w.pkts = nil
	return p
}

// ipPacket is an IPv4 or IPv6 packet split at its transport layer.
type ipPacket struct {
	raw      []byte
	v6       bool
	src, dst netip.Addr
	proto    uint8
	ttl      uint8 // or hop limit
	id       uint32
	offset   int // bytes
	more     bool
	l4       []byte // after the IP header (and Fragment header)
}

// parseIP reads an IPv4 packet, or an IPv6 packet with at most a Fragment
// header, from gVisor's header views.
func parseIP(b []byte) (p ipPacket, ok bool) {
	p.raw = b
	switch {
	case len(b) >= header.IPv4MinimumSize && b[0]>>4 == 4:
		h := header.IPv4(b)
		if int(h.TotalLength()) > len(b) || int(h.HeaderLength()) > int(h.TotalLength()) {
			return p, false
		}
		p.src, p.dst = fromGV(h.SourceAddress()), fromGV(h.DestinationAddress())
		p.proto, p.ttl, p.id = h.Protocol(), h.TTL(), uint32(h.ID())
		p.offset, p.more = int(h.FragmentOffset()), h.More()
		p.l4 = b[h.HeaderLength():h.TotalLength()]
		return p, true
	case len(b) >= header.IPv6MinimumSize && b[0]>>4 == 6:
		h := header.IPv6(b)
		if header.IPv6MinimumSize+int(h.PayloadLength()) > len(b) {
			return p, false
		}
		p.v6 = true
		p.src, p.dst = fromGV(h.SourceAddress()), fromGV(h.DestinationAddress())
		p.proto, p.ttl = h.NextHeader(), h.HopLimit()
		p.l4 = b[header.IPv6MinimumSize : header.IPv6MinimumSize+int(h.PayloadLength())]
		if p.proto == header.IPv6FragmentHeader {
			f := header.IPv6Fragment(p.l4)
			if !f.IsValid() {
				return p, false
			}
			p.proto, p.id, p.more = f.NextHeader(), f.ID(), f.More()
			p.offset = int(f.FragmentOffset()) * header.IPv6FragmentExtHdrFragmentOffsetBytesPerUnit
			p.l4 = f.Payload()
		}
		return p, true
	}
	return p, false
}

func fromGV(a tcpip.Address) netip.Addr {
	ip, _ := netip.AddrFromSlice(a.AsSlice())
	return ip
}

// linkRig is a forwarding stack, the router, with a tunnel to a peer stack
// and a link added with AddLink: a gVisor channel endpoint that, like the
// fdbased endpoint of the TUN device, has no TX checksum offload. The peer
// routes the link's prefixes, 10.77.0.0/24 and fd77::/64, through the
// tunnel, and in records the inner packets the peer sends, as the router
// receives them.
type linkRig struct {
	router, peer *stack.Stack
	link         *channel.Endpoint
	in           *innerTap
}

// forwardTo readies r for one subtest that forwards from the peer to the
// link's host of the family, and returns that host's address.
func (r *linkRig) forwardTo(t *testing.T, v6 bool) netip.Addr {
	t.Helper()
	if !v6 {
		skipIPv4ForwardingUnderRace(t)
	}
	r.link.Drain()
	r.in.take()
	return linkHost(v6)
}

func newLinkRig(t *testing.T, forwarding bool) *linkRig {
	t.Helper()
	a, b := pipeTunnels("peer", linkAddr(0, 0, false), "router", linkAddr(0, 1, false))
	a.Addresses = append(a.Addresses, linkAddr(0, 0, true))
	b.Addresses = append(b.Addresses, linkAddr(0, 1, true))
	b.Routes = []netip.Prefix{netip.MustParsePrefix("10.77.0.0/24"), netip.MustParsePrefix("fd77::/64")}
	r := &linkRig{in: &innerTap{}, link: channel.New(256, 1500, "")}
	b.Wrap = func(tr endpoint.Transport) endpoint.Transport { r.in.Transport = tr; return r.in }
	r.router = newStack(t, stack.Config{Tunnels: []stack.Tunnel{a}, Forwarding: forwarding})
	r.peer = newStack(t, stack.Config{Tunnels: []stack.Tunnel{b}})
	if err := r.router.AddLink("chan", r.link, []netip.Prefix{
		netip.MustParsePrefix("10.77.0.1/24"), netip.MustParsePrefix("fd77::1/64"),
	}, nil); err != nil {
		t.Fatal(err)
	}
	return r
}

// read returns the first n packets that leave the router by the link and
// match, within 5 s; it fails the test if fewer come.
func (r *linkRig) read(t *testing.T, n int, match func(*ipPacket) bool) []ipPacket {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var out []ipPacket
	for len(out) < n {
		pkt := r.link.ReadContext(ctx)
		if pkt == nil {
			t.Fatalf("%d of %d packets left by the link in 5 s", len(out), n)
		}
		v := pkt.ToView()
		b := append([]byte(nil), v.AsSlice()...)
		v.Release()
		pkt.DecRef()
		if p, ok := parseIP(b); ok && match(&p) {
			out = append(out, p)
		}
	}
	return out
}

// readDatagram returns the fragments, or the one packet, of the UDP
// datagram of size bytes (UDP header included) that leaves the router by
// the link to dst.
func (r *linkRig) readDatagram(t *testing.T, dst netip.Addr, size int) []ipPacket {
	t.Helper()
	var frags []ipPacket
	for got := 0; got < size; {
		p := r.read(t, 1, func(p *ipPacket) bool { return p.dst == dst && p.proto == 17 })[0]
		frags = append(frags, p)
		got += len(p.l4)
	}
	return frags
}

// reassemble puts a datagram's fragments, of one ID, in order and back
// together.
func reassemble(t *testing.T, frags []ipPacket) []byte {
	t.Helper()
	sort.Slice(frags, func(i, j int) bool { return frags[i].offset < frags[j].offset })
	var d []byte
	for i, f := range frags {
		if f.offset != len(d) || f.id != frags[0].id || f.more != (i < len(frags)-1) {
			t.Fatalf("fragment %d of %d: offset %d ID %#x MF %v, want offset %d ID %#x MF %v",
				i, len(frags), f.offset, f.id, f.more, len(d), frags[0].id, i < len(frags)-1)
		}
		d = append(d, f.l4...)
	}
	return d
}

// forwardedAsItCame compares a packet that left the router with the one
// that entered it: they must be the same bytes but for the TTL (hop
// limit), one lower, and the IPv4 header checksum, which must be valid.
func forwardedAsItCame(out, in ipPacket) error {
	if len(out.raw) != len(in.raw) {
		return fmt.Errorf("%d bytes left, %d came", len(out.raw), len(in.raw))
	}
	if out.ttl != in.ttl-1 {
		return fmt.Errorf("TTL %d left, %d came", out.ttl, in.ttl)
	}
	a, b := bytes.Clone(out.raw), bytes.Clone(in.raw)
	if out.v6 {
		a[7], b[7] = 0, 0
	} else {
		if !header.IPv4(out.raw).IsChecksumValid() {
			return fmt.Errorf("bad IPv4 header checksum")
		}
		a[8], b[8] = 0, 0
		clear(a[10:12])
		clear(b[10:12])
	}
	if !bytes.Equal(a, b) {
		for i := range a {
			if a[i] != b[i] {
				return fmt.Errorf("byte %d differs: %#02x left, %#02x came", i, a[i], b[i])
			}
		}
	}
	return nil
}

// TestForwardToLinkFragmentsUntouched sends a 20,000-byte UDP datagram
// without DF from the peer through the router to a host behind the link,
// IPv4 and IPv6: every fragment leaves by the link as it entered the router
// but for the TTL, and the reassembled datagram's checksum verifies.
// gVisor alone recomputes the first IPv4 fragment's UDP checksum over that
// fragment and overwrites two bytes of each later one; it leaves IPv6
// fragments alone (it takes the Fragment header for the transport
// protocol), which the ipv6 case checks stays so.
func TestForwardToLinkFragmentsUntouched(t *testing.T) {
	r := newLinkRig(t, true)
	for _, v6 := range []bool{false, true} {
		t.Run(familyName(v6), func(t *testing.T) {
			dst := r.forwardTo(t, v6)
			msg := randomBytes(t, 20000)
			sendNoDF(t, r.peer, netip.AddrPortFrom(dst, 9), msg)
			out := r.readDatagram(t, dst, 8+len(msg))
			in := map[int]ipPacket{}
			for _, b := range r.in.take() {
				if p, ok := parseIP(b); ok && p.dst == dst && p.proto == 17 {
					in[p.offset] = p
				}
			}
			if len(out) < 2 || len(in) != len(out) {
				t.Fatalf("%d fragments left the router, %d entered it", len(out), len(in))
			}
			for _, p := range out {
				if err := forwardedAsItCame(p, in[p.offset]); err != nil {
					t.Errorf("fragment at %d: %v", p.offset, err)
				}
			}
			d := reassemble(t, out)
			if !bytes.Equal(d[8:], msg) {
				t.Fatalf("the reassembled payload differs from what was sent")
			}
			if !checksumValid(out[0].src, dst, 17, d) {
				t.Errorf("UDP checksum %#04x of the reassembled datagram does not verify", binary.BigEndian.Uint16(d[6:]))
			}
		})
	}
}

// TestForwardToLinkCorruptedNotRepaired: a TCP SYN whose checksum is
// broken between the peer and the router never leaves by the link: the
// router's tunnel endpoint verifies it (nothing verified it on the hop
// before) and drops it as bad_checksum; gVisor alone would have forwarded
// it with a recomputed, valid checksum. That the router's link leaves a
// forwarded packet's checksum as it came is TestForwardLinkWritePackets.
func TestForwardToLinkCorruptedNotRepaired(t *testing.T) {
	r := newLinkRig(t, true)
	for _, v6 := range []bool{false, true} {
		t.Run(familyName(v6), func(t *testing.T) {
			dst := r.forwardTo(t, v6)
			bad := func() uint64 { return r.router.Stats()[0].Drops[encap.BadChecksum] }
			bad0 := bad()
			closeSYN := startSYN(t, r.peer, netip.AddrPortFrom(dst, corruptPort))
			defer closeSYN()
			waitFor(t, "the router to drop the corrupted SYN", func() bool { return bad() > bad0 })
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			defer cancel()
			for {
				pkt := r.link.ReadContext(ctx)
				if pkt == nil {
					break
				}
				v := pkt.ToView()
				p, ok := parseIP(v.AsSlice())
				if ok && p.proto == 6 && len(p.l4) >= header.TCPMinimumSize && binary.BigEndian.Uint16(p.l4[2:]) == corruptPort {
					t.Errorf("a corrupted SYN left the router by the link")
				}
				v.Release()
				pkt.DecRef()
			}
		})
	}
}

// startSYN starts a TCP connection from s to dst, which sends a SYN, and
// returns a func that abandons it.
func startSYN(t *testing.T, s *stack.Stack, dst netip.AddrPort) func() {
	t.Helper()
	ep := gvEndpoint(t, s, tcp.ProtocolNumber, dst.Addr())
	switch terr := ep.Connect(tcpip.FullAddress{Addr: tcpip.AddrFromSlice(dst.Addr().AsSlice()), Port: dst.Port()}); terr.(type) {
	case nil, *tcpip.ErrConnectStarted:
	default:
		ep.Close()
		t.Fatalf("connect to %v: %v", dst, terr)
	}
	return ep.Close
}

// TestLinkLocalChecksums sends UDP datagrams, whole and fragmented, and TCP
// SYNs from the router itself out of the link: with the TX checksum
// offload its forwardLink declares, gVisor leaves their checksums to the
// forwardLink, and each leaves with a correct one (a fragmented datagram's
// verified after reassembly), no UDP checksum 0.
func TestLinkLocalChecksums(t *testing.T) {
	r := newLinkRig(t, true)
	big := randomBytes(t, 20000)
	small := []byte("hello, checksum")
	tests := []struct {
		name string
		v6   bool
		udp  []byte // nil: a TCP SYN
	}{
		{"udp4", false, small},
		{"udp6", true, small},
		{"udp4 fragmented", false, big},
		{"udp6 fragmented", true, big},
		{"tcp4 syn", false, nil},
		{"tcp6 syn", true, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r.link.Drain()
			dst := linkHost(tt.v6)
			if tt.udp == nil {
				closeSYN := startSYN(t, r.router, netip.AddrPortFrom(dst, 80))
				defer closeSYN()
				p := r.read(t, 1, func(p *ipPacket) bool { return p.dst == dst && p.proto == 6 })[0]
				if h := header.TCP(p.l4); h.Flags() != header.TCPFlagSyn {
					t.Errorf("TCP flags %v, want SYN", h.Flags())
				}
				if !checksumValid(p.src, dst, 6, p.l4) {
					t.Errorf("SYN checksum %#04x does not verify", header.TCP(p.l4).Checksum())
				}
				return
			}
			sendNoDF(t, r.router, netip.AddrPortFrom(dst, 9), tt.udp)
			frags := r.readDatagram(t, dst, 8+len(tt.udp))
			if fragmented := len(tt.udp) > 1500; fragmented != (len(frags) > 1) {
				t.Fatalf("%d-byte datagram left in %d packets", len(tt.udp), len(frags))
			}
			d := reassemble(t, frags)
			if !bytes.Equal(d[8:], tt.udp) {
				t.Fatalf("the reassembled payload differs from what was sent")
			}
			if c := binary.BigEndian.Uint16(d[6:]); c == 0 {
				t.Errorf("UDP checksum 0 (none)")
			}
			if !checksumValid(frags[0].src, dst, 17, d) {
				t.Errorf("UDP checksum %#04x does not verify", binary.BigEndian.Uint16(d[6:]))
			}
		})
	}
	if st := r.router.ForwardStats(); st.IncompleteDatagrams != 0 {
		t.Errorf("ForwardStats().IncompleteDatagrams = %d, want 0", st.IncompleteDatagrams)
	}
}

// TestLinkChecksumOffload: on a forwarding stack, a route out of the
// AddLink link requires no transport checksum of gVisor (the forwardLink
// completes them); on a stack that does not forward, the link is not
// wrapped and gVisor checksums as before.
func TestLinkChecksumOffload(t *testing.T) {
	for _, fwd := range []bool{false, true} {
		t.Run(fmt.Sprintf("forwarding=%v", fwd), func(t *testing.T) {
			r := newLinkRig(t, fwd)
			for _, dst := range []netip.Addr{linkHost4, linkHost6} {
				proto := ipv4.ProtocolNumber
				if dst.Is6() {
					proto = ipv6.ProtocolNumber
				}
				rt, terr := r.router.GVisor().FindRoute(0, tcpip.Address{}, tcpip.AddrFromSlice(dst.AsSlice()), proto, false)
				if terr != nil {
					t.Fatalf("route to %v: %v", dst, terr)
				}
				if got := rt.RequiresTXTransportChecksum(); got == fwd {
					t.Errorf("route to %v: RequiresTXTransportChecksum() = %v, want %v", dst, got, !fwd)
				}
				rt.Release()
			}
		})
	}
}

// checksumValid reports whether seg, a whole TCP or UDP segment, carries a
// correct checksum.
var checksumValid = pkttest.Valid
