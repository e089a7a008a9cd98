//go:build linux

package stack_test

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/endpoint"
	"github.com/ipipstack/ipipstack/endpoint/endpointtest"
	"github.com/ipipstack/ipipstack/stack"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// These tests drive one stack through the test's end of an in-memory
// tunnel: they write hand-built fragments into it and read what the stack
// sends back.

var (
	reasmStackV4 = netip.MustParseAddr("10.99.0.1")
	reasmPeerV4  = netip.MustParseAddr("10.99.0.2")
	reasmStackV6 = netip.MustParseAddr("fd99::1")
	reasmPeerV6  = netip.MustParseAddr("fd99::2")
)

// reasmPeer is a stack with one tunnel, "peer", whose other end is the
// test's: wire.
type reasmPeer struct {
	s    *stack.Stack
	wire endpoint.Transport
	// icmpErrors receives each inner ICMP Time Exceeded packet the stack
	// sends, IPv4 or IPv6, whole.
	icmpErrors chan []byte
}

// newReasmPeer starts the stack, with cfg's Tunnels replaced, and a
// goroutine reading the test's end; both stop at cleanup.
func newReasmPeer(t *testing.T, cfg stack.Config) *reasmPeer {
	t.Helper()
	n := uint16(pipePort.Add(2))
	oa := netip.AddrPortFrom(netip.MustParseAddr("198.51.100.1"), n)
	ob := netip.AddrPortFrom(netip.MustParseAddr("198.51.100.2"), n+1)
	ta, tb := endpointtest.Pipe(oa, ob, 0)
	cfg.Tunnels = []stack.Tunnel{{Name: "peer", Local: oa, Remote: ob, Conn: ta, Addresses: []netip.Prefix{
		netip.PrefixFrom(reasmStackV4, 30), netip.PrefixFrom(reasmStackV6, 64)}}}
	s, err := stack.New(cfg)
	if err != nil {
		tb.Close()
		t.Fatal(err)
	}
	p := &reasmPeer{s: s, wire: tb, icmpErrors: make(chan []byte, 1024)}
	var wg sync.WaitGroup
	wg.Go(func() {
		msgs := []endpoint.Message{{Buffers: [][]byte{make([]byte, 65536)}}}
		for {
			if _, err := tb.Receivers()[0].ReadBatch(msgs); err != nil {
				return // the stack closed the pipe
			}
			if pkt := msgs[0].Buffers[0][:msgs[0].N]; isTimeExceeded(pkt) {
				select {
				case p.icmpErrors <- bytes.Clone(pkt):
				default:
					t.Error("too many ICMP errors")
				}
			}
		}
	})
	t.Cleanup(func() {
		s.Close()
		wg.Wait()
	})
	return p
}

// isTimeExceeded reports whether pkt is an IPv4 packet carrying ICMP Time
// Exceeded or an IPv6 one carrying ICMPv6 Time Exceeded.
func isTimeExceeded(pkt []byte) bool {
	switch {
	case len(pkt) >= header.IPv4MinimumSize+header.ICMPv4MinimumSize && pkt[0]>>4 == 4:
		ip := header.IPv4(pkt)
		return ip.Protocol() == uint8(header.ICMPv4ProtocolNumber) &&
			header.ICMPv4(ip.Payload()).Type() == header.ICMPv4TimeExceeded
	case len(pkt) >= header.IPv6MinimumSize+header.ICMPv6MinimumSize && pkt[0]>>4 == 6:
		ip := header.IPv6(pkt)
		return ip.NextHeader() == uint8(header.ICMPv6ProtocolNumber) &&
			header.ICMPv6(ip.Payload()).Type() == header.ICMPv6TimeExceeded
	}
	return false
}

// send writes inner packets into the stack's tunnel, in order.
func (p *reasmPeer) send(t *testing.T, pkts ...[]byte) {
	t.Helper()
	for _, pkt := range pkts {
		if _, err := p.wire.WriteBatch([]endpoint.Message{{Buffers: [][]byte{pkt}}}); err != nil {
			t.Fatalf("writing into the tunnel: %v", err)
		}
	}
}

// bytesOf returns the stack's reassembly memory for dst's family.
func (p *reasmPeer) bytesOf(dst netip.Addr) int {
	v4, v6 := p.s.ReassemblyBytes()
	if dst.Is4() {
		return v4
	}
	return v6
}

// timeExceededSent returns gVisor's count of ICMP Time Exceeded messages
// sent for dst's family.
func (p *reasmPeer) timeExceededSent(dst netip.Addr) uint64 {
	icmp := p.s.GVisor().Stats().ICMP
	if dst.Is4() {
		return icmp.V4.PacketsSent.TimeExceeded.Value()
	}
	return icmp.V6.PacketsSent.TimeExceeded.Value()
}

// ipReceived returns gVisor's count of IP packets (both families)
// received.
func (p *reasmPeer) ipReceived() uint64 {
	return p.s.GVisor().Stats().IP.PacketsReceived.Value()
}

// reasmAddr converts a to gVisor's form.
func reasmAddr(a netip.Addr) tcpip.Address {
	if a.Is4() {
		return tcpip.AddrFrom4(a.As4())
	}
	return tcpip.AddrFrom16(a.As16())
}

// splitFragments splits the upper-layer packet seg (protocol UDP) from src to
// dst into IP fragments, IPv4 or IPv6 after the addresses' family, each
// carrying at most size bytes of seg (a multiple of 8, RFC 791 and RFC 8200
// section 4.5: offsets count 8-byte units).
func splitFragments(src, dst netip.Addr, id uint32, seg []byte, size int) [][]byte {
	var out [][]byte
	for off := 0; off < len(seg); off += size {
		piece := seg[off:min(off+size, len(seg))]
		more := off+len(piece) < len(seg)
		var pkt []byte
		if src.Is4() {
			pkt = make([]byte, header.IPv4MinimumSize+len(piece))
			ip := header.IPv4(pkt)
			var flags uint8
			if more {
				flags = header.IPv4FlagMoreFragments
			}
			ip.Encode(&header.IPv4Fields{
				TotalLength:    uint16(len(pkt)),
				ID:             uint16(id),
				Flags:          flags,
				FragmentOffset: uint16(off), // in bytes; Encode divides by 8
				TTL:            64,
				Protocol:       uint8(header.UDPProtocolNumber),
				SrcAddr:        reasmAddr(src),
				DstAddr:        reasmAddr(dst),
			})
			ip.SetChecksum(^ip.CalculateChecksum())
			copy(pkt[header.IPv4MinimumSize:], piece)
		} else {
			const hdr = header.IPv6MinimumSize + header.IPv6FragmentHeaderSize
			pkt = make([]byte, hdr+len(piece))
			header.IPv6(pkt).Encode(&header.IPv6Fields{
				PayloadLength:     uint16(header.IPv6FragmentHeaderSize + len(piece)),
				TransportProtocol: header.UDPProtocolNumber,
				HopLimit:          64,
				SrcAddr:           reasmAddr(src),
				DstAddr:           reasmAddr(dst),
				ExtensionHeaders: header.IPv6ExtHdrSerializer{&header.IPv6SerializableFragmentExtHdr{
					FragmentOffset: uint16(off / header.IPv6FragmentExtHdrFragmentOffsetBytesPerUnit),
					M:              more,
					Identification: id,
				}},
			})
			copy(pkt[hdr:], piece)
		}
		out = append(out, pkt)
	}
	return out
}

// reasmPayload returns n bytes that differ from one datagram to the next.
func reasmPayload(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7) + seed
	}
	return b
}

// TestReassemblyTimeout withholds one fragment of a UDP datagram to the
// stack, which has a reassembly timeout of 300 ms. When the first fragment
// arrived, the timeout must produce ICMP Time Exceeded, code 1, quoting
// that fragment (RFC 792; RFC 8200 section 4.5); when it did not, no ICMP
// at all. Either way the reassembly's memory must be freed.
func TestReassemblyTimeout(t *testing.T) {
	const timeout = 300 * time.Millisecond
	tests := []struct {
		name     string
		src, dst netip.Addr
		withhold int // index of the fragment never sent; -1 is the last
		wantICMP bool
	}{
		{"ipv4 last withheld", reasmPeerV4, reasmStackV4, -1, true},
		{"ipv4 first withheld", reasmPeerV4, reasmStackV4, 0, false},
		{"ipv6 last withheld", reasmPeerV6, reasmStackV6, -1, true},
		{"ipv6 first withheld", reasmPeerV6, reasmStackV6, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newReasmPeer(t, stack.Config{ReassemblyTimeout: timeout})
			const id = 0x4d2a
			frags := splitFragments(tt.src, tt.dst, id, udpSegment(tt.src, tt.dst, 1234, 9, reasmPayload(3000, 1)), 1232)
			if len(frags) != 3 {
				t.Fatalf("%d fragments, want 3", len(frags))
			}
			withhold := tt.withhold
			if withhold < 0 {
				withhold = len(frags) - 1
			}
			sent := append(append([][]byte(nil), frags[:withhold]...), frags[withhold+1:]...)
			rx0, te0 := p.ipReceived(), p.timeExceededSent(tt.dst)

			start := time.Now()
			p.send(t, sent...)
			// While the datagram waits, its fragments take memory.
			waitFor(t, "the fragments to reach gVisor's IP layer", func() bool {
				return p.ipReceived() >= rx0+uint64(len(sent))
			})
			held := p.bytesOf(tt.dst)
			if held <= 0 && time.Since(start) < timeout {
				t.Errorf("ReassemblyBytes = %d while the datagram waits, want > 0", held)
			}
			// Then the timeout frees it.
			waitFor(t, "the reassembly to time out", func() bool { return p.bytesOf(tt.dst) == 0 })
			if d := time.Since(start); d < timeout {
				t.Errorf("reassembly freed after %v, before the %v timeout", d, timeout)
			}
			if v4, v6 := p.s.ReassemblyBytes(); v4 != 0 || v6 != 0 {
				t.Errorf("ReassemblyBytes() = %d, %d after the timeout; want 0, 0", v4, v6)
			}

			// gVisor sends the ICMP error while it frees the reassembly,
			// under the same lock, so the counter is final now.
			wantTE := te0
			if tt.wantICMP {
				wantTE++
			}
			if got := p.timeExceededSent(tt.dst); got != wantTE {
				t.Errorf("gVisor's ICMP Time Exceeded sent counter = %d, want %d", got, wantTE)
			}
			if !tt.wantICMP {
				quiesce(t, p.s)
				select {
				case pkt := <-p.icmpErrors:
					t.Errorf("stack sent % x...; want no ICMP without the first fragment", pkt[:min(len(pkt), 96)])
				default:
				}
				return
			}
			var pkt []byte
			select {
			case pkt = <-p.icmpErrors:
			case <-time.After(5 * time.Second):
				t.Fatal("no ICMP Time Exceeded from the stack")
			}
			if err := checkTimeExceeded(pkt, tt.dst, tt.src, frags[0], id); err != nil {
				t.Errorf("%v\npacket starts % x", err, pkt[:min(len(pkt), 96)])
			}
		})
	}
}

// checkTimeExceeded checks that pkt is an ICMP(v6) Time Exceeded,
// fragment reassembly time exceeded (code 1), from src to dst, that quotes
// the first fragment first.
func checkTimeExceeded(pkt []byte, src, dst netip.Addr, first []byte, id uint32) error {
	var (
		psrc, pdst  tcpip.Address
		quote       []byte
		typ, code   uint8
		wantTyp     uint8
		wantCode    uint8
		csumOK      bool
		quotedID    uint32
		quotedFirst bool
	)
	if src.Is4() {
		ip := header.IPv4(pkt)
		if !ip.IsValid(len(pkt)) || !ip.IsChecksumValid() {
			return errors.New("invalid IPv4 packet")
		}
		psrc, pdst = ip.SourceAddress(), ip.DestinationAddress()
		icmp := header.ICMPv4(ip.Payload())
		typ, code = uint8(icmp.Type()), uint8(icmp.Code())
		wantTyp, wantCode = uint8(header.ICMPv4TimeExceeded), uint8(header.ICMPv4ReassemblyTimeout)
		csumOK = checksum(icmp, 0) == 0
		quote = icmp.Payload()
		if q := header.IPv4(quote); len(quote) >= header.IPv4MinimumSize {
			quotedID = uint32(q.ID())
			quotedFirst = q.FragmentOffset() == 0 && q.More()
		}
	} else {
		ip := header.IPv6(pkt)
		if !ip.IsValid(len(pkt)) {
			return errors.New("invalid IPv6 packet")
		}
		psrc, pdst = ip.SourceAddress(), ip.DestinationAddress()
		icmp := header.ICMPv6(ip.Payload())
		typ, code = uint8(icmp.Type()), uint8(icmp.Code())
		wantTyp, wantCode = uint8(header.ICMPv6TimeExceeded), uint8(header.ICMPv6ReassemblyTimeout)
		csumOK = header.ICMPv6Checksum(header.ICMPv6ChecksumParams{Header: icmp, Src: psrc, Dst: pdst}) == icmp.Checksum()
		quote = icmp[header.ICMPv6ErrorHeaderSize:]
		if len(quote) >= header.IPv6MinimumSize+header.IPv6FragmentHeaderSize &&
			header.IPv6(quote).NextHeader() == header.IPv6FragmentHeader {
			f := header.IPv6Fragment(quote[header.IPv6MinimumSize:])
			quotedID = f.ID()
			quotedFirst = f.FragmentOffset() == 0 && f.More()
		}
	}
	var errs []error
	if psrc != reasmAddr(src) || pdst != reasmAddr(dst) {
		errs = append(errs, fmt.Errorf("ICMP from %v to %v, want %v to %v", psrc, pdst, src, dst))
	}
	if typ != wantTyp || code != wantCode {
		errs = append(errs, fmt.Errorf("ICMP type %d code %d, want %d code %d (fragment reassembly time exceeded)", typ, code, wantTyp, wantCode))
	}
	if !csumOK {
		errs = append(errs, errors.New("bad ICMP checksum"))
	}
	if quotedID != id || !quotedFirst {
		errs = append(errs, fmt.Errorf("quoted fragment has ID %#x (first fragment: %v), want the first fragment of %#x", quotedID, quotedFirst, id))
	}
	// The quote is the first fragment, truncated (RFC 1812 section
	// 4.3.2.3, RFC 4443 section 2.4(c)).
	if n := min(len(quote), len(first)); n < 28 || !bytes.Equal(quote[:n], first[:n]) {
		errs = append(errs, fmt.Errorf("quote is not the first fragment:\n got % x\nwant % x", quote, first[:min(len(first), len(quote))]))
	}
	return errors.Join(errs...)
}

// TestReassemblyMemoryLimit floods the stack, whose reassembly memory is
// limited to a little over 128 KiB, with incomplete IPv4 and IPv6 datagrams
// worth several times that. The memory held must never pass the limit,
// and a complete datagram sent afterwards must still be reassembled and
// arrive byte-exact.
func TestReassemblyMemoryLimit(t *testing.T) {
	const (
		limit      = 128<<10 + 4096
		incomplete = 200 // per family
		fragSize   = 1232
	)
	p := newReasmPeer(t, stack.Config{ReassemblyMemory: limit})
	var (
		stop    atomic.Bool
		maxSeen [2]int
		samples int
		wg      sync.WaitGroup
	)
	wg.Go(func() {
		for !stop.Load() {
			v4, v6 := p.s.ReassemblyBytes()
			maxSeen[0], maxSeen[1] = max(maxSeen[0], v4), max(maxSeen[1], v6)
			samples++
			time.Sleep(100 * time.Microsecond)
		}
	})
	stopSampling := func() {
		if !stop.Swap(true) {
			wg.Wait()
		}
	}
	defer stopSampling()

	sentBytes := map[string]int{}
	for _, fam := range []struct {
		name     string
		src, dst netip.Addr
	}{{"ipv4", reasmPeerV4, reasmStackV4}, {"ipv6", reasmPeerV6, reasmStackV6}} {
		rx0 := p.ipReceived()
		n := 0
		for i := range incomplete {
			seg := udpSegment(fam.src, fam.dst, 1234, 9, reasmPayload(3*fragSize, byte(i)))
			frags := splitFragments(fam.src, fam.dst, uint32(0x1000+i), seg, fragSize)
			for _, f := range frags[:2] { // the last never comes
				sentBytes[fam.name] += len(f)
				n++
			}
			p.send(t, frags[:2]...)
		}
		waitFor(t, fam.name+" fragments to reach gVisor's IP layer", func() bool {
			return p.ipReceived() >= rx0+uint64(n)
		})
	}
	if sentBytes["ipv4"] < 3*limit || sentBytes["ipv6"] < 3*limit {
		t.Fatalf("sent %v bytes of fragments; the test wants over %d per family", sentBytes, 3*limit)
	}
	v4, v6 := p.s.ReassemblyBytes()
	// gVisor drops the oldest reassemblies down to three quarters of the
	// limit when it is passed, so the newest must still be held.
	if v4 < limit/2 || v4 > limit || v6 < limit/2 || v6 > limit {
		t.Errorf("ReassemblyBytes() = %d, %d after the flood; want between %d and %d", v4, v6, limit/2, limit)
	}

	// Complete datagrams still get through, past the held fragments.
	for _, fam := range []struct {
		name     string
		src, dst netip.Addr
	}{{"ipv4", reasmPeerV4, reasmStackV4}, {"ipv6", reasmPeerV6, reasmStackV6}} {
		pc, err := p.s.ListenPacket("udp", netip.AddrPortFrom(fam.dst, 7000).String())
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		payload := reasmPayload(8000, 0x5a)
		frags := splitFragments(fam.src, fam.dst, 0xbeef, udpSegment(fam.src, fam.dst, 1234, 7000, payload), fragSize)
		p.send(t, frags...)
		pc.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 65536)
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			t.Fatalf("%s: reading the complete datagram (%d fragments): %v", fam.name, len(frags), err)
		}
		if !bytes.Equal(buf[:n], payload) {
			t.Errorf("%s: received %d bytes from %v, want the %d sent", fam.name, n, from, len(payload))
		}
	}
	stopSampling()
	if maxSeen[0] > limit || maxSeen[1] > limit {
		t.Errorf("ReassemblyBytes peaked at %d, %d in %d samples; want at most %d", maxSeen[0], maxSeen[1], samples, limit)
	}
	t.Logf("peak reassembly memory %d (ipv4), %d (ipv6) of %d, over %d samples", maxSeen[0], maxSeen[1], limit, samples)
}

// TestReassemblyConfig checks New's validation of the reassembly limits.
func TestReassemblyConfig(t *testing.T) {
	tests := []struct {
		name    string
		timeout time.Duration
		memory  int
		wantErr string // "" for none
	}{
		{"defaults", 0, 0, ""},
		{"smallest", time.Millisecond, 128 << 10, ""},
		{"largest", time.Hour, 1 << 30, ""},
		{"negative timeout", -time.Second, 0, "reassembly timeout"},
		{"tiny timeout", time.Microsecond, 0, "reassembly timeout"},
		{"huge timeout", 2 * time.Hour, 0, "reassembly timeout"},
		{"negative memory", 0, -1, "reassembly memory"},
		{"below one datagram", 0, 128<<10 - 1, "reassembly memory"},
		{"huge memory", 0, 1<<30 + 1, "reassembly memory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, b := pipeTunnels("t", netip.MustParsePrefix("10.99.0.1/30"), "u", netip.MustParsePrefix("10.99.0.2/30"))
			defer b.Conn.Close()
			s, err := stack.New(stack.Config{Tunnels: []stack.Tunnel{a}, ReassemblyTimeout: tt.timeout, ReassemblyMemory: tt.memory})
			if err == nil {
				s.Close()
			}
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("New = %v, want no error", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("New = %v, want an error about the %s", err, tt.wantErr)
			}
		})
	}
	// A valid stack reports its reassembly memory; -1 would mean this
	// gVisor version hides it.
	s := newStack(t, stack.Config{Tunnels: []stack.Tunnel{func() stack.Tunnel {
		a, b := pipeTunnels("t", netip.MustParsePrefix("10.99.0.1/30"), "u", netip.MustParsePrefix("10.99.0.2/30"))
		t.Cleanup(func() { b.Conn.Close() })
		return a
	}()}})
	if v4, v6 := s.ReassemblyBytes(); v4 != 0 || v6 != 0 {
		t.Errorf("ReassemblyBytes() of a new stack = %d, %d; want 0, 0", v4, v6)
	}
}
