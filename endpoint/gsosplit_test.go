package endpoint

import (
	"bytes"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// TestWriteSuperGSOLimits writes one super-segment of n packets and checks
// that it is queued as UDP_SEGMENT messages within the kernel's per-send
// limits: at most 64 segments (UDP_MAX_SEGMENTS) and 65,507 bytes each,
// holding the super-segment's packets in order.
func TestWriteSuperGSOLimits(t *testing.T) {
	const hdr = header.IPv4MinimumSize + header.TCPMinimumSize
	tests := []struct {
		name    string
		mss, n  int
		payload int // bytes; 0 means n full packets
		// want is the number of packets in each message, by hand: at
		// most 64, and at most 65507/(hdr+mss).
		want []int
	}{
		// 150 packets of 140 bytes: the 64-segment limit binds.
		{name: "segments", mss: 100, n: 150, want: []int{64, 64, 22}},
		// 60 of 1440 bytes: 65507/1440 = 45 per message.
		{name: "bytes", mss: 1400, n: 60, want: []int{45, 15}},
		// The reviewer's case: MSS 524 under a sizing for 1500-byte
		// packets, 122 packets, the last one short.
		{name: "small mss", mss: 524, n: 122, payload: 121*524 + 100, want: []int{64, 58}},
		// 65 packets: the last message holds one packet, sent plain.
		{name: "one left", mss: 100, n: 65, want: []int{64, 1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			local, remote := netip.AddrPortFrom(outer4L, 4700), netip.AddrPortFrom(outer4R, 4701)
			tr := gsoTransport{newMemTransport(FramingUDP, local)}
			e, err := New(Options{Transport: tr, Remote: remote, MTU: 1472})
			if err != nil {
				t.Fatal(err)
			}
			defer e.Close()
			size := tc.payload
			if size == 0 {
				size = tc.n * tc.mss
			}
			payload := make([]byte, size)
			for i := range payload {
				payload[i] = byte(i * 7)
			}
			pkt := superSegment(payload, 5000, tc.mss)
			defer pkt.DecRef()
			if _, terr := e.WritePackets(pktList(pkt)); terr != nil {
				t.Fatal(terr)
			}
			sent := tr.takeSent()
			if len(sent) != len(tc.want) {
				t.Fatalf("%d messages sent, want %d", len(sent), len(tc.want))
			}
			seg := hdr + tc.mss
			off, pkts := 0, 0
			for i, m := range sent {
				if len(m.data) > maxGSOBytes {
					t.Errorf("message %d: %d bytes, above the %d of one UDP_SEGMENT send", i, len(m.data), maxGSOBytes)
				}
				got := (len(m.data) + seg - 1) / seg
				if got != tc.want[i] {
					t.Errorf("message %d holds %d packets, want %d", i, got, tc.want[i])
				}
				if wantGSO := seg; got == 1 && m.gso != 0 || got > 1 && m.gso != wantGSO {
					t.Errorf("message %d: GSO size %d with %d packets, want %d (0 for one packet)", i, m.gso, got, wantGSO)
				}
				for p := 0; p*seg < len(m.data); p++ {
					b := m.data[p*seg : min((p+1)*seg, len(m.data))]
					tcp := header.TCP(b[header.IPv4MinimumSize:])
					if want := uint32(5000 + off); tcp.SequenceNumber() != want {
						t.Fatalf("message %d, packet %d: sequence %d, want %d", i, p, tcp.SequenceNumber(), want)
					}
					if !bytes.Equal(b[hdr:], payload[off:off+len(b)-hdr]) {
						t.Fatalf("message %d, packet %d: payload differs", i, p)
					}
					off += len(b) - hdr
					pkts++
				}
			}
			if off != size || pkts != tc.n {
				t.Errorf("messages hold %d packets, %d payload bytes; want %d, %d", pkts, off, tc.n, size)
			}
			if st := e.Stats(); st.TxPackets != uint64(tc.n) || st.DropTotal() != 0 {
				t.Errorf("TxPackets %d, drops %v; want %d, none", st.TxPackets, st.Drops, tc.n)
			}
		})
	}
}

// gsoRefusingTransport is a memTransport with UDP GSO that the kernel
// refuses at run time, as udp_send_skb does with EIO on a device without
// TX checksumming: every message with a GSO size fails.
type gsoRefusingTransport struct {
	*memTransport
	mu      sync.Mutex
	refused int
}

func (*gsoRefusingTransport) Offloads() Offloads { return Offloads{GSO: true} }

func (g *gsoRefusingTransport) WriteBatch(msgs []Message) (int, error) {
	for i := range msgs {
		if msgs[i].GSOSize > 0 {
			n, _ := g.memTransport.WriteBatch(msgs[:i])
			g.mu.Lock()
			g.refused++
			g.mu.Unlock()
			return n, os.NewSyscallError("sendmmsg", syscall.EIO)
		}
	}
	return g.memTransport.WriteBatch(msgs)
}

// TestGSORefusedFallsBack checks that when the kernel refuses UDP_SEGMENT
// at run time, the refused packets still leave, one datagram each, that
// the endpoint stops asking for GSO for good, and that the fallback is
// counted.
func TestGSORefusedFallsBack(t *testing.T) {
	local, remote := netip.AddrPortFrom(outer4L, 4700), netip.AddrPortFrom(outer4R, 4701)
	tr := &gsoRefusingTransport{memTransport: newMemTransport(FramingUDP, local)}
	e, err := New(Options{Transport: tr, Remote: remote, MTU: 1472})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	const mss, n = 1000, 10
	const seg = header.IPv4MinimumSize + header.TCPMinimumSize + mss
	for round := range 2 {
		payload := bytes.Repeat([]byte{byte(round + 1)}, n*mss)
		pkt := superSegment(payload, uint32(100+round*n*mss), mss)
		if _, terr := e.WritePackets(pktList(pkt)); terr != nil {
			t.Fatal(terr)
		}
		pkt.DecRef()
		sent := tr.takeSent()
		if len(sent) != n {
			t.Fatalf("round %d: %d datagrams sent, want %d", round, len(sent), n)
		}
		for i, m := range sent {
			if m.gso != 0 || len(m.data) != seg {
				t.Fatalf("round %d, datagram %d: %d bytes, GSO size %d; want %d, 0", round, i, len(m.data), m.gso, seg)
			}
			if got, want := header.TCP(m.data[20:]).SequenceNumber(), uint32(100+round*n*mss+i*mss); got != want {
				t.Fatalf("round %d, datagram %d: sequence %d, want %d", round, i, got, want)
			}
			if m.data[seg-1] != byte(round+1) {
				t.Fatalf("round %d, datagram %d: payload of another round", round, i)
			}
		}
	}
	st := e.Stats()
	if st.TxPackets != 2*n || st.DropTotal() != 0 {
		t.Errorf("TxPackets %d, drops %v; want %d, none", st.TxPackets, st.Drops, 2*n)
	}
	if st.TxGSORefused != 1 {
		t.Errorf("TxGSORefused = %d, want 1", st.TxGSORefused)
	}
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if tr.refused != 1 {
		t.Errorf("the transport refused %d GSO messages, want 1: GSO must stay off after the first refusal", tr.refused)
	}
}
