package stack

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net/netip"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/waiter"
)

// Defaults and bounds of TraceOptions.
const (
	DefaultTraceMaxHops = 30
	MaxTraceHops        = 64
	DefaultTraceWait    = 2 * time.Second
)

// TraceOptions tune Traceroute. The zero value is usable.
type TraceOptions struct {
	// MaxHops is the largest TTL probed: 1..MaxTraceHops, 0 means
	// DefaultTraceMaxHops.
	MaxHops int
	// Wait bounds the wait for the answer to each probe; 0 means
	// DefaultTraceWait.
	Wait time.Duration
}

// Hop is the answer to one probe of Traceroute.
type Hop struct {
	// TTL is the probe's TTL (hop limit), from 1.
	TTL int
	// Addr is who answered: a router's ICMP Time Exceeded, the
	// destination's echo reply, or anyone's Destination Unreachable. It is
	// the zero Addr if nothing came back within TraceOptions.Wait.
	Addr netip.Addr
	// RTT is the time from the probe to the answer; 0 without one.
	RTT time.Duration
	// Reached reports that Addr is the destination, which replied to the
	// echo: the trace ends there.
	Reached bool
	// Unreachable reports an ICMP Destination Unreachable from Addr: the
	// trace ends there too.
	Unreachable bool
}

// Traceroute finds the routers between the stack and dst, as traceroute
// -I does: ICMP echo requests with TTL 1, 2, … up to opts.MaxHops, each
// answered by the router where the TTL runs out (ICMP Time Exceeded, read
// from a gVisor raw ICMP endpoint), until dst itself replies or a router
// says it is unreachable. Each hop is passed to hop (if not nil) as soon
// as it is known, and all are returned. Every wait is bounded by
// opts.Wait and by ctx; a cancelled ctx returns the hops so far with its
// error.
func (s *Stack) Traceroute(ctx context.Context, dst netip.Addr, opts TraceOptions, hop func(Hop)) ([]Hop, error) {
	opErr := echoOpError("traceroute", dst)
	dst, err := s.echoTarget(dst, opErr)
	if err != nil {
		return nil, err
	}
	maxHops, wait := opts.MaxHops, opts.Wait
	if maxHops <= 0 {
		maxHops = DefaultTraceMaxHops
	}
	if maxHops > MaxTraceHops {
		return nil, opErr(errors.New("more than 64 hops"))
	}
	if wait <= 0 {
		wait = DefaultTraceWait
	}
	ttlOpt := tcpip.IPv4TTLOption
	if dst.Is6() {
		ttlOpt = tcpip.IPv6HopLimitOption
	}
	// The echo requests leave through a ping endpoint, which fills in the
	// identifier (its port) and the checksum; every answer, replies and
	// errors, is read from a raw ICMP endpoint, which sees them all.
	e, err := s.openEcho(dst, opErr)
	if err != nil {
		return nil, err
	}
	defer e.Close()
	local, terr := e.ep.GetLocalAddress()
	if terr != nil {
		return nil, opErr(translate("getsockname", terr))
	}
	ident := local.Port
	var rwq waiter.Queue
	raw, terr := s.gv.NewRawEndpoint(e.transport, protoOf(dst), &rwq, true)
	if terr != nil {
		return nil, opErr(translate("socket", terr))
	}
	defer raw.Close()
	entry, readable := waiter.NewChannelEntry(waiter.ReadableEvents)
	rwq.EventRegister(&entry)
	defer rwq.EventUnregister(&entry)

	var hops []Hop
	var buf bytes.Buffer
	for ttl := 1; ttl <= maxHops; ttl++ {
		if terr := e.ep.SetSockOptInt(ttlOpt, ttl); terr != nil {
			return hops, opErr(translate("setsockopt", terr))
		}
		seq := uint16(ttl)
		t0 := time.Now()
		if terr := e.send(seq); terr != nil {
			return hops, opErr(translate("sendto", terr))
		}
		h := Hop{TTL: ttl}
		timer := time.NewTimer(wait)
	wait:
		for {
			for {
				buf.Reset()
				res, terr := raw.Read(&buf, tcpip.ReadOptions{NeedRemoteAddr: true})
				if _, ok := terr.(*tcpip.ErrWouldBlock); ok {
					break
				}
				if terr != nil {
					timer.Stop()
					return hops, opErr(translate("recvfrom", terr))
				}
				kind := matchProbe(buf.Bytes(), dst.Is6(), ident, seq)
				if kind == answerNone {
					continue
				}
				h.RTT = time.Since(t0)
				h.Addr, _ = netip.AddrFromSlice(res.RemoteAddr.Addr.AsSlice())
				h.Reached = kind == answerReply
				h.Unreachable = kind == answerUnreachable
				break wait
			}
			select {
			case <-ctx.Done():
				timer.Stop()
				return hops, opErr(ctxError(ctx.Err()))
			case <-timer.C:
				break wait
			case <-readable:
			}
		}
		timer.Stop()
		hops = append(hops, h)
		if hop != nil {
			hop(h)
		}
		if h.Reached || h.Unreachable {
			break
		}
	}
	return hops, nil
}

// Kinds of answer to a probe.
const (
	answerNone        = iota // not about our probe
	answerReply              // echo reply from the destination
	answerExceeded           // time exceeded in transit
	answerUnreachable        // destination unreachable
)

// matchProbe tells whether msg, read from a raw ICMP endpoint (with the
// IPv4 header for IPv4, bare ICMPv6 for IPv6), answers our echo request
// with identifier ident and sequence number seq, and how.
func matchProbe(msg []byte, v6 bool, ident, seq uint16) int {
	if !v6 {
		if len(msg) < header.IPv4MinimumSize {
			return answerNone
		}
		msg = msg[header.IPv4(msg).HeaderLength():]
	}
	if len(msg) < 8 {
		return answerNone
	}
	echoes := func(b []byte) bool {
		return len(b) >= 8 && binary.BigEndian.Uint16(b[4:]) == ident && binary.BigEndian.Uint16(b[6:]) == seq
	}
	// quoted returns the echo request quoted in an ICMP error: the
	// original IP header, then its first bytes.
	quoted := func(b []byte) []byte {
		if v6 {
			if len(b) < header.IPv6MinimumSize || header.IPv6(b).NextHeader() != uint8(header.ICMPv6ProtocolNumber) {
				return nil
			}
			b = b[header.IPv6MinimumSize:]
			if len(b) < 1 || b[0] != uint8(header.ICMPv6EchoRequest) {
				return nil
			}
			return b
		}
		if len(b) < header.IPv4MinimumSize || header.IPv4(b).Protocol() != uint8(header.ICMPv4ProtocolNumber) {
			return nil
		}
		b = b[header.IPv4(b).HeaderLength():]
		if len(b) < 1 || b[0] != uint8(header.ICMPv4Echo) {
			return nil
		}
		return b
	}
	typ := msg[0]
	switch {
	case !v6 && typ == uint8(header.ICMPv4EchoReply), v6 && typ == uint8(header.ICMPv6EchoReply):
		if echoes(msg) {
			return answerReply
		}
	case !v6 && typ == uint8(header.ICMPv4TimeExceeded), v6 && typ == uint8(header.ICMPv6TimeExceeded):
		if echoes(quoted(msg[8:])) {
			return answerExceeded
		}
	case !v6 && typ == uint8(header.ICMPv4DstUnreachable), v6 && typ == uint8(header.ICMPv6DstUnreachable):
		if echoes(quoted(msg[8:])) {
			return answerUnreachable
		}
	}
	return answerNone
}
