package stack_test

import (
	"encoding/binary"
	"testing"

	"github.com/ipipstack/ipipstack/internal/servicetest"
	"github.com/ipipstack/ipipstack/stack"
)

// synMSS walks a pcap of raw IPv4 packets and returns the MSS option of
// every TCP SYN in it.
func synMSS(t *testing.T, pcap []byte) []int {
	t.Helper()
	if len(pcap) < 24 || binary.LittleEndian.Uint32(pcap) != 0xa1b2c3d4 {
		t.Fatalf("not a little-endian pcap file (%d bytes)", len(pcap))
	}
	var out []int
	for p := pcap[24:]; len(p) >= 16; {
		incl := int(binary.LittleEndian.Uint32(p[8:]))
		if 16+incl > len(p) {
			t.Fatalf("truncated pcap record")
		}
		pkt := p[16 : 16+incl]
		p = p[16+incl:]
		if len(pkt) < 40 || pkt[0]>>4 != 4 || pkt[9] != 6 {
			continue
		}
		tcp := pkt[int(pkt[0]&0xf)*4:]
		if tcp[13]&0x02 == 0 { // SYN
			continue
		}
		opts := tcp[20 : int(tcp[12]>>4)*4]
		for len(opts) > 0 {
			switch opts[0] {
			case 0:
				opts = nil
				continue
			case 1:
				opts = opts[1:]
				continue
			}
			if len(opts) < 2 || int(opts[1]) < 2 || int(opts[1]) > len(opts) {
				break
			}
			if opts[0] == 2 && opts[1] == 4 {
				out = append(out, int(binary.BigEndian.Uint16(opts[2:])))
			}
			opts = opts[opts[1]:]
		}
	}
	return out
}

// TestAdvertisedMSS checks the MSS the stack advertises over FOU, as the
// Linux kernel does: MTU 1472 gives MSS 1432 (and ipip's 1480 gives 1440).
func TestAdvertisedMSS(t *testing.T) {
	for _, tc := range []struct {
		mtu, mss int
	}{{0, 1432}, {1480, 1440}} {
		var capA servicetest.LogBuffer
		p := newPair(t, "127.0.0.1", func(side int, tun *stack.Tunnel) {
			tun.MTU = tc.mtu
			if side == 0 {
				tun.Capture = &capA
			}
		})
		transfer(t, p.a, p.b, "10.99.0.2:5010", 64<<10)
		got := synMSS(t, capA.Bytes())
		if len(got) != 2 {
			t.Fatalf("MTU %d: found %d SYNs with an MSS in the capture, want 2 (SYN and SYN-ACK)", tc.mtu, len(got))
		}
		for _, mss := range got {
			if mss != tc.mss {
				t.Errorf("MTU %d: advertised MSS %d, want %d", tc.mtu, mss, tc.mss)
			}
		}
	}
}
