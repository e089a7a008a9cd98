package endpoint

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// icmpv6Valid reports whether the ICMPv6 message of the IPv6 packet p has a
// correct checksum.
func icmpv6Valid(p []byte) bool {
	ip := header.IPv6(p)
	icmp := header.ICMPv6(p[header.IPv6MinimumSize:])
	want := header.ICMPv6Checksum(header.ICMPv6ChecksumParams{
		Header:      icmp[:header.ICMPv6MinimumSize],
		Src:         ip.SourceAddress(),
		Dst:         ip.DestinationAddress(),
		PayloadCsum: checksum.Checksum(icmp[header.ICMPv6MinimumSize:], 0),
		PayloadLen:  len(icmp) - header.ICMPv6MinimumSize,
	})
	return icmp.Checksum() == want
}

func TestFixPacketTooBig(t *testing.T) {
	src, dst := netip.MustParseAddr("fd00:0:1::2"), netip.MustParseAddr("fd00:0:1::1")
	quote := seedIPv6(dst, netip.MustParseAddr("fd00:0:2::2"), 6, make([]byte, 60))
	for _, mtu := range []uint32{0, 1279, 1280, 1400} {
		p := make([]byte, header.IPv6MinimumSize+header.ICMPv6MinimumSize+len(quote))
		header.IPv6(p).Encode(&header.IPv6Fields{PayloadLength: uint16(len(p) - 40), TransportProtocol: header.ICMPv6ProtocolNumber,
			HopLimit: 64, SrcAddr: tcpip.AddrFrom16(src.As16()), DstAddr: tcpip.AddrFrom16(dst.As16())})
		icmp := header.ICMPv6(p[40:])
		icmp.SetType(header.ICMPv6PacketTooBig)
		icmp.SetMTU(mtu)
		copy(icmp[8:], quote)
		icmp.SetChecksum(0)
		sum := header.ICMPv6Checksum(header.ICMPv6ChecksumParams{Header: icmp[:8], Src: tcpip.AddrFrom16(src.As16()), Dst: tcpip.AddrFrom16(dst.As16()),
			PayloadCsum: checksum.Checksum(quote, 0), PayloadLen: len(quote)})
		icmp.SetChecksum(sum)
		clampTooBig(p)
		want := max(mtu, MinIPv6MTU)
		if got := icmp.MTU(); got != want {
			t.Errorf("MTU %d: fixed to %d, want %d", mtu, got, want)
		}
		if !icmpv6Valid(p) {
			t.Errorf("MTU %d: checksum %#04x wrong after the fix", mtu, icmp.Checksum())
		}
	}
}

func TestTooBigMessage(t *testing.T) {
	a4, b4 := netip.MustParseAddr("10.0.1.1"), netip.MustParseAddr("10.0.2.2")
	syn := seedIPv4(a4, b4, 6, 0, 0x4000, seedTCPSyn(a4, b4)) // DF
	if makeTooBig(syn, 1372) == nil {
		t.Fatal("no Fragmentation Needed for a DF packet")
	}
	m := makeTooBig(syn, 1372)
	ip := header.IPv4(m)
	if !ip.IsChecksumValid() || ip.SourceAddress() != tcpip.AddrFrom4(b4.As4()) || ip.DestinationAddress() != tcpip.AddrFrom4(a4.As4()) {
		t.Errorf("IPv4 header %x: bad checksum or addresses", m[:20])
	}
	icmp := header.ICMPv4(m[20:])
	if icmp.Type() != header.ICMPv4DstUnreachable || icmp.Code() != header.ICMPv4FragmentationNeeded ||
		binary.BigEndian.Uint16(icmp[6:]) != 1372 || checksum.Checksum(icmp, 0) != 0xffff {
		t.Errorf("ICMP %x: want Fragmentation Needed, MTU 1372, valid checksum", icmp[:8])
	}
	if got, want := len(icmp[8:]), int(header.IPv4(syn).HeaderLength())+8; got != want {
		t.Errorf("quoted %d bytes, want %d", got, want)
	}
	noDF := seedIPv4(a4, b4, 17, 0, 0, make([]byte, 100))
	if makeTooBig(noDF, 1372) != nil {
		t.Error("Fragmentation Needed for a packet without DF")
	}

	a6, b6 := netip.MustParseAddr("fd00:0:1::1"), netip.MustParseAddr("fd00:0:2::2")
	big := seedIPv6(a6, b6, 17, make([]byte, 1400))
	m = makeTooBig(big, 1352)
	if m == nil || len(m) != MinIPv6MTU {
		t.Fatalf("Packet Too Big of %d bytes, want %d", len(m), MinIPv6MTU)
	}
	if icmp := header.ICMPv6(m[40:]); icmp.Type() != header.ICMPv6PacketTooBig || icmp.MTU() != 1352 || !icmpv6Valid(m) {
		t.Errorf("ICMPv6 %x: want Packet Too Big, MTU 1352, valid checksum", icmp[:8])
	}
	if makeTooBig(m, 1352) != nil {
		t.Error("Packet Too Big in answer to an ICMPv6 error")
	}
}
