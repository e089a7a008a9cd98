package endpoint

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"sort"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/endpoint/encap"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// packetTooBig builds an ICMPv6 message of type typ (2: Packet Too Big)
// from src to dst with mtu in its second word, quoting quote.
func packetTooBig(src, dst netip.Addr, typ uint8, mtu uint32, quote []byte) []byte {
	m := make([]byte, 8+len(quote))
	m[0] = typ
	binary.BigEndian.PutUint32(m[4:], mtu)
	copy(m[8:], quote)
	binary.BigEndian.PutUint16(m[2:], csum(m, pseudo(src, dst, 58, len(m))))
	return seedIPv6(src, dst, 58, m)
}

// sentTo is the start of a 1400-byte UDP datagram from inner6L to dst, as
// a Packet Too Big quotes it (as much as fits in 1280 bytes).
func sentTo(dst netip.Addr) []byte {
	p := seedIPv6(inner6L, dst, 17, make([]byte, 1400))
	return p[:MinIPv6MTU-40-8]
}

// fakeClock is a pmtuCache clock the test moves.
type fakeClock struct{ ns int64 }

func (c *fakeClock) now() int64              { return c.ns }
func (c *fakeClock) advance(d time.Duration) { c.ns += int64(d) }

// TestLearnTooBig feeds Packet Too Big messages, good and bad, through the
// receive path: each is still delivered, and only the good ones set the
// path MTU of the quoted packet's destination.
func TestLearnTooBig(t *testing.T) {
	r := newCsumRig(t)
	router := netip.MustParseAddr("fd98::fe")
	linkMTU := r.e.MTU()
	tests := []struct {
		name  string
		build func(far netip.Addr) []byte
		want  uint32 // 0: nothing learned
	}{
		{"1280", func(far netip.Addr) []byte { return packetTooBig(router, inner6L, 2, 1280, sentTo(far)) }, 1280},
		{"1400", func(far netip.Addr) []byte { return packetTooBig(router, inner6L, 2, 1400, sentTo(far)) }, 1400},
		{"link MTU - 1", func(far netip.Addr) []byte { return packetTooBig(router, inner6L, 2, linkMTU-1, sentTo(far)) }, linkMTU - 1},
		{"quoted source not the destination", func(far netip.Addr) []byte {
			q := sentTo(far)
			q[23] ^= 1
			return packetTooBig(router, inner6L, 2, 1280, q)
		}, 0},
		{"mtu below IPv6 minimum", func(far netip.Addr) []byte { return packetTooBig(router, inner6L, 2, 1279, sentTo(far)) }, 0},
		{"mtu 0", func(far netip.Addr) []byte { return packetTooBig(router, inner6L, 2, 0, sentTo(far)) }, 0},
		{"mtu of the link", func(far netip.Addr) []byte { return packetTooBig(router, inner6L, 2, linkMTU, sentTo(far)) }, 0},
		{"mtu above the link", func(far netip.Addr) []byte { return packetTooBig(router, inner6L, 2, 9000, sentTo(far)) }, 0},
		{"destination unreachable", func(far netip.Addr) []byte { return packetTooBig(router, inner6L, 1, 1280, sentTo(far)) }, 0},
		{"time exceeded", func(far netip.Addr) []byte { return packetTooBig(router, inner6L, 3, 1280, sentTo(far)) }, 0},
		{"quote truncated", func(far netip.Addr) []byte { return packetTooBig(router, inner6L, 2, 1280, sentTo(far)[:39]) }, 0},
		{"no quote", func(far netip.Addr) []byte { return packetTooBig(router, inner6L, 2, 1280, nil) }, 0},
		{"quote not IPv6", func(far netip.Addr) []byte {
			q := sentTo(far)
			q[0] = 0x45
			return packetTooBig(router, inner6L, 2, 1280, q)
		}, 0},
		{"bad checksum", func(far netip.Addr) []byte {
			p := packetTooBig(router, inner6L, 2, 1280, sentTo(far))
			p[42] ^= 0xff
			return p
		}, 0},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			far := netip.AddrFrom16([16]byte{0xfd, 0x97, 15: byte(i + 1)})
			b := tt.build(far)
			before := r.e.Stats().PathMTULearned
			m := Message{Buffers: [][]byte{b}, N: len(b), Addr: r.e.Remote()}
			// A Packet Too Big with a bad checksum is dropped before it
			// could teach anything; every other one reaches the stack.
			_, _, _, ok := r.e.decap(&m)
			if wantDrop := tt.name == "bad checksum"; ok == wantDrop {
				t.Fatalf("decap delivered %v, want %v: drops %v", ok, !wantDrop, r.e.Stats().Drops)
			}
			want, learned := tt.want, uint64(1)
			if want == 0 {
				want, learned = linkMTU, 0
			}
			if got := r.e.DestinationMTU(far); got != want {
				t.Errorf("DestinationMTU(%v) = %d, want %d", far, got, want)
			}
			if got := r.e.Stats().PathMTULearned - before; got != learned {
				t.Errorf("PathMTULearned grew by %d, want %d", got, learned)
			}
		})
	}
	if got := r.e.DestinationMTU(inner4R); got != linkMTU {
		t.Errorf("DestinationMTU(%v) = %d, want the link MTU %d", inner4R, got, linkMTU)
	}
}

// TestPathMTUCache: estimates only go down, expire after 10 minutes, and
// the oldest is evicted when the cache is full.
func TestPathMTUCache(t *testing.T) {
	var clk fakeClock
	c := pmtuCache{now: clk.now}
	addr := func(i int) [16]byte { return [16]byte{0xfd, 0x97, 14: byte(i >> 8), 15: byte(i)} }
	lookup := func(i int) uint32 { a := addr(i); return c.lookup(a[:]) }

	steps := []struct {
		mtu  uint32
		want bool
		then uint32
	}{
		{1400, true, 1400},
		{1450, false, 1400}, // never raised
		{1400, false, 1400},
		{1300, true, 1300},
	}
	for _, s := range steps {
		if got := c.learn(addr(0), s.mtu); got != s.want || lookup(0) != s.then {
			t.Errorf("learn(%d) = %v, then lookup = %d; want %v, %d", s.mtu, got, lookup(0), s.want, s.then)
		}
	}
	clk.advance(pmtuExpiry - time.Nanosecond)
	if got := lookup(0); got != 1300 {
		t.Errorf("lookup just before expiry = %d, want 1300", got)
	}
	clk.advance(time.Nanosecond)
	if got := lookup(0); got != 0 {
		t.Errorf("lookup at expiry = %d, want 0", got)
	}
	if n := c.n.Load(); n != 0 {
		t.Errorf("%d entries in use after expiry, want 0", n)
	}
	if !c.learn(addr(0), 1450) || lookup(0) != 1450 {
		t.Errorf("after expiry, a higher MTU was not learned: %d", lookup(0))
	}

	// Fill the cache; one more evicts the oldest, addr(0).
	for i := 1; i < pmtuCacheSize; i++ {
		clk.advance(time.Second)
		c.learn(addr(i), 1280)
	}
	clk.advance(time.Second)
	c.learn(addr(pmtuCacheSize), 1300)
	if got := lookup(0); got != 0 {
		t.Errorf("the oldest entry survived: %d", got)
	}
	for _, i := range []int{1, pmtuCacheSize - 1} {
		if got := lookup(i); got != 1280 {
			t.Errorf("entry %d = %d, want 1280", i, got)
		}
	}
	if got := lookup(pmtuCacheSize); got != 1300 {
		t.Errorf("the new entry = %d, want 1300", got)
	}
	if n := c.n.Load(); n != pmtuCacheSize {
		t.Errorf("%d entries in use, want %d", n, pmtuCacheSize)
	}
	// Age all but the newest past expiry: a new entry takes the oldest
	// slot, and lookups free the others.
	clk.advance(pmtuExpiry - time.Second)
	c.learn(addr(1000), 1280)
	if lookup(pmtuCacheSize) != 1300 || lookup(1000) != 1280 {
		t.Errorf("after expiry: entries %d, %d = %d, %d, want 1300, 1280",
			pmtuCacheSize, 1000, lookup(pmtuCacheSize), lookup(1000))
	}
	for i := 1; i < pmtuCacheSize; i++ {
		if got := lookup(i); got != 0 {
			t.Errorf("expired entry %d = %d, want 0", i, got)
		}
	}
	if n := c.n.Load(); n != 2 {
		t.Errorf("%d entries in use after the others expired, want 2", n)
	}
}

// fragFields are an IPv6 Fragment header's offset (bytes), M flag and
// Identification.
type fragFields struct {
	offset int
	more   bool
	id     uint32
}

// localIPv6 builds an IPv6 packet from inner6L to dst as gVisor hands it to
// the endpoint: the IPv6 header, and the Fragment header if frag is not
// nil, in NetworkHeader, everything after it in Data. Its traffic class,
// flow label and hop limit are set so that a copy shows.
func localIPv6(dst netip.Addr, next uint8, frag *fragFields, payload []byte, forwarded bool) *stack.PacketBuffer {
	var fh []byte
	if frag != nil {
		fh = make([]byte, 8)
		fh[0] = next
		fo := uint16(frag.offset)
		if frag.more {
			fo |= 1
		}
		binary.BigEndian.PutUint16(fh[2:], fo)
		binary.BigEndian.PutUint32(fh[4:], frag.id)
		next = 44
	}
	b := seedIPv6(inner6L, dst, next, append(fh, payload...))
	b[0], b[1], b[2], b[3], b[7] = 0x6b, 0xc1, 0x23, 0x45, 33 // traffic class 0xbc, flow label 0x12345
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(b), IsForwardedPacket: forwarded})
	pkt.NetworkProtocolNumber = ipv6.ProtocolNumber
	pkt.NetworkHeader().Consume(40 + len(fh))
	return pkt
}

// udpSegment is a UDP header (checksum 0, length n) and n-8 bytes of
// counting data.
func udpSegment(n int) []byte {
	b := make([]byte, n)
	binary.BigEndian.PutUint16(b[0:], 5353)
	binary.BigEndian.PutUint16(b[2:], 53)
	binary.BigEndian.PutUint16(b[4:], uint16(n))
	for i := 8; i < n; i++ {
		b[i] = byte(i*7 + i>>8)
	}
	return b
}

// piece is what a test expects of one fragment cutToPathMTU writes.
type piece struct {
	offset int
	more   bool
	n      int // data bytes
}

// writeOne writes pkt through the endpoint and releases it; it returns the
// bytes pkt held when the endpoint was done with it (checksum completed).
func writeOne(e *Endpoint, pkt *stack.PacketBuffer) []byte {
	var l stack.PacketBufferList
	l.PushBack(pkt)
	e.WritePackets(l)
	b := flatten(pkt)
	pkt.DecRef()
	return b
}

// TestCutToPathMTU writes IPv6 packets to a destination whose path MTU is
// 1280 (and to others) and checks each fragment it is cut into by hand:
// header fields copied, Fragment header offset, M and Identification, data
// from the right place; and that what must not be cut is sent as it is.
func TestCutToPathMTU(t *testing.T) {
	r := newCsumRig(t)
	r.e.pmtu6.learn(inner6R.As16(), 1280)
	other := netip.MustParseAddr("fd99::3")
	const gvID = 0xdeadbeef
	r.e.fragID.Store(0x100) // the next fresh Identification is 0x101
	tests := []struct {
		name     string
		pkt      func() *stack.PacketBuffer
		id       uint32
		want     []piece // nil: sent as it is
		wantNext uint8
	}{
		{"whole udp", func() *stack.PacketBuffer { return localIPv6(inner6R, 17, nil, udpSegment(1400), false) },
			0x101, []piece{{0, true, 1232}, {1232, false, 168}}, 17},
		{"whole icmpv6", func() *stack.PacketBuffer { return localIPv6(inner6R, 58, nil, make([]byte, 1432), false) },
			0x102, []piece{{0, true, 1232}, {1232, false, 200}}, 58},
		{"first fragment", func() *stack.PacketBuffer {
			return localIPv6(inner6R, 17, &fragFields{0, true, gvID}, bytes.Repeat([]byte{1}, 1424), false)
		}, gvID, []piece{{0, true, 1232}, {1232, true, 192}}, 17},
		{"middle fragment", func() *stack.PacketBuffer {
			return localIPv6(inner6R, 17, &fragFields{1424, true, gvID}, bytes.Repeat([]byte{2}, 1424), false)
		}, gvID, []piece{{1424, true, 1232}, {2656, true, 192}}, 17},
		{"last fragment", func() *stack.PacketBuffer {
			return localIPv6(inner6R, 17, &fragFields{2848, false, gvID}, bytes.Repeat([]byte{3}, 1300), false)
		}, gvID, []piece{{2848, true, 1232}, {4080, false, 68}}, 17},
		{"fits", func() *stack.PacketBuffer { return localIPv6(inner6R, 17, nil, udpSegment(1240), false) }, 0, nil, 0},
		{"other destination", func() *stack.PacketBuffer { return localIPv6(other, 17, nil, udpSegment(1400), false) }, 0, nil, 0},
		{"forwarded", func() *stack.PacketBuffer { return localIPv6(inner6R, 17, nil, udpSegment(1400), true) }, 0, nil, 0},
		{"forwarded fragment", func() *stack.PacketBuffer {
			return localIPv6(inner6R, 17, &fragFields{1424, true, gvID}, make([]byte, 1424), true)
		}, 0, nil, 0},
		{"tcp", func() *stack.PacketBuffer {
			seg := make([]byte, 1400)
			seg[12] = 5 << 4
			return localIPv6(inner6R, 6, nil, seg, false)
		}, 0, nil, 0},
		{"tcp fragment", func() *stack.PacketBuffer {
			return localIPv6(inner6R, 6, &fragFields{1424, true, gvID}, make([]byte, 1424), false)
		}, 0, nil, 0},
		{"hop-by-hop options", func() *stack.PacketBuffer {
			hbh := append([]byte{17, 0, 1, 4, 0, 0, 0, 0}, udpSegment(1400)...)
			return localIPv6(inner6R, 0, nil, hbh, false)
		}, 0, nil, 0},
		{"destination options after fragment", func() *stack.PacketBuffer {
			return localIPv6(inner6R, 60, &fragFields{1424, true, gvID}, make([]byte, 1424), false)
		}, 0, nil, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r.tr.takeData()
			cut0 := r.e.Stats().PathMTUCut
			orig := writeOne(r.e, tt.pkt())
			sent := r.tr.takeData()
			if tt.want == nil {
				if len(sent) != 1 || !bytes.Equal(sent[0], orig) {
					t.Errorf("sent %d packets, want the packet as it was", len(sent))
				}
				if n := r.e.Stats().PathMTUCut - cut0; n != 0 {
					t.Errorf("PathMTUCut grew by %d", n)
				}
				return
			}
			checkPieces(t, sent, orig, tt.want, tt.id, tt.wantNext)
			if n := r.e.Stats().PathMTUCut - cut0; n != 1 {
				t.Errorf("PathMTUCut grew by %d, want 1", n)
			}
		})
	}
	if st := r.e.Stats(); st.DropTotal() != 0 {
		t.Errorf("drops: %v", st.Drops)
	}
}

// checkPieces checks the fragments sent against want, cut from orig.
func checkPieces(t *testing.T, sent [][]byte, orig []byte, want []piece, id uint32, next uint8) {
	t.Helper()
	if len(sent) != len(want) {
		t.Fatalf("sent %d packets, want %d", len(sent), len(want))
	}
	hl, base := 40, 0
	if orig[6] == 44 {
		hl, base = 48, int(binary.BigEndian.Uint16(orig[42:])&^7)
	}
	data := orig[hl:]
	var got []byte
	for i, p := range sent {
		w := want[i]
		if len(p) != 48+w.n || len(p) > MinIPv6MTU {
			t.Fatalf("fragment %d: %d bytes, want %d (at most %d)", i, len(p), 48+w.n, MinIPv6MTU)
		}
		// The fixed header is orig's but for payload length and next header.
		h := append([]byte(nil), orig[:40]...)
		binary.BigEndian.PutUint16(h[4:], uint16(8+w.n))
		h[6] = 44
		if !bytes.Equal(p[:40], h) {
			t.Errorf("fragment %d: IPv6 header\n% x, want\n% x", i, p[:40], h)
		}
		fo := binary.BigEndian.Uint16(p[42:])
		if p[40] != next || p[41] != 0 || int(fo&^7) != w.offset || fo&6 != 0 || (fo&1 != 0) != w.more ||
			binary.BigEndian.Uint32(p[44:]) != id {
			t.Errorf("fragment %d: Fragment header % x, want next header %d, offset %d, M %v, ID %#x",
				i, p[40:48], next, w.offset, w.more, id)
		}
		if off := w.offset - base; !bytes.Equal(p[48:], data[off:off+w.n]) {
			t.Errorf("fragment %d: the data is not orig's at %d", i, w.offset)
		}
		got = append(got, p[48:]...)
	}
	if !bytes.Equal(got, data) {
		t.Errorf("the fragments' data, %d bytes, is not the %d of the packet cut", len(got), len(data))
	}
}

// TestCutGVisorDatagram sends a 4000-byte UDP datagram from a gVisor stack
// to a destination with path MTU 1280. gVisor fragments it for the tunnel
// (1472); the endpoint completes its checksum, holding the first fragment
// until the last is written, and cuts every fragment, the held one
// included, to fit 1280. Reassembled by hand, the fragments give back the
// datagram with a valid checksum.
func TestCutGVisorDatagram(t *testing.T) {
	r := newCsumRig(t)
	r.e.pmtu6.learn(inner6R.As16(), 1280)
	big := make([]byte, 4000)
	for i := range big {
		big[i] = byte(i*13 + i>>8)
	}
	r.tr.takeData()
	r.sendUDP(t, inner6R, big)
	var ps []l4Packet
	for _, b := range r.tr.takeData() {
		if len(b) > MinIPv6MTU {
			t.Errorf("a %d-byte packet left, over the path MTU 1280", len(b))
		}
		if p := parseInner(t, b); p.proto == 17 && p.dst == inner6R {
			ps = append(ps, p)
		}
	}
	// 4008 bytes: gVisor's fragments of 1424, 1424 and 1160 bytes, the
	// first two cut in two.
	if len(ps) != 5 {
		t.Fatalf("%d fragments sent, want 5", len(ps))
	}
	sort.Slice(ps, func(i, j int) bool { return ps[i].offset < ps[j].offset })
	var dgram []byte
	for i, p := range ps {
		if p.offset != len(dgram) || p.more != (i < len(ps)-1) || p.id != ps[0].id {
			t.Fatalf("fragment %d: offset %d MF %v ID %#x, want offset %d MF %v ID %#x",
				i, p.offset, p.more, p.id, len(dgram), i < len(ps)-1, ps[0].id)
		}
		dgram = append(dgram, p.payload...)
	}
	if !bytes.Equal(dgram[8:], big) {
		t.Fatal("reassembled payload differs from what was sent")
	}
	if !checksumOK(inner6L, inner6R, 17, dgram) {
		t.Errorf("checksum %#04x of the reassembled datagram does not verify", binary.BigEndian.Uint16(dgram[6:]))
	}
	if st := r.e.Stats(); st.PathMTUCut != 2 || st.PathMTUPieces != 4 || st.DropTotal() != 0 {
		t.Errorf("PathMTUCut %d, PathMTUPieces %d, drops %v; want 2, 4, none", st.PathMTUCut, st.PathMTUPieces, st.Drops)
	}
}

// TestCutRawFraming: over a raw IPv4 transport each fragment gets an outer
// header of its own.
func TestCutRawFraming(t *testing.T) {
	tr := newMemTransport(FramingRawIPv4, netip.AddrPortFrom(outer4L, 0))
	e, err := New(Options{Transport: tr, Remote: netip.AddrPortFrom(outer4R, 0)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	e.pmtu6.learn(inner6R.As16(), 1280)
	orig := writeOne(e, localIPv6(inner6R, 17, &fragFields{1424, true, 7}, bytes.Repeat([]byte{9}, 1424), false))
	sent := tr.takeData()
	for i, d := range sent {
		if len(d) < 20 || d[9] != encap.ProtoIPv6 || int(binary.BigEndian.Uint16(d[2:])) != len(d) {
			t.Fatalf("datagram %d: outer header % x, want protocol 41 and total length %d", i, d[:min(len(d), 20)], len(d))
		}
		sent[i] = d[20:]
	}
	checkPieces(t, sent, orig, []piece{{1424, true, 1232}, {2656, true, 192}}, 7, 17)
}

// TestCutAllocs: cutting a whole packet or a fragment into pieces does not
// allocate once the batch buffers exist.
func TestCutAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector makes sync.Pool drop items")
	}
	e, err := New(Options{Transport: &fakeTransport{framing: FramingUDP, local: netip.AddrPortFrom(outer4L, 4700), done: make(chan struct{})},
		Remote: netip.AddrPortFrom(outer4R, 4701), DisableGSO: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	e.pmtu6.learn(inner6R.As16(), 1280)
	for _, tt := range []struct {
		name string
		pkt  *stack.PacketBuffer
	}{
		{"whole", localIPv6(inner6R, 17, nil, udpSegment(1400), false)},
		{"fragment", localIPv6(inner6R, 17, &fragFields{1424, true, 7}, make([]byte, 1424), false)},
	} {
		defer tt.pkt.DecRef()
		var l stack.PacketBufferList
		l.PushBack(tt.pkt)
		cut0 := e.Stats().PathMTUCut
		n := testing.AllocsPerRun(1000, func() { e.WritePackets(l) })
		if n != 0 {
			t.Errorf("%s: WritePackets allocates %.1f times per cut packet, want 0", tt.name, n)
		}
		if e.Stats().PathMTUCut == cut0 {
			t.Errorf("%s: not cut", tt.name)
		}
	}
}

// FuzzParseTooBig: parseTooBig never panics, and what it accepts is a
// Packet Too Big within bounds whose quote it read the destination from.
func FuzzParseTooBig(f *testing.F) {
	router, far := netip.MustParseAddr("fd98::fe"), netip.MustParseAddr("fd97::1")
	f.Add(packetTooBig(router, inner6L, 2, 1280, sentTo(far)))
	f.Add(packetTooBig(router, inner6L, 2, 1400, sentTo(far)[:40]))
	f.Add(packetTooBig(router, inner6L, 2, 1280, sentTo(far)[:39]))
	f.Add(packetTooBig(router, inner6L, 1, 1280, sentTo(far)))
	f.Fuzz(func(t *testing.T, b []byte) {
		dst, mtu, ok := parseTooBig(b, 1472)
		if !ok {
			return
		}
		if mtu < MinIPv6MTU || mtu >= 1472 || len(b) < 88 || b[40] != 2 || dst != [16]byte(b[72:88]) {
			t.Fatalf("parseTooBig(% x) = %x, %d, true", b[:min(len(b), 88)], dst, mtu)
		}
	})
}
