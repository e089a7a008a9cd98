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

// rxLoop is the state of one receive goroutine, an endpoint's own
// (receive) or a Shared socket's: one batch of messages and the buffers
// they read into, reused for every read.
type rxLoop struct {
	msgs []Message
	bufs [][1][]byte
	// A receive buffer that has held a coalesced read becomes a gVisor
	// view, so that merged packets can point into it (coalesce.go); a
	// view that a delivered packet still points into is replaced after
	// the batch. Until then it is plain memory, which stays out of the
	// resident set until a datagram lands in it: gVisor zeroes every
	// chunk it hands out, and 64 views of 64 KiB per socket would add
	// megabytes to an idle process.
	views []*buffer.View
	// gd coalesces verified TCP segments (gVisor GRO) before the stack.
	gd      groDispatcher
	seg     Message
	rx      rxBatch
	lastErr time.Time
}

func newRxLoop(n int) *rxLoop {
	l := &rxLoop{
		msgs:  make([]Message, n),
		bufs:  make([][1][]byte, n),
		views: make([]*buffer.View, n),
		seg:   Message{Buffers: make([][]byte, 1)},
	}
	for i := range l.msgs {
		l.bufs[i][0] = make([]byte, recvBufSize)
		l.msgs[i].Buffers = l.bufs[i][:]
	}
	l.gd.g.Init(true)
	return l
}

// release frees the views of the loop's buffers.
func (l *rxLoop) release() {
	for _, v := range l.views {
		if v != nil {
			v.Release()
		}
	}
}

// read reads one batch from r into l.msgs. It returns false when the loop
// is to stop: r is closed, or closed reports true. Transient errors
// (ICMP-reported unreachability on a UDP socket, ENOBUFS) are logged at
// most once a second and read again.
func (l *rxLoop) read(r Receiver, closed func() bool, warn func(error)) (int, bool) {
	for {
		n, err := r.ReadBatch(l.msgs)
		if err == nil {
			return n, true
		}
		if errors.Is(err, ErrClosed) || closed() || errors.Is(err, syscall.EBADF) {
			return 0, false
		}
		if time.Since(l.lastErr) > time.Second {
			warn(err)
			l.lastErr = time.Now()
		}
	}
}

// rxBatchPer is the batch of each of n receive loops, for a batch of
// batch datagrams per read: shared among more than two (ListenUDP's
// socket per core), so that the receive buffers, 64 KiB per datagram of a
// batch, do not grow with the cores; at least 16 datagrams, each a
// coalesced read of up to 64 KiB.
func rxBatchPer(batch, n int) int {
	if n <= 2 {
		return batch
	}
	return max(16, 2*batch/n)
}

// receive is the loop of one Receiver of the endpoint's own transport:
// read a batch, decapsulate and deliver each datagram.
func (e *Endpoint) receive(r Receiver, batch int) {
	defer e.wg.Done()
	l := newRxLoop(batch)
	defer l.release()
	warn := func(err error) { e.log.Warn("tunnel receive error", "tunnel", e.name, "err", err) }
	for {
		n, ok := l.read(r, e.closed.Load, warn)
		if !ok {
			return
		}
		e.mu.RLock()
		d := e.dispatcher
		e.mu.RUnlock()
		e.handle(l, 0, n, d)
	}
}

// handle decapsulates and delivers messages i to j-1 of l's batch, all
// from this endpoint's peer, to d, the attached dispatcher (nil: detached,
// the messages are dropped as Closed). The message buffers stay l's; the inner bytes
// are copied into gVisor buffers on delivery, or the buffer becomes a
// gVisor view that the packets point into (coalesce.go).
func (e *Endpoint) handle(l *rxLoop, i, j int, d stack.NetworkDispatcher) {
	if d == nil {
		for range j - i {
			e.stats.drop(encap.Closed)
		}
		return
	}
	rx := &l.rx
	rx.to, rx.stack = d, d
	if e.gro {
		l.gd.g.Dispatcher = d
		rx.to = &l.gd
	}
	accepted := e.stats.rxPackets.Load()
	e.rxMu.RLock()
	for ; i < j; i++ {
		m := &l.msgs[i]
		if m.GSOSize > 0 && m.GSOSize < m.N {
			if l.views[i] == nil {
				// Plain memory: deliver copies, and read into a
				// view from now on.
				e.deliverCoalesced(rx, m, &l.seg, nil)
				l.views[i] = buffer.NewViewSize(recvBufSize)
				l.bufs[i][0] = l.views[i].AsSlice()
			} else if e.deliverCoalesced(rx, m, &l.seg, l.views[i]) {
				l.views[i].Release()
				l.views[i] = buffer.NewViewSize(recvBufSize)
				l.bufs[i][0] = l.views[i].AsSlice()
			}
			continue
		}
		e.deliver(rx, m)
	}
	if e.gro {
		l.gd.g.Flush()
		l.gd.g.Dispatcher = nil
	}
	e.rxMu.RUnlock()
	e.deliverPending(rx)
	rx.to, rx.stack = nil, nil
	// The peer was heard from if anything of the batch was accepted
	// (another receiver's packets count too: they are the peer's).
	if e.stats.rxPackets.Load() != accepted {
		e.stats.lastSeen.Store(time.Now().UnixNano())
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
	// Bytes first: whoever sees the packet counted sees its bytes too.
	e.stats.rxBytes.Add(uint64(len(inner)))
	e.stats.rxPackets.Add(1)
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
