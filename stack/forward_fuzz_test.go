package stack

import (
	"bytes"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// FuzzRefragment feeds splitIPv4 arbitrary IPv4 packets and MTUs: the
// header (options included) as the fuzzer makes it, with its flags and
// fragment offset field, and a payload of the fuzzer's size filled with a
// pattern (so that inputs stay small and minimize fast); total length and
// header checksum are fixed up, as forward4 checks them first. It checks
// each cut: the pieces fit the MTU and have a valid header; their data
// ends by byte 65535 of the datagram, so no offset wraps; their offsets
// follow on from the packet's, strictly increasing; every piece but the
// last carries a multiple of 8 bytes and has More Fragments, the last has
// it if the packet had; the other header fields are the packet's; and
// their payloads add up to the packet's.
func FuzzRefragment(f *testing.F) {
	payload := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(i*7 + i>>8)
		}
		return b
	}
	// Router Alert (copied), No Operation, Timestamp (not copied), End.
	opts := []byte{0x94, 4, 0, 0, 1, 0x44, 8, 5, 0, 0, 0, 0, 0, 0, 0, 0}
	for _, s := range []struct {
		opts   []byte
		flags  uint8
		offset int
		size   int
		mtu    uint16
	}{
		{nil, 0, 0, 1400, 576},                                 // a whole datagram
		{nil, header.IPv4FlagMoreFragments, 0, 2960, 1280},     // a first fragment
		{nil, 0, 64000, 1500, 1280},                            // a last fragment that would wrap
		{nil, 0, 65528 - 1480, 1487, 1500},                     // the last fragment that fits
		{nil, header.IPv4FlagMoreFragments, 65528, 16, 28},     // the highest offset
		{opts, 0, 0, 3000, 1280},                               // IPv4 options
		{opts, header.IPv4FlagMoreFragments, 1448, 1001, 1001}, // options, odd sizes
		{nil, header.IPv4FlagMoreFragments, 8, 999, 577},       // odd sizes
		{nil, 0, 0, 1000, 68},                                  // the smallest IPv4 MTU
		{opts, header.IPv4FlagDontFragment, 0, 200, 68},        // DF kept, options at MTU 68
		{[]byte{0x94, 8, 0, 0}, 0, 0, 200, 100},                // a malformed option
	} {
		hdr := ipv4Packet(s.opts, s.flags, s.offset, nil)
		f.Add(hdr, uint16(s.size), s.mtu)
	}
	f.Fuzz(func(t *testing.T, hdr []byte, size, mtu uint16) {
		if len(hdr) < header.IPv4MinimumSize || hdr[0]>>4 != 4 {
			return
		}
		hl := int(hdr[0]&0xf) * 4
		if hl < header.IPv4MinimumSize || hl > len(hdr) || hl+int(size) > 0xffff {
			return
		}
		p := append(hdr[:hl:hl], payload(int(size))...)
		ip := header.IPv4(p)
		ip.SetTotalLength(uint16(len(p)))
		ip.SetChecksum(0)
		ip.SetChecksum(^ip.CalculateChecksum())
		in := append([]byte(nil), p...)

		var data []byte
		emitted := 0
		next := int(ip.FragmentOffset())
		lastMore := false
		n := splitIPv4(p, int(mtu), func(hdr, pl []byte) {
			emitted++
			h := header.IPv4(hdr)
			off := int(h.FragmentOffset()) // in bytes
			switch {
			case len(hdr) < header.IPv4MinimumSize || hdr[0]>>4 != 4 || int(h.HeaderLength()) != len(hdr):
				t.Fatalf("piece %d: header of %d bytes, IHL %d", emitted, len(hdr), h.HeaderLength())
			case len(hdr)+len(pl) > int(mtu):
				t.Fatalf("piece %d: %d bytes, MTU %d", emitted, len(hdr)+len(pl), mtu)
			case int(h.TotalLength()) != len(hdr)+len(pl):
				t.Fatalf("piece %d: total length %d, is %d bytes", emitted, h.TotalLength(), len(hdr)+len(pl))
			case !h.IsChecksumValid():
				t.Fatalf("piece %d: bad header checksum", emitted)
			case off+len(pl) > 0xffff:
				t.Fatalf("piece %d: data at %d to %d, past byte 65535", emitted, off, off+len(pl))
			case off != next || emitted > 1 && len(pl) == 0:
				t.Fatalf("piece %d: offset %d, want %d, %d bytes", emitted, off, next, len(pl))
			case emitted > 1 && !lastMore:
				t.Fatalf("piece %d follows a piece without More Fragments", emitted)
			case h.Flags()&^header.IPv4FlagMoreFragments != ip.Flags()&^header.IPv4FlagMoreFragments:
				t.Fatalf("piece %d: flags %#x, packet's %#x", emitted, h.Flags(), ip.Flags())
			case !bytes.Equal(hdr[1:2], in[1:2]) || !bytes.Equal(hdr[4:6], in[4:6]) || !bytes.Equal(hdr[8:10], in[8:10]) || !bytes.Equal(hdr[12:20], in[12:20]):
				t.Fatalf("piece %d: header fields changed: % x, packet's % x", emitted, hdr[:20], in[:20])
			case emitted == 1 && !bytes.Equal(hdr[20:], in[20:hl]):
				t.Fatalf("first piece's options % x, want the packet's % x", hdr[20:], in[20:hl])
			}
			if lastMore && len(data)%8 != 0 {
				t.Fatalf("piece %d follows a piece whose data is not a multiple of 8 bytes", emitted)
			}
			lastMore = h.More()
			next = off + len(pl)
			data = append(data, pl...)
		})
		if n != emitted {
			t.Fatalf("splitIPv4 returned %d, emitted %d pieces", n, emitted)
		}
		if n == 0 {
			return
		}
		if lastMore != ip.More() {
			t.Errorf("last piece MF %v, packet's %v", lastMore, ip.More())
		}
		if !bytes.Equal(data, in[hl:]) {
			t.Errorf("the pieces' payloads (%d bytes) do not add up to the packet's (%d)", len(data), len(in)-hl)
		}
		if !bytes.Equal(p, in) {
			t.Errorf("splitIPv4 changed its input")
		}
	})
}
