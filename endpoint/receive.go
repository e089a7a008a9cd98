package endpoint

import (
	"errors"
	"net/netip"
	"syscall"
	"time"

	"github.com/ipipstack/ipipstack/endpoint/encap"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// recvBufSize is the size of a receive buffer: the largest datagram, or
// the most that UDP GRO coalesces into one read.
const recvBufSize = 1 << 16

// receive is the loop of one Receiver: read a batch, decapsulate and
// deliver each datagram. The message buffers are reused; the inner bytes
// are copied into a gVisor buffer on delivery.
func (e *Endpoint) receive(r Receiver) {
	defer e.wg.Done()
	msgs := make([]Message, e.batch)
	bufs := make([][1][]byte, e.batch)
	// A receive buffer that has held a coalesced read becomes a gVisor
	// view, so that merged packets can point into it (coalesce.go); a
	// view that a delivered packet still points into is replaced after
	// the batch. Until then it is plain memory, which stays out of the
	// resident set until a datagram lands in it: gVisor zeroes every
	// chunk it hands out, and 64 views of 64 KiB per socket would add
	// megabytes to an idle process.
	views := make([]*buffer.View, e.batch)
	for i := range msgs {
		bufs[i][0] = make([]byte, recvBufSize)
		msgs[i].Buffers = bufs[i][:]
	}
	defer func() {
		for _, v := range views {
			if v != nil {
				v.Release()
			}
		}
	}()
	// gd coalesces verified TCP segments (gVisor GRO) before the stack.
	var gd groDispatcher
	gd.g.Init(true)
	seg := Message{Buffers: make([][]byte, 1)}
	rx := &rxBatch{}
	var lastErr time.Time
	for {
		n, err := r.ReadBatch(msgs)
		if err != nil {
			if errors.Is(err, ErrClosed) || e.closed.Load() {
				return
			}
			// A transient error (ICMP-reported unreachability on a
			// UDP socket, ENOBUFS): log at most once a second.
			if time.Since(lastErr) > time.Second {
				e.log.Warn("tunnel receive error", "tunnel", e.name, "err", err)
				lastErr = time.Now()
			}
			if errors.Is(err, syscall.EBADF) {
				return
			}
			continue
		}
		e.mu.RLock()
		d := e.dispatcher
		e.mu.RUnlock()
		if d == nil {
			for range n {
				e.stats.drop(encap.Closed)
			}
			continue
		}
		rx.to, rx.stack = d, d
		if e.gro {
			gd.g.Dispatcher = d
			rx.to = &gd
		}
		accepted := e.stats.rxPackets.Load()
		e.rxMu.RLock()
		for i := 0; i < n; i++ {
			m := &msgs[i]
			if m.GSOSize > 0 && m.GSOSize < m.N {
				if views[i] == nil {
					// Plain memory: deliver copies, and read into a
					// view from now on.
					e.deliverCoalesced(rx, m, &seg, nil)
					views[i] = buffer.NewViewSize(recvBufSize)
					bufs[i][0] = views[i].AsSlice()
				} else if e.deliverCoalesced(rx, m, &seg, views[i]) {
					views[i].Release()
					views[i] = buffer.NewViewSize(recvBufSize)
					bufs[i][0] = views[i].AsSlice()
				}
				continue
			}
			e.deliver(rx, m)
		}
		if e.gro {
			gd.g.Flush()
		}
		e.rxMu.RUnlock()
		e.deliverPending(rx)
		// The peer was heard from if anything of the batch was accepted
		// (another receiver's packets count too: they are the peer's).
		if e.stats.rxPackets.Load() != accepted {
			e.stats.lastSeen.Store(time.Now().UnixNano())
		}
	}
}

// deliver decapsulates one datagram and hands its inner packet to rx: to
// rx.to if it was verified, to rx.pending otherwise.
func (e *Endpoint) deliver(rx *rxBatch, m *Message) {
	inner, netProto, verified, ok := e.decap(m)
	if !ok {
		return
	}
	e.deliverCopy(rx, inner, netProto, verified)
}

// decap runs every check of the decapsulation path on one datagram,
// applies the outer ECN mark and counts the packet (or the reason it was
// dropped). It returns the inner packet, a slice of the datagram, and
// whether its checksums were verified (checkInner).
func (e *Endpoint) decap(m *Message) (inner []byte, netProto tcpip.NetworkProtocolNumber, verified, ok bool) {
	data := m.Buffers[0][:m.N]
	var (
		src      netip.AddrPort
		proto    uint8
		outerTOS uint8
		hasTOS   = m.HasTOS
		r        encap.Reason
	)
	switch e.framing {
	case FramingRawIPv4:
		var o encap.Outer
		o, inner, r = encap.DecodeIPv4(data)
		if r != encap.OK {
			e.stats.drop(r)
			return nil, 0, false, false
		}
		src = netip.AddrPortFrom(o.Src, 0)
		proto, outerTOS, hasTOS = o.Proto, o.TOS, true
	case FramingRawIPv6:
		src, proto, outerTOS, inner = netip.AddrPortFrom(m.Addr.Addr(), 0), m.Proto, m.TOS, data
	default:
		src, outerTOS, inner = m.Addr, m.TOS, data
	}
	src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
	remote := e.remote.Load()
	newPeer := false
	if src != *remote {
		if !(e.anySourcePort && src.Addr() == remote.Addr()) {
			if !e.roaming {
				e.stats.dropAt(encap.WrongPeer, src, netip.Addr{}, netip.Addr{})
				return nil, 0, false, false
			}
			newPeer = true
		}
	}
	p, inner, r := encap.ValidateInner(inner, proto)
	if r != encap.OK {
		e.stats.dropAt(r, src, netip.Addr{}, netip.Addr{})
		return nil, 0, false, false
	}
	if encap.IsMartianSource(p.Src) || encap.IsMartianDestination(p.Dst) {
		e.stats.dropAt(encap.Martian, src, p.Src, p.Dst)
		return nil, 0, false, false
	}
	if p.Dst == e.local || encap.NestingDepth(inner, e.isOurs, e.localPort, e.maxNesting) > e.maxNesting {
		e.stats.dropAt(encap.Recursion, src, p.Src, p.Dst)
		return nil, 0, false, false
	}
	if allowed := e.allowed.Load(); allowed != nil && !contains(*allowed, p.Src) {
		e.stats.dropAt(encap.SpoofedSource, src, p.Src, p.Dst)
		return nil, 0, false, false
	}
	if verified, ok = e.checkInner(m, inner, p); !ok {
		return nil, 0, false, false
	}
	if hasTOS {
		ecn, drop := encap.DecapECN(outerTOS, p.TOS)
		if drop {
			e.stats.drop(encap.ECNCongestion)
			return nil, 0, false, false
		}
		if ecn != p.TOS&3 {
			encap.SetECN(inner, ecn)
		}
	}
	if p.Proto == encap.ProtoIPv6 && p.Transport == uint8(header.ICMPv6ProtocolNumber) {
		e.learnTooBig(inner) // a Packet Too Big's path MTU (pmtu6.go)
	}
	if newPeer {
		e.roam(src, inner, p) // moves the peer once src proved it is reachable (roam.go)
	}
	netProto = ipv4.ProtocolNumber
	if p.Proto == encap.ProtoIPv6 {
		netProto = ipv6.ProtocolNumber
	}
	// Count before delivering: a reply may leave before delivery returns.
	e.stats.rxPackets.Add(1)
	e.stats.rxBytes.Add(uint64(len(inner)))
	return inner, netProto, verified, true
}

// deliverCopy hands rx a packet holding a copy of inner: to rx.to if it
// was verified (GRO then skips verifying it again), to rx.pending if not.
func (e *Endpoint) deliverCopy(rx *rxBatch, inner []byte, netProto tcpip.NetworkProtocolNumber, verified bool) {
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(inner)})
	pkt.NetworkProtocolNumber = netProto
	if !verified {
		rx.pending = append(rx.pending, pkt)
		return
	}
	pkt.RXChecksumValidated = true
	rx.to.DeliverNetworkPacket(netProto, pkt)
	pkt.DecRef()
}

// isOurs reports whether a nested tunnel header's destination a is this
// endpoint's outer address. Bound to the wildcard address, the transport
// receives on every local address; of those only loopback is known here.
func (e *Endpoint) isOurs(a netip.Addr) bool {
	return a == e.local || e.local.IsUnspecified() && a.IsLoopback()
}

func contains(ps []netip.Prefix, a netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
