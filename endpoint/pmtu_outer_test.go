package endpoint

import (
	"encoding/binary"
	"net/netip"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/endpoint/encap"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// pathTransport is a raw IPv4 memTransport behind a path of MTU pmtu: like
// the kernel, it refuses an outer packet with DF that is bigger than the
// path MTU with EMSGSIZE, fragments one without DF (here: sends it), and
// tells the path MTU (PathMTUer).
type pathTransport struct {
	*memTransport
	pmtu atomic.Int32
	// frag is what allowFragmentation last set.
	frag atomic.Bool
}

func (p *pathTransport) PathMTU(netip.Addr) (int, error) { return int(p.pmtu.Load()), nil }

func (p *pathTransport) allowFragmentation(on bool) error {
	p.frag.Store(on)
	return nil
}

func (p *pathTransport) WriteBatch(msgs []Message) (int, error) {
	for i := range msgs {
		if datagramSize(&msgs[i]) > int(p.pmtu.Load()) && msgs[i].Buffers[0][6]&0x40 != 0 {
			n, _ := p.memTransport.WriteBatch(msgs[:i])
			return n, syscall.EMSGSIZE
		}
	}
	return p.memTransport.WriteBatch(msgs)
}

// newPathRig is a raw IPv4 endpoint over a pathTransport whose path MTU is
// 1500 until the test lowers it, attached to a recording dispatcher.
func newPathRig(t *testing.T, opts Options) (*Endpoint, *pathTransport, *recDispatcher) {
	t.Helper()
	pt := &pathTransport{memTransport: newMemTransport(FramingRawIPv4, netip.AddrPortFrom(outer4L, 0))}
	pt.pmtu.Store(1500)
	opts.Transport, opts.Remote = pt, netip.AddrPortFrom(outer4R, 0)
	e, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	d := &recDispatcher{}
	e.Attach(d)
	t.Cleanup(e.Close)
	return e, pt, d
}

// innerPacket is an IPv4 (flags frag) or IPv6 packet of size bytes, IP
// protocol 253 (RFC 3692 experimentation), from the local inner address
// to the remote one, as gVisor hands it to the endpoint.
func innerPacket(v6 bool, frag uint16, size int) *stack.PacketBuffer {
	var b []byte
	hl := 20
	if v6 {
		b, hl = seedIPv6(inner6L, inner6R, 253, make([]byte, size-40)), 40
	} else {
		b = seedIPv4(inner4L, inner4R, 253, 0, frag, make([]byte, size-20))
	}
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(b)})
	pkt.NetworkHeader().Consume(hl)
	return pkt
}

// sentOuter writes pkt and returns the one outer packet the transport
// took, or nil if none.
func sentOuter(t *testing.T, e *Endpoint, pt *pathTransport, pkt *stack.PacketBuffer) []byte {
	t.Helper()
	writeOne(e, pkt)
	d := pt.takeData()
	switch len(d) {
	case 0:
		return nil
	case 1:
		return d[0]
	}
	t.Fatalf("%d outer packets sent for one inner packet", len(d))
	return nil
}

// TestOuterPathBelowIPv6Minimum lowers the outer path MTU to 552 under a
// raw IPv4 tunnel: the MTU stays at 1280, IPv6 packets above the path
// leave with DF clear and a valid header checksum, smaller ones with DF,
// an IPv4 packet with DF above the path is answered with Fragmentation
// Needed quoting 532, one without DF is sent; and when the learned path
// MTU expires with the path back at 1500, all is as before.
func TestOuterPathBelowIPv6Minimum(t *testing.T) {
	e, pt, d := newPathRig(t, Options{PathMTUExpiry: 50 * time.Millisecond})
	pt.pmtu.Store(552)
	if p := sentOuter(t, e, pt, innerPacket(true, 0, 1400)); p != nil {
		t.Fatalf("a 1420-byte outer packet with DF crossed a 552-byte path")
	}
	st := e.Stats()
	if e.MTU() != 1280 || st.OuterPathMTU != 552 || !st.OuterFragmentation || !pt.frag.Load() || st.Drops[encap.TooBig] != 1 {
		t.Fatalf("after EMSGSIZE: MTU %d, outer path MTU %d, outer fragmentation %v, transport fragments %v, TooBig %d; want 1280, 552, true, true, 1",
			e.MTU(), st.OuterPathMTU, st.OuterFragmentation, pt.frag.Load(), st.Drops[encap.TooBig])
	}
	if !st.OuterPathMTUExpires.After(st.OuterPathMTULearned) {
		t.Errorf("expires %v, not after learned %v", st.OuterPathMTUExpires, st.OuterPathMTULearned)
	}

	for _, tc := range []struct {
		name string
		v6   bool
		frag uint16
		size int
		df   bool
	}{
		{"ipv6 1200", true, 0, 1200, false},
		{"ipv6 532", true, 0, 532, true},
		{"ipv6 200", true, 0, 200, true},
		{"ipv4 without DF 1000", false, 0, 1000, false},
		{"ipv4 with DF 532", false, 0x4000, 532, true},
	} {
		p := sentOuter(t, e, pt, innerPacket(tc.v6, tc.frag, tc.size))
		if p == nil {
			t.Errorf("%s: not sent", tc.name)
			continue
		}
		if got := int(binary.BigEndian.Uint16(p[2:])); got != tc.size+20 || len(p) != got {
			t.Errorf("%s: outer length %d (%d bytes), want %d", tc.name, got, len(p), tc.size+20)
		}
		if df := p[6]&0x40 != 0; df != tc.df {
			t.Errorf("%s: outer DF %v, want %v (flags %#02x)", tc.name, df, tc.df, p[6])
		}
		if encap.Checksum(p[:20]) != 0 {
			t.Errorf("%s: outer header checksum does not verify: % x", tc.name, p[:20])
		}
	}

	// IPv4 with DF above the path: Fragmentation Needed quoting 532.
	d.take()
	drops := e.Stats().Drops[encap.TooBig]
	if p := sentOuter(t, e, pt, innerPacket(false, 0x4000, 1000)); p != nil {
		t.Errorf("a 1000-byte IPv4 packet with DF was sent over a 532-byte path")
	}
	if got := e.Stats().Drops[encap.TooBig] - drops; got != 1 {
		t.Errorf("TooBig drops went up by %d, want 1", got)
	}
	deadline := time.Now().Add(5 * time.Second)
	for d.count() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	got := d.take()
	if len(got) != 1 || got[0].proto != ipv4.ProtocolNumber || len(got[0].data) < 28 ||
		got[0].data[20] != 3 || got[0].data[21] != 4 || binary.BigEndian.Uint16(got[0].data[26:]) != 532 {
		t.Errorf("delivered to the stack %v, want one Fragmentation Needed with MTU 532", got)
	}

	// The path is back at 1500: after the expiry, so is the tunnel.
	pt.pmtu.Store(1500)
	deadline = time.Now().Add(5 * time.Second)
	for e.MTU() != 1480 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	st = e.Stats()
	if e.MTU() != 1480 || st.OuterPathMTU != 0 || st.OuterFragmentation || pt.frag.Load() || !st.OuterPathMTUExpires.IsZero() {
		t.Fatalf("after the expiry: MTU %d, outer path MTU %d, outer fragmentation %v, transport fragments %v, expires %v; want 1480, 0, false, false, zero",
			e.MTU(), st.OuterPathMTU, st.OuterFragmentation, pt.frag.Load(), st.OuterPathMTUExpires)
	}
	if p := sentOuter(t, e, pt, innerPacket(true, 0, 1480)); p == nil || p[6]&0x40 == 0 {
		t.Errorf("after the expiry a 1480-byte packet was not sent with DF")
	}
}

// TestOuterPathMTUHeldWhileNarrow: at expiry the kernel still reports the
// lower path MTU, so the MTU stays down and the learned value is renewed.
func TestOuterPathMTUHeldWhileNarrow(t *testing.T) {
	e, pt, _ := newPathRig(t, Options{PathMTUExpiry: 20 * time.Millisecond})
	pt.pmtu.Store(1400)
	sentOuter(t, e, pt, innerPacket(false, 0x4000, 1480))
	first := e.Stats().OuterPathMTULearned
	if e.MTU() != 1380 || first.IsZero() {
		t.Fatalf("MTU %d, learned %v; want 1380 and a time", e.MTU(), first)
	}
	deadline := time.Now().Add(5 * time.Second)
	for e.Stats().OuterPathMTULearned.Equal(first) && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	st := e.Stats()
	if st.OuterPathMTULearned.Equal(first) || st.OuterPathMTU != 1400 || e.MTU() != 1380 {
		t.Errorf("after an expiry on a path still at 1400: learned %v (first %v), outer path MTU %d, MTU %d; want renewed, 1400, 1380",
			st.OuterPathMTULearned, first, st.OuterPathMTU, e.MTU())
	}
}

// TestOuterPathIPv4Only: a tunnel that carries no IPv6 follows the path
// below 1280, and its outer packets keep DF.
func TestOuterPathIPv4Only(t *testing.T) {
	e, pt, _ := newPathRig(t, Options{IPv4Only: true})
	pt.pmtu.Store(552)
	sentOuter(t, e, pt, innerPacket(false, 0x4000, 1000))
	if st := e.Stats(); e.MTU() != 532 || st.OuterFragmentation || pt.frag.Load() {
		t.Errorf("MTU %d, outer fragmentation %v, transport fragments %v; want 532, false, false", e.MTU(), st.OuterFragmentation, pt.frag.Load())
	}
}
