package encap

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

func mustHex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// icmpEcho is an 84-byte ICMP echo request 192.168.50.1 -> 192.168.50.2 as
// ping(8) sends it: DF clear, TTL 64, ID 0x1234, 56 bytes of data.
func icmpEcho(t testing.TB) []byte {
	t.Helper()
	p := make([]byte, 84)
	copy(p, mustHex(t, "4500 0054 1234 0000 4001 0000 c0a8 3201 c0a8 3202"))
	binary.BigEndian.PutUint16(p[10:], Checksum(p[:20]))
	copy(p[20:], mustHex(t, "0800 0000 0001 0001"))
	for i := 28; i < 84; i++ {
		p[i] = byte(i)
	}
	binary.BigEndian.PutUint16(p[22:], Checksum(p[20:]))
	return p
}

func TestEncodeIPv4Capture(t *testing.T) {
	inner := icmpEcho(t)
	e, err := NewEncoder(netip.MustParseAddr("172.16.10.2"), netip.MustParseAddr("152.16.10.2"), Policy{TTL: 255, DF: DFSet})
	if err != nil {
		t.Fatal(err)
	}
	pkt := bytes.Repeat([]byte{0xff}, e.HeaderLen()+len(inner))
	n, err := e.Encode(pkt, inner, 1)
	if err != nil {
		t.Fatal(err)
	}
	copy(pkt[n:], inner)
	if len(pkt) != 104 {
		t.Fatalf("outer length = %d, want 104", len(pkt))
	}
	// Checksum by hand: 4500+0068+0001+4000+ff04+ac10+0a02+9810+0a02 =
	// 0x2dc91, folded 0xdc93, complemented 0x236c.
	want := mustHex(t, "4500 0068 0001 4000 ff04 236c ac10 0a02 9810 0a02")
	if got := pkt[:20]; !bytes.Equal(got, want) {
		t.Errorf("outer header = % x\nwant           % x", got, want)
	}
	if Checksum(pkt[:20]) != 0 {
		t.Errorf("outer header checksum does not verify")
	}
	o, in, r := DecodeIPv4(pkt)
	if r != OK || !bytes.Equal(in, inner) {
		t.Fatalf("DecodeIPv4 = %v, inner equal %v", r, bytes.Equal(in, inner))
	}
	if o.Proto != 4 || o.TTL != 255 || !o.DF || o.ID != 1 {
		t.Errorf("decoded %+v", o)
	}
}

func TestEncodePolicy(t *testing.T) {
	v4 := func(tos uint8, df bool, ttl uint8) []byte {
		p := icmpEcho(t)
		p[1] = tos
		p[8] = ttl
		if df {
			p[6] = 0x40
		}
		p[10], p[11] = 0, 0
		binary.BigEndian.PutUint16(p[10:], Checksum(p[:20]))
		return p
	}
	v6 := make([]byte, 48)
	copy(v6, mustHex(t, "6ba0 0000 0008 3a40")) // traffic class 0xba, hop limit 64
	tests := []struct {
		name    string
		pol     Policy
		inner   []byte
		wantTOS uint8
		wantDF  bool
		wantTTL uint8
		proto   uint8
	}{
		{"default copies only ECN", Policy{}, v4(0xba, false, 64), 0x02, true, 64, 4},
		{"inner CE becomes ECT(0)", Policy{}, v4(0x03, false, 64), 0x02, true, 64, 4},
		{"tos inherit copies byte", Policy{TOSInherit: true}, v4(0xba, false, 9), 0xba, true, 9, 4},
		{"fixed tos keeps inner ECN", Policy{TOS: 0x28}, v4(0x01, false, 64), 0x29, true, 64, 4},
		{"fixed ttl DF set on non-DF", Policy{TTL: 255}, v4(0, false, 64), 0, true, 255, 4},
		{"df inherit clear", Policy{DF: DFInherit}, v4(0, false, 64), 0, false, 64, 4},
		{"df inherit set", Policy{DF: DFInherit}, v4(0, true, 64), 0, true, 64, 4},
		{"df clear", Policy{DF: DFClear}, v4(0, true, 64), 0, false, 64, 4},
		{"inner v6 proto 41", Policy{}, v6, 0x02, true, 64, 41},
		{"inner v6 df inherit", Policy{DF: DFInherit, TOSInherit: true}, v6, 0xba, true, 64, 41},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, err := NewEncoder(netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2"), tt.pol)
			if err != nil {
				t.Fatal(err)
			}
			pkt := bytes.Repeat([]byte{0xff}, 20+len(tt.inner))
			if _, err := e.Encode(pkt, tt.inner, 7); err != nil {
				t.Fatal(err)
			}
			copy(pkt[20:], tt.inner)
			o, _, r := DecodeIPv4(pkt)
			if r != OK {
				t.Fatalf("DecodeIPv4 = %v", r)
			}
			if o.TOS != tt.wantTOS || o.DF != tt.wantDF || o.TTL != tt.wantTTL || o.Proto != tt.proto {
				t.Errorf("outer tos=%#x df=%v ttl=%d proto=%d, want tos=%#x df=%v ttl=%d proto=%d",
					o.TOS, o.DF, o.TTL, o.Proto, tt.wantTOS, tt.wantDF, tt.wantTTL, tt.proto)
			}
		})
	}
}

func TestEncodeIPv6EncapLimit(t *testing.T) {
	inner := icmpEcho(t)
	inner[1] = 0x01 // ECT(1)
	src, dst := netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8::2")
	e, err := NewEncoder(src, dst, Policy{UseEncapLimit: true, EncapLimit: DefaultEncapLimit})
	if err != nil {
		t.Fatal(err)
	}
	if e.HeaderLen() != 48 {
		t.Fatalf("HeaderLen = %d, want 48 (ip6tnl overhead)", e.HeaderLen())
	}
	pkt := bytes.Repeat([]byte{0xff}, 48+len(inner))
	e.Encode(pkt, inner, 0)
	copy(pkt[48:], inner)
	want := mustHex(t, `6010 0000 005c 3c40
		2001 0db8 0000 0000 0000 0000 0000 0001
		2001 0db8 0000 0000 0000 0000 0000 0002
		0400 0401 0401 0100`)
	if !bytes.Equal(pkt[:48], want) {
		t.Errorf("outer = % x\nwant    % x", pkt[:48], want)
	}
	o, in, r := DecodeIPv6(pkt)
	if r != OK || !bytes.Equal(in, inner) || o.EncapLimit != 4 || o.Proto != 4 || o.Src != src || o.TOS != 0x01 {
		t.Errorf("DecodeIPv6 = %+v, %v, inner equal %v", o, r, bytes.Equal(in, inner))
	}

	e, _ = NewEncoder(src, dst, Policy{TTL: 9})
	pkt = make([]byte, 40+len(inner))
	e.Encode(pkt, inner, 0)
	copy(pkt[40:], inner)
	if pkt[6] != 4 || pkt[7] != 9 || binary.BigEndian.Uint16(pkt[4:]) != 84 {
		t.Errorf("no-limit header = % x", pkt[:40])
	}
}

func TestDecodeIPv4Errors(t *testing.T) {
	e, _ := NewEncoder(netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2"), Policy{})
	good := make([]byte, 104)
	e.Encode(good, icmpEcho(t), 3)
	copy(good[20:], icmpEcho(t))
	mod := func(f func(p []byte) []byte) []byte {
		p := f(append([]byte(nil), good...))
		return p
	}
	fix := func(p []byte) []byte {
		p[10], p[11] = 0, 0
		binary.BigEndian.PutUint16(p[10:], Checksum(p[:(p[0]&0xf)*4]))
		return p
	}
	tests := []struct {
		name string
		pkt  []byte
		want Reason
	}{
		{"good", good, OK},
		{"empty", nil, MalformedOuter},
		{"truncated header", good[:19], MalformedOuter},
		{"version 6", mod(func(p []byte) []byte { p[0] = 0x65; return fix(p) }), MalformedOuter},
		{"ihl 4", mod(func(p []byte) []byte { p[0] = 0x44; return p }), MalformedOuter},
		{"ihl past end", mod(func(p []byte) []byte { p[0] = 0x4f; return p[:40] }), MalformedOuter},
		{"total length past datagram", good[:100], MalformedOuter},
		{"total length below ihl", mod(func(p []byte) []byte { p[2], p[3] = 0, 10; return fix(p) }), MalformedOuter},
		{"bad checksum", mod(func(p []byte) []byte { p[8]--; return p }), BadOuterChecksum},
		{"fragment MF", mod(func(p []byte) []byte { p[6] = 0x20; return fix(p) }), OuterFragment},
		{"fragment offset", mod(func(p []byte) []byte { p[7] = 1; return fix(p) }), OuterFragment},
		{"protocol 17", mod(func(p []byte) []byte { p[9] = 17; return fix(p) }), UnknownProtocol},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, _, r := DecodeIPv4(tt.pkt); r != tt.want {
				t.Errorf("DecodeIPv4 = %v, want %v", r, tt.want)
			}
		})
	}
	// Trailing bytes beyond total length are trimmed.
	o, in, r := DecodeIPv4(append(append([]byte(nil), good...), 0, 0, 0))
	if r != OK || len(in) != 84 || o.Proto != 4 {
		t.Errorf("trailing bytes: %v len %d", r, len(in))
	}
}

func TestDecodeIPv6Errors(t *testing.T) {
	src, dst := netip.MustParseAddr("fd00::1"), netip.MustParseAddr("fd00::2")
	e, _ := NewEncoder(src, dst, Policy{UseEncapLimit: true, EncapLimit: 4})
	good := make([]byte, 48+84)
	e.Encode(good, icmpEcho(t), 0)
	copy(good[48:], icmpEcho(t))
	mod := func(f func(p []byte)) []byte {
		p := append([]byte(nil), good...)
		f(p)
		return p
	}
	tests := []struct {
		name string
		pkt  []byte
		want Reason
	}{
		{"good", good, OK},
		{"short", good[:39], MalformedOuter},
		{"payload length past end", good[:100], MalformedOuter},
		{"jumbo", mod(func(p []byte) { p[4], p[5] = 0, 0 }), MalformedOuter},
		{"option overruns", mod(func(p []byte) { p[43] = 9 }), MalformedOuter},
		{"ext header overruns", mod(func(p []byte) { p[41] = 200 }), MalformedOuter},
		{"fragment header", mod(func(p []byte) { p[6] = 44 }), OuterFragment},
		{"udp", mod(func(p []byte) { p[40] = 17 }), UnknownProtocol},
		{"version 4", mod(func(p []byte) { p[0] = 0x40 }), MalformedOuter},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, _, r := DecodeIPv6(tt.pkt); r != tt.want {
				t.Errorf("DecodeIPv6 = %v, want %v", r, tt.want)
			}
		})
	}
}

// TestDecapECN checks RFC 6040 Figure 4 cell by cell.
func TestDecapECN(t *testing.T) {
	const drop = 0xff
	// rows: inner Not-ECT, ECT(0), ECT(1), CE; columns: outer the same.
	table := [4][4]uint8{
		{ECNNotECT, ECNNotECT, ECNNotECT, drop},
		{ECNECT0, ECNECT0, ECNECT1, ECNCE},
		{ECNECT1, ECNECT1, ECNECT1, ECNCE},
		{ECNCE, ECNCE, ECNCE, ECNCE},
	}
	order := []uint8{ECNNotECT, ECNECT0, ECNECT1, ECNCE}
	for i, inner := range order {
		for j, outer := range order {
			got, d := DecapECN(outer|0xfc, inner|0xa8)
			if d {
				got = drop
			}
			if got != table[i][j] {
				t.Errorf("DecapECN(outer %d, inner %d) = %d, want %d", outer, inner, got, table[i][j])
			}
		}
	}
}

func TestSetECN(t *testing.T) {
	p := icmpEcho(t)
	p[1] = 0xba
	p[10], p[11] = 0, 0
	binary.BigEndian.PutUint16(p[10:], Checksum(p[:20]))
	SetECN(p, ECNCE)
	if p[1] != 0xbb || Checksum(p[:20]) != 0 {
		t.Errorf("after SetECN tos %#x checksum ok %v", p[1], Checksum(p[:20]) == 0)
	}
	v6 := mustHex(t, "6ba0 0000 0000 3a40")
	SetECN(v6, ECNCE)
	if v6[0] != 0x6b || v6[1] != 0xb0 {
		t.Errorf("v6 after SetECN % x", v6[:2])
	}
}

func TestValidateInner(t *testing.T) {
	v4 := icmpEcho(t)
	v6 := make([]byte, 40+8)
	copy(v6, mustHex(t, "6000 0000 0008 3a40 fd00 0000 0000 0000 0000 0000 0000 0001 fd00 0000 0000 0000 0000 0000 0000 0002"))
	badsum := append([]byte(nil), v4...)
	badsum[8] = 1
	tests := []struct {
		name    string
		pkt     []byte
		proto   uint8
		want    Reason
		wantLen int
	}{
		{"v4 by nibble", v4, 0, OK, 84},
		{"v4 proto 4", v4, ProtoIPIP, OK, 84},
		{"v4 in proto 41", v4, ProtoIPv6, VersionMismatch, 0},
		{"v6 in proto 4", v6, ProtoIPIP, VersionMismatch, 0},
		{"v6", v6, ProtoIPv6, OK, 48},
		{"v6 trailing trimmed", append(append([]byte(nil), v6...), 1, 2), 0, OK, 48},
		{"v6 truncated", v6[:47], 0, MalformedInner, 0},
		{"v4 truncated", v4[:83], 0, MalformedInner, 0},
		{"v4 bad checksum", badsum, 0, MalformedInner, 0},
		{"version 5", []byte{0x50, 0, 0, 0}, 0, MalformedInner, 0},
		{"empty", nil, 0, MalformedInner, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, got, r := ValidateInner(tt.pkt, tt.proto)
			if r != tt.want || len(got) != tt.wantLen {
				t.Errorf("ValidateInner = %v len %d, want %v len %d", r, len(got), tt.want, tt.wantLen)
			}
		})
	}
	p, _, _ := ValidateInner(v4, 0)
	if p.Src != netip.MustParseAddr("192.168.50.1") || p.Dst != netip.MustParseAddr("192.168.50.2") || p.Transport != 1 {
		t.Errorf("ValidateInner fields = %+v", p)
	}
}

func TestMartian(t *testing.T) {
	for _, tt := range []struct {
		addr string
		want bool
	}{
		{"10.0.0.1", false}, {"127.0.0.1", true}, {"0.0.0.0", true}, {"224.0.0.1", true},
		{"255.255.255.255", true}, {"240.0.0.1", true}, {"0.1.2.3", true},
		{"fd00::1", false}, {"::1", true}, {"::", true}, {"ff02::1", true},
		{"::ffff:10.0.0.1", true}, {"::10.0.0.1", true}, {"2001:db8::1", false},
	} {
		if got := IsMartianSource(netip.MustParseAddr(tt.addr)); got != tt.want {
			t.Errorf("IsMartianSource(%s) = %v, want %v", tt.addr, got, tt.want)
		}
	}
}

func TestNoAllocs(t *testing.T) {
	inner := icmpEcho(t)
	e, _ := NewEncoder(netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2"), Policy{})
	pkt := make([]byte, 20+len(inner))
	copy(pkt[20:], inner)
	if n := testing.AllocsPerRun(1000, func() {
		e.Encode(pkt, inner, 1)
		_, in, _ := DecodeIPv4(pkt)
		ValidateInner(in, ProtoIPIP)
	}); n != 0 {
		t.Errorf("encode+decode+validate allocs = %v, want 0", n)
	}
}

func FuzzDecode(f *testing.F) {
	e4, _ := NewEncoder(netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2"), Policy{})
	e6, _ := NewEncoder(netip.MustParseAddr("fd00::1"), netip.MustParseAddr("fd00::2"), Policy{UseEncapLimit: true, EncapLimit: 4})
	inner := icmpEcho(f)
	for _, e := range []*Encoder{e4, e6} {
		p := make([]byte, e.HeaderLen()+len(inner))
		e.Encode(p, inner, 1)
		copy(p[e.HeaderLen():], inner)
		f.Add(p)
	}
	f.Add(inner)
	f.Add([]byte{0x45})
	f.Fuzz(func(t *testing.T, pkt []byte) {
		check := func(name string, o Outer, in []byte, r Reason) {
			if r != OK {
				if in != nil {
					t.Fatalf("%s: drop %v returned an inner packet", name, r)
				}
				return
			}
			if len(in) > len(pkt) {
				t.Fatalf("%s: inner longer than packet", name)
			}
			p, trimmed, r2 := ValidateInner(in, o.Proto)
			if r2 == OK {
				if len(trimmed) > len(in) || (p.Proto != o.Proto) {
					t.Fatalf("%s: ValidateInner inconsistent: %+v", name, p)
				}
				// Re-encapsulate: what we accept, we can send again.
				src, dst := o.Src, o.Dst
				if e, err := NewEncoder(src, dst, Policy{}); err == nil {
					out := make([]byte, e.HeaderLen()+len(trimmed))
					if _, err := e.Encode(out, trimmed, o.ID); err == nil {
						copy(out[e.HeaderLen():], trimmed)
						var o2 Outer
						var in2 []byte
						var r3 Reason
						if e.IsIPv6() {
							o2, in2, r3 = DecodeIPv6(out)
						} else {
							o2, in2, r3 = DecodeIPv4(out)
						}
						if r3 != OK || !bytes.Equal(in2, trimmed) || o2.Src != src {
							t.Fatalf("%s: re-encapsulation does not round-trip: %v", name, r3)
						}
					}
				}
			}
		}
		o, in, r := DecodeIPv4(pkt)
		check("v4", o, in, r)
		o, in, r = DecodeIPv6(pkt)
		check("v6", o, in, r)
		_, trimmed, r := ValidateInner(pkt, 0)
		if r == OK && len(trimmed) > len(pkt) {
			t.Fatal("trimmed longer than input")
		}
	})
}

func BenchmarkEncap(b *testing.B) {
	for _, size := range []int{64, 576, 1280, 1420, 1500, 9000} {
		b.Run(fmt.Sprint(size), func(b *testing.B) {
			inner := make([]byte, size)
			copy(inner, icmpEcho(b))
			binary.BigEndian.PutUint16(inner[2:], uint16(size))
			e, _ := NewEncoder(netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2"), Policy{})
			out := make([]byte, 20+size)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				e.Encode(out, inner, 1)
				copy(out[20:], inner)
			}
		})
	}
}

func BenchmarkDecap(b *testing.B) {
	for _, size := range []int{64, 576, 1280, 1420, 1500, 9000} {
		b.Run(fmt.Sprint(size), func(b *testing.B) {
			inner := make([]byte, size)
			copy(inner, icmpEcho(b)[:20])
			binary.BigEndian.PutUint16(inner[2:], uint16(size))
			inner[10], inner[11] = 0, 0
			binary.BigEndian.PutUint16(inner[10:], Checksum(inner[:20]))
			e, _ := NewEncoder(netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2"), Policy{})
			pkt := make([]byte, 20+size)
			e.Encode(pkt, inner, 1)
			copy(pkt[20:], inner)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				_, in, r := DecodeIPv4(pkt)
				if _, _, r2 := ValidateInner(in, ProtoIPIP); r != OK || r2 != OK {
					b.Fatal(r, r2)
				}
			}
		})
	}
}

func TestClearDF(t *testing.T) {
	// The header of TestEncodeIPv4Capture, DF set.
	h := mustHex(t, "4500 0068 0001 4000 ff04 236c ac10 0a02 9810 0a02")
	ClearDF(h)
	// Checksum by hand: 0x2dc91 - 0x4000 = 0x29c91, folded 0x9c93,
	// complemented 0x636c.
	want := mustHex(t, "4500 0068 0001 0000 ff04 636c ac10 0a02 9810 0a02")
	if !bytes.Equal(h, want) {
		t.Errorf("ClearDF = % x\nwant      % x", h, want)
	}
	ClearDF(h) // DF already clear: unchanged
	if !bytes.Equal(h, want) {
		t.Errorf("ClearDF twice = % x\nwant            % x", h, want)
	}
	// The same as an Encoder with DFClear writes, for every ID.
	inner := icmpEcho(t)
	set, _ := NewEncoder(netip.MustParseAddr("172.16.10.2"), netip.MustParseAddr("152.16.10.2"), Policy{DF: DFSet})
	clr, _ := NewEncoder(netip.MustParseAddr("172.16.10.2"), netip.MustParseAddr("152.16.10.2"), Policy{DF: DFClear})
	for id := range 1 << 16 {
		var a, b [IPv4HeaderLen]byte
		set.Encode(a[:], inner, uint16(id))
		clr.Encode(b[:], inner, uint16(id))
		ClearDF(a[:])
		if a != b {
			t.Fatalf("ID %#04x: ClearDF = % x, DFClear encodes % x", id, a, b)
		}
	}
	v6 := bytes.Repeat([]byte{0x60}, IPv6HeaderLen)
	ClearDF(v6)
	if !bytes.Equal(v6, bytes.Repeat([]byte{0x60}, IPv6HeaderLen)) {
		t.Errorf("ClearDF changed an IPv6 header: % x", v6)
	}
}
