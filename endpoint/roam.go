package endpoint

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/ipipstack/ipipstack/endpoint/encap"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// Roaming, made hard to abuse. IPIP and FOU authenticate nothing but the
// outer address, so a single datagram with an allowed inner source must not
// move where the endpoint sends: anyone who can reach the port could take
// the tunnel's traffic (and, on a router, its default route). A valid packet
// from a new outer address is delivered as before, but the peer moves only
// once that address has proved it receives what is sent to it: the endpoint
// sends it an ICMP (or ICMPv6) echo request with a random identifier,
// sequence number and 16-byte payload, from the inner destination of the
// packet that arrived to its inner source (the peer, or a host behind it,
// as Linux answers echo by default), and moves when the reply comes back
// from that address with the same 20 random bytes (a return routability
// check, as Mobile IPv6 does, RFC 6275 §5.2.5). An off-path attacker never
// sees the request. Probes leave at most once per roamProbeInterval, moves
// happen at most once per roamMoveInterval, and each move is logged at
// warn.
const (
	roamProbeInterval = time.Second
	roamMoveInterval  = 5 * time.Second
	roamNonceLen      = 16
)

// roamer is the state of the return routability check of one endpoint.
type roamer struct {
	// mu guards the fields below; only packets from an address other than
	// the peer's take it.
	mu       sync.Mutex
	cand     netip.AddrPort // the address probed
	nonce    [4 + roamNonceLen]byte
	sent     time.Time // when the last probe left; zero: none
	lastMove time.Time
	// moveInterval is roamMoveInterval; tests shorten it.
	moveInterval time.Duration
}

// roam handles a valid packet from src, which is not the peer's address,
// on a roaming endpoint: it moves the peer if the packet is the reply to a
// probe of src, and probes src otherwise. inner has passed every check.
func (e *Endpoint) roam(src netip.AddrPort, inner []byte, p encap.Packet) {
	r := &e.roamer
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	if !r.sent.IsZero() && src == r.cand && isEchoReply(inner, p, r.nonce[:]) {
		r.sent = time.Time{}
		if !r.lastMove.IsZero() && now.Sub(r.lastMove) < r.moveInterval {
			e.stats.roamsRefused.Add(1)
			return
		}
		from := e.Remote()
		r.lastMove = now
		e.setRemote(src)
		e.stats.roams.Add(1)
		e.log.Warn("tunnel peer moved: the new address answered an echo request sent to it",
			"tunnel", e.name, "from", from, "to", src)
		return
	}
	if !r.sent.IsZero() && now.Sub(r.sent) < roamProbeInterval {
		return
	}
	if _, err := rand.Read(r.nonce[:]); err != nil {
		return
	}
	r.cand, r.sent = src, now
	e.sendProbe(src, p.Dst, p.Src, r.nonce[:])
}

// isEchoReply reports whether inner is an ICMP or ICMPv6 echo reply whose
// identifier, sequence number and payload are nonce.
func isEchoReply(inner []byte, p encap.Packet, nonce []byte) bool {
	var l4 []byte
	switch {
	case p.Proto == encap.ProtoIPIP && p.Transport == protoICMP:
		ihl := int(inner[0]&0xf) * 4
		if binary.BigEndian.Uint16(inner[6:])&0x3fff != 0 {
			return false
		}
		l4 = inner[ihl:]
		if len(l4) < 4 || l4[0] != byte(header.ICMPv4EchoReply) || l4[1] != 0 {
			return false
		}
	case p.Proto == encap.ProtoIPv6 && p.Transport == protoICMPv6:
		l4 = inner[header.IPv6MinimumSize:]
		if len(l4) < 4 || l4[0] != byte(header.ICMPv6EchoReply) || l4[1] != 0 {
			return false
		}
	default:
		return false
	}
	return len(l4) == 4+len(nonce) && string(l4[4:]) == string(nonce)
}

// sendProbe sends an echo request from inner address from to inner
// address to, carrying nonce (identifier, sequence number, payload), to
// the outer address cand. Probes are rare: this allocates.
func (e *Endpoint) sendProbe(cand netip.AddrPort, from, to netip.Addr, nonce []byte) {
	pkt := echoRequest(from, to, nonce)
	if pkt == nil {
		return
	}
	m := Message{Addr: cand}
	if e.framing == FramingUDP {
		in, _ := encap.PeekInner(pkt)
		e.outerFields(&m, in)
		m.Buffers = [][]byte{pkt}
	} else {
		enc, err := encap.NewEncoder(e.local, cand.Addr(), e.pol)
		if err != nil {
			return
		}
		hdr := make([]byte, encap.IPv6HeaderLen+encap.EncapLimitLen)
		n, err := enc.EncodeHead(hdr, pkt, len(pkt), uint16(e.ipID.Add(1)))
		if err != nil {
			return
		}
		m.Buffers = [][]byte{hdr[:n], pkt}
	}
	if _, err := e.tr.WriteBatch([]Message{m}); err != nil {
		e.logSendError(err)
		return
	}
	e.stats.roamProbes.Add(1)
}

// echoRequest builds an ICMP (IPv4) or ICMPv6 echo request from -> to whose
// identifier, sequence number and payload are nonce.
func echoRequest(from, to netip.Addr, nonce []byte) []byte {
	if from.Is4() != to.Is4() {
		return nil
	}
	l4len := 4 + len(nonce)
	if from.Is4() {
		b := make([]byte, header.IPv4MinimumSize+l4len)
		ip := header.IPv4(b)
		ip.Encode(&header.IPv4Fields{
			TotalLength: uint16(len(b)), TTL: 64, Protocol: protoICMP,
			SrcAddr: tcpip.AddrFromSlice(from.AsSlice()), DstAddr: tcpip.AddrFromSlice(to.AsSlice()),
		})
		ip.SetChecksum(^ip.CalculateChecksum())
		l4 := b[header.IPv4MinimumSize:]
		l4[0] = byte(header.ICMPv4Echo)
		copy(l4[4:], nonce)
		binary.BigEndian.PutUint16(l4[2:], ^checksum.Checksum(l4, 0))
		return b
	}
	b := make([]byte, header.IPv6MinimumSize+l4len)
	header.IPv6(b).Encode(&header.IPv6Fields{
		PayloadLength: uint16(l4len), TransportProtocol: protoICMPv6, HopLimit: 64,
		SrcAddr: tcpip.AddrFromSlice(from.AsSlice()), DstAddr: tcpip.AddrFromSlice(to.AsSlice()),
	})
	l4 := b[header.IPv6MinimumSize:]
	l4[0] = byte(header.ICMPv6EchoRequest)
	copy(l4[4:], nonce)
	binary.BigEndian.PutUint16(l4[2:], ^checksum.Checksum(l4, pseudoSum(from, to, protoICMPv6, l4len)))
	return b
}

// txPeer is the peer as the send path sees it: its outer address and, for
// a raw transport, the encoder of outer headers addressed to it (nil for
// UDP, whose outer header the kernel writes from Message.Addr).
type txPeer struct {
	addr netip.AddrPort
	enc  *encap.Encoder
}

// setRemote makes peer, to which the peer roamed, the destination of what
// the endpoint sends: the socket address and, over raw sockets
// (IP_HDRINCL: the kernel sends the header as the endpoint wrote it), the
// outer header's destination. It allocates; roaming is rare.
func (e *Endpoint) setRemote(peer netip.AddrPort) {
	p, err := e.newTxPeer(peer)
	if err != nil {
		// Not reached: the receiving socket's family is the local one.
		e.log.Warn("tunnel peer not moved", "tunnel", e.name, "to", peer, "err", err)
		return
	}
	e.storePeer(p)
}

func (e *Endpoint) newTxPeer(peer netip.AddrPort) (*txPeer, error) {
	p := &txPeer{addr: peer}
	if e.framing != FramingUDP {
		enc, err := encap.NewEncoder(e.local, peer.Addr(), e.pol)
		if err != nil {
			return nil, fmt.Errorf("endpoint: outer header from %v to %v: %w", e.local, peer.Addr(), err)
		}
		p.enc = enc
	}
	return p, nil
}

// storePeer swaps in p for both paths. roamMu keeps remote and peer from
// naming different peers when two receive goroutines see a roam at once.
func (e *Endpoint) storePeer(p *txPeer) {
	e.roamMu.Lock()
	defer e.roamMu.Unlock()
	e.peer.Store(p)
	e.remote.Store(&p.addr)
}
