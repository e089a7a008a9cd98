package endpoint

import (
	"encoding/binary"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// Offloads are the segmentation offloads a Transport supports. A Transport
// that does not implement Offloader has none.
type Offloads struct {
	// GSO: a written Message may carry GSOSize, and the kernel cuts it
	// into datagrams of that size (UDP_SEGMENT).
	GSO bool
	// GRO: a read Message may hold several datagrams of GSOSize bytes
	// back to back (UDP_GRO).
	GRO bool
	// RXChecksum: read Messages say truly whether the kernel verified
	// them (Message.Verified). A transport without it, such as a wrapper
	// that may change bytes after the kernel's check, is never trusted.
	RXChecksum bool
}

// Offloader is implemented by transports with segmentation offloads.
type Offloader interface {
	Offloads() Offloads
}

// Limits of one UDP_SEGMENT send (Linux UDP_MAX_SEGMENTS and the largest
// UDP payload in an IPv4 datagram). The kernel refuses a send above them
// with EINVAL (udp_send_skb) or EMSGSIZE (ip_append_data).
const (
	maxGSOSegments = 64
	maxGSOBytes    = 65507
)

// gsoSegmentsPerSend is the most segments of segSize bytes that one
// UDP_SEGMENT send may carry; at least 1.
func gsoSegmentsPerSend(segSize int) int {
	return max(1, min(maxGSOSegments, maxGSOBytes/segSize))
}

// tcpFlagMask are the flags that may appear only on the first (CWR) or the
// last (FIN, PSH) packet cut from a super-segment.
const (
	tcpFlagCWR = 0x80
	tcpFlagFIN = 0x01
	tcpFlagPSH = 0x08
)

// gsoMaxSize is the largest TCP super-segment the endpoint asks gVisor for,
// given the inner MTU: as many full packets as fit into one UDP_SEGMENT
// send, so that a super-segment of MTU-sized packets is one system call.
// gVisor caps a super-segment's payload at GSOMaxSize minus 161 bytes,
// header.TCPTotalHeaderMaximumSize + 1 (tcp/snd.go sendData; checked by
// stack's TestGVisorTCPHostGSO). Its MSS can be smaller than the MTU
// allows (a peer's MSS, path MTU discovery), and then a super-segment holds
// more packets than one send takes: writeSuper splits it (queueGSO).
func gsoMaxSize(mtu uint32) uint32 {
	payload := int(mtu) - header.IPv4MinimumSize - header.TCPMinimumSize - header.TCPOptionsMaximumSize
	if payload <= 0 {
		return 0
	}
	segs := min(maxGSOSegments, maxGSOBytes/int(mtu))
	if segs < 2 {
		return 0
	}
	return uint32(segs*payload + header.TCPTotalHeaderMaximumSize + 1)
}

// segmentTCP cuts the TCP super-segment pkt into packets of at most mss
// payload bytes, written back to back into out, each with its own IP total
// length, IPv4 ID and header checksum, TCP sequence number and complete
// checksum; PSH and FIN stay on the last packet only, CWR on the first. It
// returns the bytes written and the size of every packet but the last.
// out must hold the whole result: payload + headers per packet.
func segmentTCP(out []byte, pkt *stack.PacketBuffer, mss int) (n, segSize int) {
	ip := pkt.NetworkHeader().Slice()
	tcp := pkt.TransportHeader().Slice()
	l3, l4 := len(ip), len(tcp)
	hdr := l3 + l4
	v6 := ip[0]>>4 == 6
	var src, dst tcpip.Address
	var id uint16
	if v6 {
		h := header.IPv6(ip)
		src, dst = h.SourceAddress(), h.DestinationAddress()
	} else {
		h := header.IPv4(ip)
		src, dst = h.SourceAddress(), h.DestinationAddress()
		id = h.ID()
	}
	seq := header.TCP(tcp).SequenceNumber()
	flags := tcp[header.TCPFlagsOffset]
	total := pkt.Data().Size()

	// Copy the payload in place first, leaving room for the headers, so
	// that the views are walked once.
	vl, off := pkt.AsViewList()
	skip := off + hdr
	w := 0 // payload bytes written
	for v := vl.Front(); v != nil; v = v.Next() {
		b := v.AsSlice()
		if skip >= len(b) {
			skip -= len(b)
			continue
		}
		b, skip = b[skip:], 0
		for len(b) > 0 {
			seg := w / mss
			inSeg := w % mss
			room := mss - inSeg
			c := copy(out[seg*(hdr+mss)+hdr+inSeg:], b[:min(room, len(b))])
			b = b[c:]
			w += c
		}
	}
	pieces := (total + mss - 1) / mss
	for i := 0; i < pieces; i++ {
		start := i * (hdr + mss)
		plen := min(mss, total-i*mss)
		p := out[start : start+hdr+plen]
		copy(p, ip)
		copy(p[l3:], tcp)
		if v6 {
			binary.BigEndian.PutUint16(p[4:], uint16(l4+plen))
		} else {
			h := header.IPv4(p[:l3])
			h.SetTotalLength(uint16(hdr + plen))
			h.SetID(id + uint16(i))
			h.SetChecksum(0)
			h.SetChecksum(^h.CalculateChecksum())
		}
		t := header.TCP(p[l3:])
		t.SetSequenceNumber(seq + uint32(i*mss))
		f := flags
		if i != 0 {
			f &^= tcpFlagCWR
		}
		if i != pieces-1 {
			f &^= tcpFlagFIN | tcpFlagPSH
		}
		p[l3+header.TCPFlagsOffset] = f
		t.SetChecksum(0)
		sum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, uint16(l4+plen))
		t.SetChecksum(^checksum.Checksum(p[l3:], sum))
		n = start + hdr + plen
	}
	return n, hdr + mss
}
