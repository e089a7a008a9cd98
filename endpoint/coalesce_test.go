package endpoint

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"sync"
	"testing"

	"github.com/ipipstack/ipipstack/endpoint/encap"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// offloadTransport is a fakeTransport whose reads the kernel verified and
// coalesced (UDP GRO and checksums), as the UDP socket transport's are.
type offloadTransport struct{ fakeTransport }

func (*offloadTransport) Offloads() Offloads { return Offloads{GRO: true, RXChecksum: true} }

// recorder keeps a copy of every packet delivered to it.
type recorder struct {
	mu    sync.Mutex
	pkts  [][]byte
	valid []bool // RXChecksumValidated
}

func (r *recorder) DeliverNetworkPacket(_ tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pkts = append(r.pkts, bytes.Clone(pkt.ToView().AsSlice()))
	r.valid = append(r.valid, pkt.RXChecksumValidated)
}

func (r *recorder) DeliverLinkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {}

func newCoalesceRig(t *testing.T) (*Endpoint, netip.AddrPort) {
	t.Helper()
	local, remote := netip.AddrPortFrom(outer4L, 4700), netip.AddrPortFrom(outer4R, 4701)
	tr := &offloadTransport{fakeTransport{framing: FramingUDP, local: local, done: make(chan struct{})}}
	link := []netip.Prefix{netip.MustParsePrefix("10.99.0.0/24"), netip.MustParsePrefix("fd99::/64")}
	e, err := New(Options{Transport: tr, Remote: remote, AllowedSources: link, OnLink: link})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return e, remote
}

// tcpSeg builds one TCP segment from inner*R to inner*L with valid
// checksums: 12 bytes of timestamp option, the given flags and payload.
func tcpSeg(v6 bool, tos uint8, seq uint32, flags uint8, payload []byte) []byte {
	tcp := make([]byte, 32+len(payload))
	binary.BigEndian.PutUint16(tcp[0:], 5001)
	binary.BigEndian.PutUint16(tcp[2:], 41000)
	binary.BigEndian.PutUint32(tcp[4:], seq)
	binary.BigEndian.PutUint32(tcp[8:], 777)
	tcp[12] = 8 << 4
	tcp[13] = flags
	binary.BigEndian.PutUint16(tcp[14:], 512)
	copy(tcp[20:], []byte{1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 7}) // NOP NOP TS
	copy(tcp[32:], payload)
	src, dst := inner4R, inner4L
	if v6 {
		src, dst = inner6R, inner6L
	}
	binary.BigEndian.PutUint16(tcp[16:], csum(tcp, pseudo(src, dst, 6, len(tcp))))
	var p []byte
	if v6 {
		p = seedIPv6(src, dst, 6, tcp)
		p[0], p[1] = 0x60|tos>>4, tos<<4
	} else {
		p = seedIPv4(src, dst, 6, tos, 0x4000, tcp)
	}
	return p
}

// groRead is what a UDP GRO read of these datagrams looks like: all but
// the last of the same size, back to back.
func groRead(segs [][]byte, from netip.AddrPort, verified bool) (Message, *buffer.View) {
	v := buffer.NewViewSize(recvBufSize)
	n := 0
	for _, s := range segs {
		n += copy(v.AsSlice()[n:], s)
	}
	return Message{Buffers: [][]byte{v.AsSlice()}, N: n, Addr: from, Verified: verified, GSOSize: len(segs[0])}, v
}

// TestCoalesce feeds GRO reads of TCP segments to the receive path and
// checks which packets reach the stack.
func TestCoalesce(t *testing.T) {
	const mss = 1400
	data := make([]byte, 20*mss)
	for i := range data {
		data[i] = byte(rand.Uint32())
	}
	type segSpec struct {
		seq   uint32
		flags uint8
		tos   uint8
		n     int // payload bytes
		drop  bool
		// corrupt flips a payload bit after the checksum was computed.
		corrupt bool
	}
	full := func(from, to int) []segSpec {
		var s []segSpec
		for i := from; i < to; i++ {
			s = append(s, segSpec{seq: uint32(1000 + i*mss), flags: tcpACK, n: mss})
		}
		return s
	}
	with := func(s []segSpec, i int, f func(*segSpec)) []segSpec {
		f(&s[i])
		return s
	}
	tests := []struct {
		name     string
		v6       bool
		verified bool
		segs     []segSpec
		want     []int // segments per delivered packet
	}{
		{"one run", false, true, with(full(0, 9), 8, func(s *segSpec) { s.flags, s.n = tcpACKPSH, 300 }), []int{9}},
		{"one run ipv6", true, true, full(0, 12), []int{12}},
		// Not verified by the kernel: the endpoint verifies each segment
		// itself, merges the good ones and drops the corrupted one.
		{"unverified", false, false, full(0, 5), []int{5}},
		{"unverified corrupted", false, false, with(full(0, 6), 2, func(s *segSpec) { s.corrupt = true }), []int{2, 3}},
		{"sequence gap", false, true, append(full(0, 4), full(5, 9)...), []int{4, 4}},
		{"PSH ends a run", false, true, with(full(0, 6), 2, func(s *segSpec) { s.flags = tcpACKPSH }), []int{3, 3}},
		{"FIN not merged", false, true, with(full(0, 6), 5, func(s *segSpec) { s.flags = tcpACK | tcpFlagFIN }), []int{5, 1}},
		{"CE differs", false, true, with(full(0, 6), 3, func(s *segSpec) { s.tos = 3 }), []int{3, 1, 2}},
		{"short segment ends a run", false, true, with(full(0, 6), 2, func(s *segSpec) { s.n = 100 }), []int{3, 3}},
		{"dropped segment", false, true, with(full(0, 6), 2, func(s *segSpec) { s.drop = true }), []int{2, 3}},
		{"pure ACKs", false, true, []segSpec{{seq: 1000, flags: tcpACK}, {seq: 1000, flags: tcpACK}}, []int{1, 1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e, remote := newCoalesceRig(t)
			var segs [][]byte
			var want [][]byte // payload of each delivered packet
			var cur []byte
			for _, s := range tc.segs {
				off := int(s.seq-1000) % len(data)
				seg := tcpSeg(tc.v6, s.tos, s.seq, s.flags, data[off:off+s.n])
				if s.drop {
					// A source outside the allowed prefixes (and so a
					// stale header checksum): the receive path drops it.
					seg[12] = 11
				}
				if s.corrupt {
					seg[len(seg)-1] ^= 0x01
				}
				segs = append(segs, seg)
			}
			// All datagrams of a GRO read have the same size but the
			// last: pad with trailing bytes that ValidateInner trims.
			gso := 0
			for _, s := range segs {
				gso = max(gso, len(s))
			}
			for i, s := range segs {
				if len(s) < gso && i < len(segs)-1 {
					segs[i] = append(s, make([]byte, gso-len(s))...)
				}
			}
			pos := 0
			for _, n := range tc.want {
				cur = nil
				for range n {
					for tc.segs[pos].drop || tc.segs[pos].corrupt {
						pos++
					}
					s := tc.segs[pos]
					off := int(s.seq-1000) % len(data)
					cur = append(cur, data[off:off+s.n]...)
					pos++
				}
				want = append(want, cur)
			}
			m, v := groRead(segs, remote, tc.verified)
			defer v.Release()
			var rec recorder
			var seg Message
			seg.Buffers = make([][]byte, 1)
			before := e.Stats()
			rx := directRX(&rec)
			shared := e.deliverCoalesced(rx, &m, &seg, v)
			e.deliverPending(rx)
			after := e.Stats()
			if len(rec.pkts) != len(tc.want) {
				t.Fatalf("delivered %d packets, want %d (segments per packet %v)", len(rec.pkts), len(tc.want), tc.want)
			}
			merged := false
			for i, p := range rec.pkts {
				l3 := header.IPv4MinimumSize
				if tc.v6 {
					l3 = header.IPv6MinimumSize
					if got := int(header.IPv6(p).PayloadLength()) + l3; got != len(p) {
						t.Errorf("packet %d: IPv6 payload length says %d bytes, packet has %d", i, got, len(p))
					}
				} else {
					h := header.IPv4(p)
					if int(h.TotalLength()) != len(p) || !h.IsChecksumValid() {
						t.Errorf("packet %d: IPv4 total length %d for %d bytes, checksum valid %v", i, h.TotalLength(), len(p), h.IsChecksumValid())
					}
				}
				tcp := header.TCP(p[l3:])
				payload := p[l3+int(tcp.DataOffset()):]
				if sha256.Sum256(payload) != sha256.Sum256(want[i]) {
					t.Errorf("packet %d: payload of %d bytes differs from the %d bytes of its segments", i, len(payload), len(want[i]))
				}
				if tc.want[i] > 1 {
					merged = true
					if !rec.valid[i] {
						t.Errorf("packet %d: merged but not marked RXChecksumValidated", i)
					}
				}
			}
			if shared != merged {
				t.Errorf("deliverCoalesced reports buffer shared %v, merged %v", shared, merged)
			}
			var nmerged uint64
			for _, n := range tc.want {
				if n > 1 {
					nmerged += uint64(n)
				}
			}
			if got := after.RxCoalesced - before.RxCoalesced; got != nmerged {
				t.Errorf("RxCoalesced +%d, want +%d", got, nmerged)
			}
			var corrupted uint64
			for _, s := range tc.segs {
				if s.corrupt {
					corrupted++
				}
			}
			if got := after.Drops[encap.BadChecksum] - before.Drops[encap.BadChecksum]; got != corrupted {
				t.Errorf("bad_checksum +%d, want +%d", got, corrupted)
			}
			if tc.name == "one run" {
				last := rec.pkts[0]
				if f := last[header.IPv4MinimumSize+13]; f != tcpACKPSH {
					t.Errorf("merged packet flags %#x, want ACK|PSH from its last segment", f)
				}
			}
		})
	}
}

// TestCoalesceOutlivesBuffer checks that a merged packet's payload stays
// intact after the receive buffer it points into is released and its
// memory reused: the packet holds its own reference.
func TestCoalesceOutlivesBuffer(t *testing.T) {
	e, remote := newCoalesceRig(t)
	payload := bytes.Repeat([]byte("0123456789abcdef"), 80)
	var segs [][]byte
	for i := range 4 {
		segs = append(segs, tcpSeg(false, 0, uint32(1000+i*len(payload)), tcpACK, payload))
	}
	m, v := groRead(segs, remote, true)
	var keep []*stack.PacketBuffer
	d := dispatchFunc(func(pkt *stack.PacketBuffer) { keep = append(keep, pkt.IncRef()) })
	var seg Message
	seg.Buffers = make([][]byte, 1)
	if !e.deliverCoalesced(directRX(d), &m, &seg, v) {
		t.Fatal("four full segments were not merged")
	}
	v.Release()
	// Reuse the pool's 64 KiB chunks, scribbling over them.
	for range 8 {
		w := buffer.NewViewSize(recvBufSize)
		for i := range w.AsSlice() {
			w.AsSlice()[i] = 0xee
		}
		w.Release()
	}
	if len(keep) != 1 {
		t.Fatalf("delivered %d packets, want 1", len(keep))
	}
	b := keep[0].ToView().AsSlice()
	got := b[header.IPv4MinimumSize+32:]
	if want := bytes.Repeat(payload, 4); !bytes.Equal(got, want) {
		t.Fatalf("merged payload changed after the receive buffer was released")
	}
	keep[0].DecRef()
}

type dispatchFunc func(*stack.PacketBuffer)

func (f dispatchFunc) DeliverNetworkPacket(_ tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	f(pkt)
}
func (dispatchFunc) DeliverLinkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {}

// FuzzDeliverCoalesced feeds arbitrary GRO reads, verified by the kernel,
// through the coalescing receive path into a real stack: nothing may
// panic, every datagram is either counted as received or dropped with a
// reason, and every packet the stack gets is a valid IP packet.
func FuzzDeliverCoalesced(f *testing.F) {
	payload := bytes.Repeat([]byte{0xab}, 500)
	var seed []byte
	for i := range 4 {
		seed = append(seed, tcpSeg(false, 0, uint32(1000+i*len(payload)), tcpACK, payload)...)
	}
	f.Add(uint16(len(seed)/4), seed)
	var seed6 []byte
	for i := range 3 {
		seed6 = append(seed6, tcpSeg(true, 0, uint32(1000+i*len(payload)), tcpACK, payload)...)
	}
	f.Add(uint16(len(seed6)/3), seed6)
	f.Add(uint16(40), append(tcpSeg(false, 0, 1, tcpACK, nil), tcpSeg(false, 3, 1, tcpACKPSH, []byte("x"))...))
	local, remote := netip.AddrPortFrom(outer4L, 4700), netip.AddrPortFrom(outer4R, 4701)
	r := newFuzzRigOn(f, &offloadTransport{fakeTransport{framing: FramingUDP, local: local, done: make(chan struct{})}}, remote)
	f.Fuzz(func(t *testing.T, gso uint16, data []byte) {
		if gso == 0 || len(data) == 0 || len(data) > recvBufSize {
			return
		}
		v := buffer.NewViewSize(recvBufSize)
		defer v.Release()
		n := copy(v.AsSlice(), data)
		m := Message{Buffers: [][]byte{v.AsSlice()}, N: n, Addr: r.remote, Verified: true, GSOSize: int(gso)}
		datagrams := (n + int(gso) - 1) / int(gso)
		before := r.e.Stats()
		d := &checkingDispatcher{t: t, next: r.disp}
		var seg Message
		seg.Buffers = make([][]byte, 1)
		b := directRX(d)
		r.e.deliverCoalesced(b, &m, &seg, v)
		r.e.deliverPending(b)
		after := r.e.Stats()
		rx := after.RxPackets - before.RxPackets
		drops := rxDrops(&after) - rxDrops(&before)
		if rx+drops != uint64(datagrams) || uint64(d.delivered) > rx {
			t.Fatalf("%d datagrams: rx +%d, drops +%d, delivered %d", datagrams, rx, drops, d.delivered)
		}
	})
}

// TestCoalesceAllocs checks that merging a GRO read allocates nothing in
// steady state: headers, views and packets come from gVisor's pools.
func TestCoalesceAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector makes sync.Pool drop items, so pooled paths allocate")
	}
	e, remote := newCoalesceRig(t)
	payload := bytes.Repeat([]byte{7}, 1400)
	var segs [][]byte
	for i := range 40 {
		segs = append(segs, tcpSeg(false, 0, uint32(1000+i*len(payload)), tcpACK, payload))
	}
	m, v := groRead(segs, remote, true)
	defer v.Release()
	var seg Message
	seg.Buffers = make([][]byte, 1)
	delivered := 0
	d := dispatchFunc(func(*stack.PacketBuffer) { delivered++ })
	rx := directRX(d)
	n := testing.AllocsPerRun(1000, func() { e.deliverCoalesced(rx, &m, &seg, v) })
	if delivered == 0 || e.Stats().RxCoalesced == 0 {
		t.Fatal("nothing was merged")
	}
	if n != 0 {
		t.Errorf("deliverCoalesced: %v allocations per GRO read of 40 segments, want 0", n)
	}
}
