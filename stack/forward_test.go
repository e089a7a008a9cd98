//go:build linux

package stack_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"net"
	"net/netip"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/endpoint"
	"github.com/ipipstack/ipipstack/endpoint/encap"
	"github.com/ipipstack/ipipstack/stack"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
)

// wirePacket is what wireLog keeps of one inner packet: its size and
// fragment fields.
type wirePacket struct {
	size     int
	v6       bool
	proto    uint8
	id       uint32
	offset   int // bytes
	more     bool
	fragment bool
	payload  int // bytes after the IP header(s)
}

// wireLog wraps a FOU transport and records the inner packets written
// through it.
type wireLog struct {
	endpoint.Transport
	mu   sync.Mutex
	pkts []wirePacket
}

// WriteBatch implements endpoint.Transport.WriteBatch.
func (w *wireLog) WriteBatch(msgs []endpoint.Message) (int, error) {
	w.mu.Lock()
	for i := range msgs {
		var head [48]byte
		if h, size := messageHead(&msgs[i], &head); msgs[i].GSOSize == 0 {
			w.pkts = append(w.pkts, parseWire(h, size))
		}
	}
	w.mu.Unlock()
	return w.Transport.WriteBatch(msgs)
}

// take returns the packets recorded since the last call.
func (w *wireLog) take() []wirePacket {
	w.mu.Lock()
	defer w.mu.Unlock()
	p := w.pkts
	w.pkts = nil
	return p
}

func parseWire(h []byte, size int) wirePacket {
	p := wirePacket{size: size}
	switch {
	case len(h) >= 20 && h[0]>>4 == 4:
		fo := binary.BigEndian.Uint16(h[6:])
		p.proto, p.id = h[9], uint32(binary.BigEndian.Uint16(h[4:]))
		p.offset, p.more = int(fo&0x1fff)*8, fo&0x2000 != 0
		p.fragment = p.more || p.offset != 0
		p.payload = size - int(h[0]&0xf)*4
	case len(h) >= 48 && h[0]>>4 == 6:
		p.v6, p.proto, p.payload = true, h[6], size-40
		if p.proto == 44 {
			fo := binary.BigEndian.Uint16(h[42:])
			p.proto, p.id, p.fragment = h[40], binary.BigEndian.Uint32(h[44:]), true
			p.offset, p.more = int(fo&^7), fo&1 != 0
			p.payload -= 8
		}
	}
	return p
}

// udp4Fragments returns the IPv4 UDP fragments among pkts.
func udp4Fragments(pkts []wirePacket) []wirePacket {
	var out []wirePacket
	for _, p := range pkts {
		if !p.v6 && p.proto == 17 && p.fragment {
			out = append(out, p)
		}
	}
	return out
}

// checkTiling checks that fragments, all of one datagram, cover its size
// bytes exactly once from offset 0, with More Fragments on all but the
// last, and that none is bigger than mtu.
func checkTiling(t *testing.T, frags []wirePacket, size, mtu int) {
	t.Helper()
	sort.Slice(frags, func(i, j int) bool { return frags[i].offset < frags[j].offset })
	next := 0
	for i, f := range frags {
		if f.size > mtu {
			t.Errorf("fragment at %d is %d bytes, over the link MTU %d", f.offset, f.size, mtu)
		}
		if f.offset != next || f.id != frags[0].id || f.more != (i < len(frags)-1) {
			t.Fatalf("fragment %d of %d: offset %d ID %#x MF %v, want offset %d ID %#x MF %v",
				i, len(frags), f.offset, f.id, f.more, next, frags[0].id, i < len(frags)-1)
		}
		next += f.payload
	}
	if next != size {
		t.Errorf("fragments cover %d bytes, want %d", next, size)
	}
}

// skipIPv4ForwardingUnderRace skips a test that forwards IPv4 data under
// -race: gVisor's IPv4 forwarding reads the TTL through a header slice
// whose chunk it has just freed (forward.go, bug 4), and the race detector
// reports it whenever another goroutine reuses the chunk in between. `make
// test` runs these tests again without -race.
func skipIPv4ForwardingUnderRace(t *testing.T) {
	t.Helper()
	if raceEnabled() {
		t.Skip("gVisor IPv4 forwarding use-after-free under -race; run without -race by make test")
	}
}

func familyName(v6 bool) string {
	if v6 {
		return "ipv6"
	}
	return "ipv4"
}

// fwdChain is S1—S2—S3 with S2's link to S3 narrower (1280) than S1's link
// to S2 (1472); wide logs what S1 sends to S2 and narrow what S2 sends to
// S3.
type fwdChain struct {
	*chain
	wide, narrow *wireLog
}

func newFwdChain(t *testing.T) *fwdChain {
	t.Helper()
	c := &fwdChain{wide: &wireLog{}, narrow: &wireLog{}}
	c.chain = newChain(t, 3, func(link, end int, tun *stack.Tunnel) {
		switch {
		case link == 0 && end == 0:
			tun.Wrap = func(tr endpoint.Transport) endpoint.Transport { c.wide.Transport = tr; return c.wide }
		case link == 1 && end == 0:
			tun.MTU = 1280
			tun.Wrap = func(tr endpoint.Transport) endpoint.Transport { c.narrow.Transport = tr; return c.narrow }
		}
	})
	return c
}

// udpDatagram sends payload without DF from one stack to a socket of
// another and returns what arrived there within 2 s, or nil.
func udpDatagram(t *testing.T, from, to *stack.Stack, dst netip.AddrPort, payload []byte) []byte {
	t.Helper()
	pc, err := to.ListenPacket("udp", dst.String())
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	sendNoDF(t, from, dst, payload)
	return recvOne(pc, 2*time.Second)
}

// recvOne reads one datagram on pc within d, or returns nil.
func recvOne(pc net.PacketConn, d time.Duration) []byte {
	pc.SetReadDeadline(time.Now().Add(d))
	buf := make([]byte, 65536)
	n, _, err := pc.ReadFrom(buf)
	if err != nil {
		return nil
	}
	return buf[:n]
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestForwardRefragmentIPv4 sends a 30,000-byte UDP datagram without DF
// from S1 to S3. S1 fragments it for its 1472-byte link; S2 cuts each
// fragment too big for the 1280-byte link to S3 into pieces numbered
// within the datagram; S3 reassembles the datagram byte for byte, its UDP
// checksum (computed by S1's endpoint, untouched by S2) intact.
func TestForwardRefragmentIPv4(t *testing.T) {
	skipIPv4ForwardingUnderRace(t)
	c := newFwdChain(t)
	msg := randomBytes(t, 30000)
	dst := netip.AddrPortFrom(c.addr(2, false), 9)
	before := c.s[1].ForwardStats()
	got := udpDatagram(t, c.s[0], c.s[2], dst, msg)
	if got == nil {
		t.Fatalf("S1 -> %v: the datagram did not arrive", dst)
	}
	if sha256.Sum256(got) != sha256.Sum256(msg) {
		t.Fatalf("S1 -> %v: %d bytes arrived, not the 30000 sent", dst, len(got))
	}
	quiesce(t, c.s[1])
	wide, narrow := udp4Fragments(c.wide.take()), udp4Fragments(c.narrow.take())
	// What S1 sent: fragments of the 30,008-byte UDP datagram at 1472.
	checkTiling(t, wide, 8+len(msg), 1472)
	wantRefrag, wantPieces := 0, 0
	for _, f := range wide {
		if f.size > 1280 {
			wantRefrag++
			wantPieces += (f.payload + 1255) / 1256 // (1280 - 20) rounded down to 8
		}
	}
	// What S2 sent on: every piece fits 1280, numbered within the datagram.
	checkTiling(t, narrow, 8+len(msg), 1280)
	if len(narrow) != len(wide)-wantRefrag+wantPieces {
		t.Errorf("S2 sent %d fragments to S3, want %d", len(narrow), len(wide)-wantRefrag+wantPieces)
	}
	st := c.s[1].ForwardStats()
	if got, want := st.Refragmented-before.Refragmented, uint64(wantRefrag); got != want || want == 0 {
		t.Errorf("S2 ForwardStats().Refragmented grew by %d, want %d", got, want)
	}
	if got, want := st.Fragments-before.Fragments, uint64(wantPieces); got != want {
		t.Errorf("S2 ForwardStats().Fragments grew by %d, want %d", got, want)
	}
	if n := c.s[2].GVisor().Stats().UDP.ChecksumErrors.Value(); n != 0 {
		t.Errorf("S3: %d UDP checksum errors", n)
	}
	if n := c.s[1].GVisor().Stats().IP.Forwarding.Errors.Value(); n != 0 {
		t.Errorf("S2: %d forwarding errors", n)
	}
}

// TestForwardFragmentsUntouched sends 30,000-byte datagrams without DF
// from S3 to S1, IPv4 and IPv6: S3 fragments them for 1472 bytes, which
// fit S2's link to S1, and S2 forwards the fragments exactly as they came
// (gVisor alone rewrote the first IPv4 fragment's UDP checksum and two
// bytes of data in each of the others), so they arrive byte for byte.
func TestForwardFragmentsUntouched(t *testing.T) {
	c := newFwdChain(t)
	for _, v6 := range []bool{false, true} {
		t.Run(familyName(v6), func(t *testing.T) {
			if !v6 {
				skipIPv4ForwardingUnderRace(t)
			}
			msg := randomBytes(t, 30000)
			dst := netip.AddrPortFrom(c.addr(0, v6), 9)
			bad0 := c.s[0].GVisor().Stats().UDP.ChecksumErrors.Value()
			got := udpDatagram(t, c.s[2], c.s[0], dst, msg)
			if got == nil || sha256.Sum256(got) != sha256.Sum256(msg) {
				t.Errorf("S3 -> %v: %d bytes arrived, want the 30000 sent", dst, len(got))
			}
			if n := c.s[0].GVisor().Stats().UDP.ChecksumErrors.Value() - bad0; n != 0 {
				t.Errorf("S3 -> %v: %d UDP checksum errors at S1", dst, n)
			}
		})
	}
	if st := c.s[1].ForwardStats(); st.Refragmented != 0 {
		t.Errorf("S2 cut %d packets that fit", st.Refragmented)
	}
}

// TestForwardIPv6TooBig sends the same datagram from S1 to S3 over IPv6.
// Routers do not fragment IPv6 (RFC 8200 §4.5): S2 refuses each 1472-byte
// fragment with Packet Too Big (MTU 1280), and the first datagram is lost.
// gVisor's UDP ignores Packet Too Big (udp endpoint HandleError), but S1's
// tunnel endpoint learns the path MTU to S3 from it (endpoint/pmtu6.go)
// and cuts the fragments gVisor still makes for 1472 bytes into fragments
// of the same datagram that fit 1280: the second datagram arrives byte for
// byte, and S2 refuses none of it.
func TestForwardIPv6TooBig(t *testing.T) {
	c := newFwdChain(t)
	s3 := c.addr(2, true)
	dst := netip.AddrPortFrom(s3, 9)
	ep := c.s[0].Endpoint("right")
	pc, err := c.s[2].ListenPacket("udp", dst.String())
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()

	// The first datagram: refused at S2, and S1 learns from it.
	msg := randomBytes(t, 30000)
	tooBig0, _ := tooBigSent(c.s[1], true)
	rcvd0 := c.s[0].GVisor().Stats().ICMP.V6.PacketsReceived.PacketTooBig.Value()
	sendNoDF(t, c.s[0], dst, msg)
	waitFor(t, "S1 to receive Packet Too Big", func() bool {
		return c.s[0].GVisor().Stats().ICMP.V6.PacketsReceived.PacketTooBig.Value() > rcvd0
	})
	if got := recvOne(pc, 500*time.Millisecond); got != nil {
		t.Errorf("datagram 1 arrived (%d bytes), though S2 refused its fragments", len(got))
	}
	quiesce(t, c.s[1])
	tooBig1, _ := tooBigSent(c.s[1], true)
	t.Logf("datagram 1: S1 sent %d packets, S2 sent %d Packet Too Big", len(c.wide.take()), tooBig1-tooBig0)
	if tooBig1 == tooBig0 {
		t.Errorf("datagram 1: S2 sent no Packet Too Big")
	}
	if mtu := ep.DestinationMTU(s3); mtu != 1280 {
		t.Errorf("S1's path MTU to %v = %d, want 1280", s3, mtu)
	}
	if n := ep.Stats().PathMTULearned; n == 0 {
		t.Errorf("S1's Stats().PathMTULearned = 0")
	}
	c.narrow.take()

	// The second datagram: cut to fit by S1, forwarded as it is by S2.
	msg = randomBytes(t, 30000)
	cut0 := ep.Stats().PathMTUCut
	sendNoDF(t, c.s[0], dst, msg)
	got := recvOne(pc, 2*time.Second)
	if got == nil {
		t.Fatalf("datagram 2 did not arrive")
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("datagram 2: %d bytes arrived, not the 30000 sent", len(got))
	}
	quiesce(t, c.s[1])
	var wide []wirePacket
	for _, p := range c.wide.take() {
		if p.v6 && p.proto == 17 && p.fragment {
			wide = append(wide, p)
		}
	}
	// checkTiling also checks that none is bigger than 1280.
	checkTiling(t, wide, 8+len(msg), 1280)
	// gVisor fragments for 1472, 1424 data bytes a fragment; S1's endpoint
	// cuts each into pieces of up to 1232 (1280 - 48).
	want := 0
	for off := 0; off < 8+len(msg); off += 1424 {
		want += (min(1424, 8+len(msg)-off) + 1231) / 1232
	}
	if len(wide) != want {
		t.Errorf("S1 sent %d fragments of datagram 2, want %d", len(wide), want)
	}
	if n := ep.Stats().PathMTUCut - cut0; n == 0 {
		t.Errorf("S1's Stats().PathMTUCut did not grow")
	}
	if narrow := c.narrow.take(); len(narrow) != len(wide) {
		t.Errorf("S2 sent %d packets to S3, want the %d fragments S1 sent", len(narrow), len(wide))
	}
	if tooBig2, _ := tooBigSent(c.s[1], true); tooBig2 != tooBig1 {
		t.Errorf("datagram 2: S2 sent %d Packet Too Big", tooBig2-tooBig1)
	}
	if n := c.s[2].GVisor().Stats().UDP.ChecksumErrors.Value(); n != 0 {
		t.Errorf("S3: %d UDP checksum errors", n)
	}
	if st := c.s[1].ForwardStats(); st.Refragmented != 0 {
		t.Errorf("S2 refragmented %d IPv6 packets; routers must not", st.Refragmented)
	}
}

// corrupter wraps a FOU transport and flips a bit of the UDP checksum of
// every inner IPv4 or IPv6 UDP packet to port 7777 it writes, as a bad
// link might; the IP header stays valid.
type corrupter struct {
	endpoint.Transport
}

// WriteBatch implements endpoint.Transport.WriteBatch.
func (c *corrupter) WriteBatch(msgs []endpoint.Message) (int, error) {
	for i := range msgs {
		b := msgs[i].Buffers[0]
		l3 := 0
		switch {
		case len(b) >= 28 && b[0]>>4 == 4 && b[9] == 17:
			l3 = int(b[0]&0xf) * 4
		case len(b) >= 48 && b[0]>>4 == 6 && b[6] == 17:
			l3 = 40
		}
		if l3 > 0 && len(b) >= l3+8 && binary.BigEndian.Uint16(b[l3+2:]) == 7777 {
			b[l3+6] ^= 0x10
		}
	}
	return c.Transport.WriteBatch(msgs)
}

// TestForwardCorruptedNotRepaired: a UDP datagram whose checksum is broken
// between S1 and the router S2 never reaches S3's application: gVisor
// alone would recompute the checksum in S2 and deliver corrupted data.
// The chain runs over the in-memory pipe and over real loopback UDP, where
// S2's kernel adds a valid outer checksum to what it forwards; the drop is
// counted as bad_checksum by S2 (whose endpoint verifies what S1's
// wrapped transport sent) or S3.
func TestForwardCorruptedNotRepaired(t *testing.T) {
	wrap := func(link, end int, tun *stack.Tunnel) {
		if link == 0 && end == 0 {
			tun.Wrap = func(tr endpoint.Transport) endpoint.Transport { return &corrupter{tr} }
		}
	}
	for _, kind := range []string{"pipe", "sockets"} {
		var c *chain
		if kind == "pipe" {
			c = newChain(t, 3, wrap)
		} else {
			c = newSocketChain(t, 3, wrap)
		}
		for _, v6 := range []bool{false, true} {
			t.Run(kind+"/"+familyName(v6), func(t *testing.T) {
				if !v6 {
					skipIPv4ForwardingUnderRace(t)
				}
				dst := netip.AddrPortFrom(c.addr(2, v6), 7777)
				pc, err := c.s[2].ListenPacket("udp", dst.String())
				if err != nil {
					t.Fatal(err)
				}
				defer pc.Close()
				bad := func() (n uint64) {
					for _, s := range c.s[1:] {
						for _, st := range s.Stats() {
							n += st.Drops[encap.BadChecksum]
						}
					}
					return n
				}
				bad0 := bad()
				sendNoDF(t, c.s[0], dst, []byte("corrupted in flight"))
				waitFor(t, "S2 or S3 to count a bad checksum", func() bool { return bad() > bad0 })
				if got := recvOne(pc, 100*time.Millisecond); got != nil {
					t.Errorf("to %v: a corrupted datagram was delivered: %q", dst, got)
				}
			})
		}
	}
}

// TestForwardLinkCapabilities: a forwarding stack's NICs, with a capture
// and the forwarding wrapper around the endpoint, still declare TX
// checksum offload (so that gVisor leaves forwarded packets alone) and
// host GSO.
func TestForwardLinkCapabilities(t *testing.T) {
	var pcap bytes.Buffer
	c := newChain(t, 3, func(link, end int, tun *stack.Tunnel) {
		if link == 1 && end == 0 {
			tun.Capture = &pcap
		}
	})
	for _, v6 := range []bool{false, true} {
		proto := ipv4.ProtocolNumber
		if v6 {
			proto = ipv6.ProtocolNumber
		}
		for _, dst := range []netip.Addr{c.addr(0, v6), c.addr(2, v6)} {
			r, terr := c.s[1].GVisor().FindRoute(0, tcpip.Address{}, tcpip.AddrFromSlice(dst.AsSlice()), proto, false)
			if terr != nil {
				t.Fatalf("route to %v: %v", dst, terr)
			}
			if r.RequiresTXTransportChecksum() {
				t.Errorf("S2's route to %v requires transport checksums: the TX checksum offload is hidden", dst)
			}
			if !r.HasHostGSOCapability() || r.GSOMaxSize() == 0 {
				t.Errorf("S2's route to %v has no host GSO (max %d)", dst, r.GSOMaxSize())
			}
			r.Release()
		}
	}
}

// TestForwardUDPConnNarrowHop sends datagrams from the stack's own UDP
// sockets (Dial, ListenPacket) across a hop narrower than the first link,
// as an application would. IPv4: they leave without DF, so the router
// fragments them and every one arrives, the first included (gVisor's
// default DF would have them refused at the hop every time). IPv6: the
// first draws Packet Too Big, the rest arrive cut to the learned MTU.
func TestForwardUDPConnNarrowHop(t *testing.T) {
	c := newFwdChain(t)
	for _, v6 := range []bool{false, true} {
		t.Run(familyName(v6), func(t *testing.T) {
			if !v6 {
				skipIPv4ForwardingUnderRace(t)
			}
			dst := netip.AddrPortFrom(c.addr(2, v6), 9)
			pc, err := c.s[2].ListenPacket("udp", dst.String())
			if err != nil {
				t.Fatal(err)
			}
			defer pc.Close()
			conn, err := c.s[0].Dial("udp", dst.String())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			for i, size := range []int{1400, 1400, 5000, 5000} {
				msg := randomBytes(t, size)
				if _, err := conn.Write(msg); err != nil {
					t.Fatal(err)
				}
				got := recvOne(pc, time.Second)
				if lost := v6 && i == 0; lost != (got == nil) {
					t.Fatalf("datagram %d of %d bytes: arrived %v, want %v", i, size, got != nil, !lost)
				}
				if got != nil && !bytes.Equal(got, msg) {
					t.Fatalf("datagram %d of %d bytes arrived changed", i, size)
				}
			}
			if st := c.s[1].ForwardStats(); !v6 && st.Refragmented == 0 {
				t.Errorf("the router cut no IPv4 packet: %+v", st)
			}
		})
	}
}
