package encap

import (
	"encoding/binary"
	"net/netip"
	"testing"
)

// Addresses of the nesting tests: "us" is the tunnel's outer address.
var (
	nestUs   = netip.MustParseAddr("192.0.2.2")
	nestUs6  = netip.MustParseAddr("2001:db8::2")
	nestPort = uint16(4700)
)

func isNestUs(a netip.Addr) bool { return a == nestUs || a == nestUs6 }

// nest4 wraps payload in an IPv4 header to dst with protocol proto.
func nest4(dst string, proto uint8, payload []byte) []byte {
	h := make([]byte, IPv4HeaderLen, IPv4HeaderLen+len(payload))
	h[0] = 0x45
	binary.BigEndian.PutUint16(h[v4TotalLen:], uint16(IPv4HeaderLen+len(payload)))
	h[v4TTL], h[v4Proto] = 64, proto
	copy(h[v4Src:], []byte{10, 99, 0, 1})
	d := netip.MustParseAddr(dst).As4()
	copy(h[v4Dst:], d[:])
	binary.BigEndian.PutUint16(h[v4Checksum:], Checksum(h))
	return append(h, payload...)
}

// nest6 wraps payload in an IPv6 header to dst with next header next.
func nest6(dst string, next uint8, payload []byte) []byte {
	h := make([]byte, IPv6HeaderLen, IPv6HeaderLen+len(payload))
	h[0] = 0x60
	binary.BigEndian.PutUint16(h[v6PayloadLen:], uint16(len(payload)))
	h[v6NextHeader], h[v6HopLimit] = next, 64
	copy(h[v6Src:], netip.MustParseAddr("fd99::1").AsSlice())
	copy(h[v6Dst:], netip.MustParseAddr(dst).AsSlice())
	return append(h, payload...)
}

// nestUDP is a UDP header to dport (checksum 0) and payload.
func nestUDP(dport uint16, payload []byte) []byte {
	u := make([]byte, UDPHeaderLen, UDPHeaderLen+len(payload))
	binary.BigEndian.PutUint16(u[0:], 5555)
	binary.BigEndian.PutUint16(u[2:], dport)
	binary.BigEndian.PutUint16(u[4:], uint16(UDPHeaderLen+len(payload)))
	return append(u, payload...)
}

// ipipChain is n IPv4-in-IPv4 headers to dst around a UDP packet to port 9.
func ipipChain(n int, dst string) []byte {
	p := nest4(dst, protoUDP, nestUDP(9, []byte("end")))
	for range n {
		p = nest4(dst, ProtoIPIP, p)
	}
	return p
}

func TestNestingDepth(t *testing.T) {
	plain := nest4("10.99.0.2", protoUDP, nestUDP(9, []byte("data")))
	fouToUs := nest4("192.0.2.2", protoUDP, nestUDP(nestPort, plain))
	firstFrag := nest4("192.0.2.2", ProtoIPIP, plain)
	binary.BigEndian.PutUint16(firstFrag[v4Flags:], 0x2000) // MF, offset 0
	laterFrag := nest4("192.0.2.2", ProtoIPIP, plain)
	binary.BigEndian.PutUint16(laterFrag[v4Flags:], 0x0001) // offset 8
	// A destination options header (8 bytes, PadN) before the tunnel
	// header, and a first IPv6 fragment, hide nothing.
	dstOpts := nest6("2001:db8::2", protoDstOpts, append([]byte{ProtoIPIP, 0, 1, 4, 0, 0, 0, 0}, plain...))
	frag6 := nest6("2001:db8::2", protoFragment, append([]byte{ProtoIPv6, 0, 0, 1, 0, 0, 0, 1}, nest6("fd99::2", 59, nil)...))
	laterFrag6 := nest6("2001:db8::2", protoFragment, append([]byte{ProtoIPIP, 0, 0, 8, 0, 0, 0, 1}, plain...))
	tests := []struct {
		name  string
		pkt   []byte
		port  uint16
		limit int
		want  int
	}{
		{"plain udp", plain, nestPort, 4, 0},
		{"udp to our port but not our address", nest4("10.99.0.2", protoUDP, nestUDP(nestPort, plain)), nestPort, 4, 0},
		{"fou to us", fouToUs, nestPort, 4, 1},
		{"fou to us, port check off", fouToUs, 0, 4, 0},
		{"fou to another port", nest4("192.0.2.2", protoUDP, nestUDP(4701, plain)), nestPort, 4, 0},
		{"ipip to us", nest4("192.0.2.2", ProtoIPIP, plain), nestPort, 4, 1},
		{"6in4 to us", nest4("192.0.2.2", ProtoIPv6, nest6("fd99::2", 59, nil)), nestPort, 4, 1},
		{"ip6ip6 to us", nest6("2001:db8::2", ProtoIPv6, nest6("fd99::2", 59, nil)), nestPort, 4, 1},
		{"4in6 to us", nest6("2001:db8::2", ProtoIPIP, plain), nestPort, 4, 1},
		{"chain of 4", ipipChain(4, "192.0.2.2"), nestPort, 4, 4},
		{"chain of 5 stops at limit+1", ipipChain(5, "192.0.2.2"), nestPort, 4, 5},
		{"chain of 50 stops at limit+1", ipipChain(50, "192.0.2.2"), nestPort, 4, 5},
		{"chain of 3, limit 0", ipipChain(3, "192.0.2.2"), nestPort, 0, 1},
		{"chain elsewhere", ipipChain(50, "198.51.100.9"), nestPort, 4, 0},
		{"through a header elsewhere", nest4("198.51.100.9", ProtoIPIP, nest4("192.0.2.2", ProtoIPIP, plain)), nestPort, 4, 1},
		{"mixed ipip, fou, 6in4", nest4("192.0.2.2", ProtoIPIP,
			nest4("192.0.2.2", protoUDP, nestUDP(nestPort,
				nest4("192.0.2.2", ProtoIPv6, nest6("2001:db8::2", ProtoIPIP, plain))))), nestPort, 8, 4},
		{"version mismatch ends the walk", nest4("192.0.2.2", ProtoIPv6, nest4("192.0.2.2", ProtoIPIP, plain)), nestPort, 4, 1},
		{"dst options", dstOpts, nestPort, 4, 1},
		{"first fragment v6", frag6, nestPort, 4, 1},
		{"later fragment v6", laterFrag6, nestPort, 4, 0},
		{"first fragment v4", firstFrag, nestPort, 4, 1},
		{"later fragment v4", laterFrag, nestPort, 4, 0},
		{"truncated third header", ipipChain(3, "192.0.2.2")[:IPv4HeaderLen*2+10], nestPort, 4, 2},
		{"truncated udp", nest4("192.0.2.2", protoUDP, []byte{0, 1, 0x12}), nestPort, 4, 0},
		{"bad ihl", append([]byte{0x44}, ipipChain(2, "192.0.2.2")[1:]...), nestPort, 4, 0},
		{"empty", nil, nestPort, 4, 0},
		{"one byte", []byte{0x45}, nestPort, 4, 0},
		{"version 5", []byte{0x50, 0, 0, 0}, nestPort, 4, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := NestingDepth(tt.pkt, isNestUs, tt.port, tt.limit); got != tt.want {
				t.Errorf("NestingDepth(%x, port %d, limit %d) = %d, want %d", tt.pkt, tt.port, tt.limit, got, tt.want)
			}
		})
	}
}

func TestNestingDepthNoAllocs(t *testing.T) {
	chain := ipipChain(10, "192.0.2.2")
	if n := testing.AllocsPerRun(1000, func() { NestingDepth(chain, isNestUs, nestPort, 4) }); n != 0 {
		t.Errorf("NestingDepth allocs = %v, want 0", n)
	}
}

// FuzzNestingDepth checks that NestingDepth never panics, stays within
// 0..limit+1, is the unlimited depth capped at limit+1, and counts nothing
// when nothing is ours.
func FuzzNestingDepth(f *testing.F) {
	f.Add(ipipChain(6, "192.0.2.2"), uint8(4))
	f.Add(nest4("192.0.2.2", protoUDP, nestUDP(nestPort, ipipChain(2, "192.0.2.2"))), uint8(1))
	f.Add(nest6("2001:db8::2", protoDstOpts, append([]byte{ProtoIPIP, 0, 1, 4, 0, 0, 0, 0}, ipipChain(1, "192.0.2.2")...)), uint8(0))
	f.Add([]byte{0x45}, uint8(4))
	f.Fuzz(func(t *testing.T, pkt []byte, limit uint8) {
		lim := int(limit % 16)
		got := NestingDepth(pkt, isNestUs, nestPort, lim)
		if got < 0 || got > lim+1 {
			t.Fatalf("NestingDepth(limit %d) = %d, out of 0..%d", lim, got, lim+1)
		}
		if full := NestingDepth(pkt, isNestUs, nestPort, len(pkt)); min(full, lim+1) != got {
			t.Fatalf("NestingDepth = %d with limit %d, %d without: want the second capped", got, lim, full)
		}
		if n := NestingDepth(pkt, func(netip.Addr) bool { return false }, nestPort, lim); n != 0 {
			t.Fatalf("NestingDepth with nothing ours = %d, want 0", n)
		}
	})
}
