package stack

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/ipipstack/ipipstack/endpoint/endpointtest"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	gvstack "gvisor.dev/gvisor/pkg/tcpip/stack"
)

// ipv4Packet builds an IPv4 packet with the given options (a multiple of
// 4 bytes), flags and fragment offset (bytes) around payload.
func ipv4Packet(opts []byte, flags uint8, offset int, payload []byte) []byte {
	hl := header.IPv4MinimumSize + len(opts)
	p := make([]byte, hl+len(payload))
	h := header.IPv4(p)
	h.Encode(&header.IPv4Fields{TOS: 0x28, TotalLength: uint16(len(p)), ID: 0xbeef, Flags: flags,
		FragmentOffset: uint16(offset), TTL: 9, Protocol: 17})
	p[0] = 4<<4 | byte(hl/4)
	copy(p[12:], []byte{10, 0, 1, 1, 10, 0, 2, 2})
	copy(p[header.IPv4MinimumSize:], opts)
	copy(p[hl:], payload)
	h.SetChecksum(^h.CalculateChecksum())
	return p
}

type piece struct {
	hdr     []byte
	payload []byte
}

func split(p []byte, mtu int) []piece {
	var out []piece
	splitIPv4(p, mtu, func(hdr, payload []byte) {
		out = append(out, piece{append([]byte(nil), hdr...), append([]byte(nil), payload...)})
	})
	return out
}

func TestSplitIPv4(t *testing.T) {
	payload := make([]byte, 3000)
	for i := range payload {
		payload[i] = byte(i*31 + i>>8)
	}
	// Router Alert (copied), No Operation, Timestamp (not copied, 8
	// bytes), End of Option List, padding: 16 bytes.
	opts := []byte{0x94, 4, 0, 0, 1, 0x44, 8, 5, 0, 0, 0, 0, 0, 0, 0, 0}
	tests := []struct {
		name     string
		opts     []byte
		flags    uint8
		offset   int
		mtu      int
		wantHdrs []int // header length of each piece
	}{
		{"whole datagram", nil, 0, 0, 1280, []int{20, 20, 20}},
		{"middle fragment", nil, header.IPv4FlagMoreFragments, 1448, 1280, []int{20, 20, 20}},
		{"last fragment", nil, 0, 8000, 1280, []int{20, 20, 20}},
		{"odd mtu", nil, header.IPv4FlagMoreFragments, 8, 1001, []int{20, 20, 20, 20}},
		{"options", opts, 0, 0, 1280, []int{36, 24, 24}},
		{"options, fragment near 64 KiB", opts, header.IPv4FlagMoreFragments, 62520, 1500, []int{36, 24, 24}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := ipv4Packet(tt.opts, tt.flags, tt.offset, payload)
			pieces := split(p, tt.mtu)
			if len(pieces) != len(tt.wantHdrs) {
				t.Fatalf("splitIPv4 made %d pieces, want %d", len(pieces), len(tt.wantHdrs))
			}
			var got []byte
			for i, pc := range pieces {
				h := header.IPv4(pc.hdr)
				last := i == len(pieces)-1
				switch {
				case len(pc.hdr) != tt.wantHdrs[i] || int(h.HeaderLength()) != len(pc.hdr):
					t.Errorf("piece %d: header of %d bytes (IHL %d), want %d", i, len(pc.hdr), h.HeaderLength(), tt.wantHdrs[i])
				case len(pc.hdr)+len(pc.payload) > tt.mtu || int(h.TotalLength()) != len(pc.hdr)+len(pc.payload):
					t.Errorf("piece %d: %d bytes, total length %d, MTU %d", i, len(pc.hdr)+len(pc.payload), h.TotalLength(), tt.mtu)
				case !last && len(pc.payload)%8 != 0:
					t.Errorf("piece %d: %d bytes of payload, not a multiple of 8", i, len(pc.payload))
				case int(h.FragmentOffset()) != tt.offset+len(got):
					t.Errorf("piece %d: offset %d, want %d", i, h.FragmentOffset(), tt.offset+len(got))
				case h.More() != (!last || tt.flags&header.IPv4FlagMoreFragments != 0):
					t.Errorf("piece %d: MF %v", i, h.More())
				case !h.IsChecksumValid():
					t.Errorf("piece %d: bad header checksum", i)
				case h.ID() != 0xbeef || h.TTL() != 9 || pc.hdr[1] != 0x28 || h.Protocol() != 17 || !bytes.Equal(pc.hdr[12:20], p[12:20]):
					t.Errorf("piece %d: header fields changed: % x", i, pc.hdr)
				case i == 0 && !bytes.Equal(pc.hdr[20:], tt.opts):
					t.Errorf("first piece options % x, want all: % x", pc.hdr[20:], tt.opts)
				case i > 0 && len(tt.opts) > 0 && !bytes.Equal(pc.hdr[20:], []byte{0x94, 4, 0, 0}):
					t.Errorf("piece %d options % x, want only the copied Router Alert", i, pc.hdr[20:])
				}
				got = append(got, pc.payload...)
			}
			if !bytes.Equal(got, payload) {
				t.Errorf("the pieces' payloads do not add up to the packet's")
			}
		})
	}
}

func TestSplitIPv4Refuses(t *testing.T) {
	payload := make([]byte, 200)
	tests := []struct {
		name string
		opts []byte
		mtu  int
	}{
		{"option longer than the header", []byte{0x94, 8, 0, 0}, 100},
		{"option length 1", []byte{0x94, 1, 0, 0}, 100},
		{"option length cut off", []byte{1, 1, 1, 0x94}, 100},
		{"mtu leaves no 8 bytes", nil, 27},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if n := len(split(ipv4Packet(tt.opts, 0, 0, payload), tt.mtu)); n != 0 {
				t.Errorf("splitIPv4 made %d pieces, want 0", n)
			}
		})
	}
}

// TestExpireTTL checks the incremental checksum update against a full
// recomputation.
func TestExpireTTL(t *testing.T) {
	for ttl := 0; ttl < 256; ttl++ {
		for _, proto := range []byte{1, 6, 17, 255} {
			p := ipv4Packet(nil, 0, 0, []byte{1, 2, 3, 4})
			p[8], p[9] = byte(ttl), proto
			binary.BigEndian.PutUint16(p[10:], 0)
			header.IPv4(p).SetChecksum(^header.IPv4(p).CalculateChecksum())
			expireTTL(p)
			want := append([]byte(nil), p...)
			binary.BigEndian.PutUint16(want[10:], 0)
			header.IPv4(want).SetChecksum(^header.IPv4(want).CalculateChecksum())
			if p[8] != 0 || !header.IPv4(p).IsChecksumValid() {
				t.Fatalf("TTL %d proto %d: after expireTTL TTL %d, checksum %#04x, want 0 and %#04x",
					ttl, proto, p[8], binary.BigEndian.Uint16(p[10:]), binary.BigEndian.Uint16(want[10:]))
			}
		}
	}
}

// TestForwardLinkAllocs: the forwarding wrapper adds no allocation for a
// packet it leaves alone (DF set, or no bigger than every link's MTU).
func TestForwardLinkAllocs(t *testing.T) {
	oa, ob := netip.MustParseAddrPort("198.51.100.1:1"), netip.MustParseAddrPort("198.51.100.2:2")
	ta, tb := endpointtest.Pipe(oa, ob, 0)
	s, err := New(Config{Forwarding: true, Tunnels: []Tunnel{{Name: "t", Local: oa, Remote: ob, Conn: ta,
		Addresses: []netip.Prefix{netip.MustParsePrefix("10.0.1.1/30")}}}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	defer tb.Close()
	links := *s.fwd.links.Load()
	if len(links) != 1 {
		t.Fatalf("%d forwarding links, want 1", len(links))
	}
	l := links[0]
	for _, tc := range []struct {
		name  string
		flags uint8
		size  int
	}{
		{"DF, 1400 bytes", header.IPv4FlagDontFragment, 1400},
		{"no DF, 1000 bytes", 0, 1000},
	} {
		p := ipv4Packet(nil, tc.flags, 0, make([]byte, tc.size-header.IPv4MinimumSize))
		copy(p[16:], []byte{10, 9, 9, 9}) // not ours, routed nowhere
		header.IPv4(p).SetChecksum(0)
		header.IPv4(p).SetChecksum(^header.IPv4(p).CalculateChecksum())
		pkt := gvstack.NewPacketBuffer(gvstack.PacketBufferOptions{Payload: buffer.MakeWithData(p)})
		n := testing.AllocsPerRun(1000, func() {
			if l.forward4(pkt) {
				t.Fatal("forward4 cut a packet that fits")
			}
		})
		pkt.DecRef()
		if n != 0 {
			t.Errorf("%s: forward4 allocates %.1f times per packet, want 0", tc.name, n)
		}
	}
}

// TestSplitIPv4OffsetOverflow: a hostile fragment whose data would end
// past byte 65535 of its datagram cannot be cut, since its later pieces
// would need offsets past the 13-bit field's 65528 and would wrap to small
// ones that overwrite the start of the datagram at the destination.
// splitIPv4 refuses it; forward4 drops and counts it
// (TestForward4DropsOffsetOverflow).
func TestSplitIPv4OffsetOverflow(t *testing.T) {
	tests := []struct {
		name   string
		offset int
		size   int
		mtu    int
	}{
		// Pieces would start at 64000, 65256 and 66512 (wrapping to 976).
		{"wraps on the third piece", 64000, 3000, 1280},
		// 65528 is the highest offset there is; 8 bytes more end at 65536.
		{"last offset, 16 bytes", 65528, 16, 28},
		{"one byte too many", 65528 - 1480, 1480 + 8, 1500},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := ipv4Packet(nil, header.IPv4FlagMoreFragments, tt.offset, make([]byte, tt.size))
			pieces := split(p, tt.mtu)
			for i, pc := range pieces {
				h := header.IPv4(pc.hdr)
				t.Errorf("piece %d: offset %d, %d bytes of data", i, h.FragmentOffset(), len(pc.payload))
			}
			if len(pieces) != 0 {
				t.Errorf("splitIPv4 of a fragment at %d with %d bytes cut it into %d pieces, want 0 (refused)", tt.offset, tt.size, len(pieces))
			}
		})
	}
	// The largest fragment that may be cut: its data ends at byte 65535.
	p := ipv4Packet(nil, 0, 65528-1480, make([]byte, 1480+7))
	pieces := split(p, 1500)
	if len(pieces) != 2 {
		t.Fatalf("splitIPv4 of a fragment ending at 65535 made %d pieces, want 2", len(pieces))
	}
	if off := header.IPv4(pieces[1].hdr).FragmentOffset(); off != 65528 || len(pieces[1].payload) != 7 {
		t.Errorf("last piece at offset %d with %d bytes, want 65528 and 7", off, len(pieces[1].payload))
	}
}

// TestForward4DropsOffsetOverflow: a forwarding stack drops and counts a
// fragment to be cut whose data would end past byte 65535, rather than
// handing it to gVisor (which would cut it with offsets from 0), while the
// same fragment lower in its datagram is cut.
func TestForward4DropsOffsetOverflow(t *testing.T) {
	oa, ob := netip.MustParseAddrPort("198.51.100.1:1"), netip.MustParseAddrPort("198.51.100.2:2")
	ta, tb := endpointtest.Pipe(oa, ob, 0)
	s, err := New(Config{Forwarding: true, Tunnels: []Tunnel{{Name: "t", Local: oa, Remote: ob, Conn: ta,
		Addresses: []netip.Prefix{netip.MustParsePrefix("10.0.1.1/30")}}}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	defer tb.Close()
	l := (*s.fwd.links.Load())[0]
	for _, tc := range []struct {
		name         string
		offset       int
		wantOverflow uint64
		wantRefrag   uint64
	}{
		{"ends past 65535", 64000, 1, 0},
		{"fits", 8000, 0, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := s.ForwardStats()
			p := ipv4Packet(nil, header.IPv4FlagMoreFragments, tc.offset, make([]byte, 3000))
			copy(p[16:], []byte{10, 0, 1, 2}) // the peer's side of the tunnel
			header.IPv4(p).SetChecksum(0)
			header.IPv4(p).SetChecksum(^header.IPv4(p).CalculateChecksum())
			pkt := gvstack.NewPacketBuffer(gvstack.PacketBufferOptions{Payload: buffer.MakeWithData(p)})
			defer pkt.DecRef()
			if !l.forward4(pkt) {
				t.Fatalf("forward4 left a %d-byte fragment at offset %d to gVisor, want it cut or dropped", len(p), tc.offset)
			}
			after := s.ForwardStats()
			if got := after.OffsetOverflow - before.OffsetOverflow; got != tc.wantOverflow {
				t.Errorf("OffsetOverflow grew by %d, want %d", got, tc.wantOverflow)
			}
			if got := after.Refragmented - before.Refragmented; got != tc.wantRefrag {
				t.Errorf("Refragmented grew by %d, want %d", got, tc.wantRefrag)
			}
		})
	}
}
