// Package endpoint is a gVisor link endpoint whose wire is an IP-in-IP
// tunnel to one peer.
//
// Inner IPv4 and IPv6 packets that the stack writes are encapsulated and
// sent by a Transport: as the bare payload of a UDP datagram (Linux FOU
// direct encapsulation, no privileges), or behind an outer IPv4 or IPv6
// header over raw sockets (IP protocol 4 / 41, as Linux ipip, sit and
// ip6tnl). Received datagrams are decapsulated, checked (peer, headers,
// inner source, ECN, checksums) and delivered to the stack; every drop is
// counted with its encap.Reason.
//
// # Receive checksums
//
// No inner byte reaches the stack unverified, and the endpoint, not the
// stack, decides what is verified (rxcsum.go): a packet is verified when
// the kernel checked a non-zero outer UDP checksum and the inner source is
// on the tunnel's link (Options.OnLink: the peer originated it), or when the
// endpoint checked its TCP, UDP, ICMP or ICMPv6 checksum itself; a wrong one
// is dropped as encap.BadChecksum. The endpoint declares RX checksum
// offload, except while it hands the stack the few packets it cannot check
// (fragments, IPv6 extension headers), which the stack then checks itself.
//
// # Usage
//
//	tr, err := endpoint.ListenUDP(netip.MustParseAddrPort("127.0.0.1:4700"), endpoint.SocketOptions{})
//	ep, err := endpoint.New(endpoint.Options{Transport: tr, Remote: peer})
//	s.CreateNIC(1, ep)
//
// The endpoint owns the Transport and closes it in Close. One goroutine per
// Receiver reads from the transport once the stack attaches the endpoint;
// Close stops them and Wait waits for them.
//
// # Path MTU
//
// When the kernel refuses a datagram as too big for its path MTU to the
// peer, the endpoint lowers the tunnel MTU to what that path MTU leaves,
// for Options.PathMTUExpiry (10 minutes by default); then it asks the
// kernel again and goes back up, to the configured MTU once the kernel no
// longer knows a lower path MTU. Unless Options.IPv4Only is set, an MTU of
// 1280 or more is never lowered below IPv6's minimum of 1280 (gVisor
// stops sending IPv6 altogether below it): over an IPv4 outer path
// narrower than 1280 plus the overhead, outer packets the path cannot
// carry leave without DF and are fragmented on the way, as with Linux sit,
// and inner IPv4 packets with DF are answered with Fragmentation Needed
// quoting the real path. Stats shows the learned path MTU, its expiry and
// whether outer packets are being fragmented. See pmtu.go.
package endpoint

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
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

// MTU limits (RFC 791 §3.2, RFC 8200 §5).
const (
	MinMTU     = 68
	MinIPv6MTU = 1280
	MaxMTU     = 65535
)

// DefaultPathMTU is the outer path MTU assumed when none is given.
const DefaultPathMTU = 1500

// Overhead is the number of bytes the outer headers of a tunnel take:
// 20 for an IPv4 outer header, 40 for IPv6 (48 with the RFC 2473
// encapsulation limit option), plus 8 for UDP.
func Overhead(framing Framing, outerV6 bool, p encap.Policy) int {
	n := encap.IPv4HeaderLen
	if outerV6 {
		n = encap.IPv6HeaderLen
		if framing == FramingRawIPv6 && p.UseEncapLimit {
			n += encap.EncapLimitLen
		}
	}
	if framing == FramingUDP {
		n += encap.UDPHeaderLen
	}
	return n
}

// Options configure an Endpoint.
type Options struct {
	// Name identifies the tunnel in logs.
	Name string
	// Transport moves the outer datagrams. Required; the Endpoint owns it.
	Transport Transport
	// Remote is the peer's outer address (port 0 for raw transports).
	Remote netip.AddrPort
	// MTU is the inner MTU. 0 derives it: PathMTU minus Overhead.
	MTU uint32
	// PathMTU is the outer path MTU; 0 means DefaultPathMTU.
	PathMTU int
	// PathMTUExpiry is how long a lower outer path MTU learned from the
	// kernel holds the tunnel MTU down (pmtu.go); then the endpoint asks
	// the kernel again and goes back up as far as it allows. 0 means
	// DefaultPathMTUExpiry (RFC 1191 §6.3, Linux's mtu_expires).
	PathMTUExpiry time.Duration
	// IPv4Only says that the tunnel carries no inner IPv6, so its MTU may
	// follow the outer path below IPv6's minimum of 1280 bytes. Off (the
	// default), an MTU of 1280 or more is never lowered below 1280: outer
	// packets the path cannot carry leave without DF and are fragmented
	// on the way, as Linux sit does (pmtu.go).
	IPv4Only bool
	// Policy sets the outer TTL, ToS, DF and encapsulation limit; its zero
	// value is Linux ipip's default.
	Policy encap.Policy
	// AllowedSources are the inner source prefixes accepted from the peer;
	// packets from elsewhere are dropped as SpoofedSource. Nil accepts any
	// source that is not martian.
	AllowedSources []netip.Prefix
	// OnLink are the inner prefixes of the tunnel's own link (the local
	// inner addresses with their prefix lengths): a packet whose inner
	// source is in one of them was originated by the peer, not forwarded,
	// so a non-zero outer UDP checksum that the kernel verified covers
	// exactly the bytes the peer sent, and the endpoint need not verify
	// the inner checksum again. Every other packet is verified in
	// software (see rxcsum.go). Nil verifies everything in software.
	OnLink []netip.Prefix
	// MaxNesting is how many tunnel headers addressed back to this
	// endpoint (IP-in-IP, or FOU to its own UDP port, whose destination is
	// its outer address; see encap.NestingDepth) an inner packet may carry
	// inside it; packets nesting more are dropped as Recursion. 0 means
	// encap.DefaultMaxNesting (4); a negative value allows none. An inner
	// packet that is itself addressed to the outer address is always
	// dropped.
	MaxNesting int
	// Roaming lets the peer's outer address change: a valid packet from a
	// new address makes it the destination of what we send. Off, such
	// packets are dropped as WrongPeer.
	Roaming bool
	// AnySourcePort accepts UDP datagrams from the peer's address whatever
	// their source port (Linux FOU with encap-sport auto picks one per
	// flow). Replies still go to Remote's port.
	AnySourcePort bool
	// BatchSize is the number of datagrams read or written per system
	// call; 0 means 64.
	BatchSize int
	// DisableGSO stops the stack from handing the endpoint 64 KiB TCP
	// super-segments (host GSO), which the endpoint cuts into wire-size
	// packets and, where the transport has UDP GSO, sends in as few calls
	// as the kernel's limits of one UDP_SEGMENT send allow (64 datagrams,
	// 65,507 bytes). If the kernel refuses UDP GSO at run time, the
	// endpoint sends plain datagrams from then on (Stats.TxGSORefused).
	DisableGSO bool
	// DisableGRO turns off receive offloads: UDP GRO on the socket and
	// gVisor's coalescing of TCP segments before TCP.
	DisableGRO bool
	// Logger receives the endpoint's logs; nil discards them.
	Logger *slog.Logger
}

// Endpoint is a stack.LinkEndpoint that tunnels inner packets to one peer.
type Endpoint struct {
	name          string
	tr            Transport
	framing       Framing
	pol           encap.Policy
	local         netip.Addr
	localPort     uint16 // the UDP port of FOU headers that nest back to us; 0 for raw
	maxNesting    int
	roaming       bool
	anySourcePort bool
	batch         int
	log           *slog.Logger
	// offloads are what the transport does; gsoMax is the super-segment
	// size asked of the stack (0: no GSO); gro enables gVisor GRO.
	offloads Offloads
	gsoMax   uint32
	gro      bool
	// rxUnverified is set while a receive goroutine delivers packets the
	// endpoint could not verify, holding rxMu for writing; verified
	// deliveries hold it for reading (rxcsum.go).
	rxMu         sync.RWMutex
	rxUnverified atomic.Bool
	onLink       atomic.Pointer[[]netip.Prefix]
	// gsoOff is set, for good, once the kernel refuses a UDP GSO send at
	// run time (refuseGSO): super-segments then leave as plain datagrams.
	gsoOff atomic.Bool

	// remote is the peer's outer address, as the receive path checks it;
	// peer is what the send path needs of it, the address and its outer
	// header encoder, swapped together (storePeer, under roamMu).
	remote  atomic.Pointer[netip.AddrPort]
	peer    atomic.Pointer[txPeer]
	roamMu  sync.Mutex
	allowed atomic.Pointer[[]netip.Prefix]
	mtu     atomic.Uint32
	ipID    atomic.Uint32 // numbers the outer IPv4 headers of raw IPv4, one per packet; over UDP the kernel writes the ID
	closed  atomic.Bool
	// tooBigPending counts ICMP errors on their way into the stack (pmtu.go).
	tooBigPending atomic.Int32
	// tx completes the checksums of the packets the stack sends, holding
	// first fragments until their UDP checksum is known (txcsum.go).
	tx TXChecksummer
	// pmtu6 holds the path MTU of inner IPv6 destinations, and fragID
	// numbers the packets that cutToPathMTU gives a Fragment header
	// (pmtu6.go).
	pmtu6  pmtuCache
	fragID atomic.Uint32
	// roamer confirms a roaming peer's new address (roam.go).
	roamer roamer
	// room is the largest inner packet the outer path carries whole: the
	// MTU, or less while outer packets are fragmented; opath is what
	// moves them (pmtu.go).
	room  atomic.Uint32
	opath outerPath

	stats counters

	// mu guards the fields below. Close sets closed holding it, so a
	// goroutine that checks closed and calls wg.Add under mu (Attach,
	// tooBig) either starts before Close waits on wg or not at all.
	mu         sync.RWMutex
	dispatcher stack.NetworkDispatcher
	started    bool
	onClose    func()

	// writers is held shared by each WritePackets call; Close takes it
	// exclusively, once closed is set, to wait for the calls in progress
	// before it drops the fragments they may have handed to tx.
	writers sync.RWMutex

	wg     sync.WaitGroup
	txPool sync.Pool
}

var (
	_ stack.LinkEndpoint = (*Endpoint)(nil)
	_ stack.GSOEndpoint  = (*Endpoint)(nil)
)

// GSOMaxSize implements stack.GSOEndpoint.GSOMaxSize.
func (e *Endpoint) GSOMaxSize() uint32 { return e.gsoMax }

// SupportedGSO implements stack.GSOEndpoint.SupportedGSO: host GSO, so that
// TCP hands over super-segments, which the endpoint cuts itself.
func (e *Endpoint) SupportedGSO() stack.SupportedGSO {
	if e.gsoMax == 0 {
		return stack.GSONotSupported
	}
	return stack.HostGSOSupported
}

// New returns an Endpoint sending to opts.Remote over opts.Transport.
func New(opts Options) (*Endpoint, error) {
	if opts.Transport == nil {
		return nil, errors.New("endpoint: no transport")
	}
	local := opts.Transport.LocalAddr().Addr().Unmap()
	remote := netip.AddrPortFrom(opts.Remote.Addr().Unmap(), opts.Remote.Port())
	if !remote.Addr().IsValid() || remote.Addr().IsUnspecified() {
		return nil, fmt.Errorf("endpoint: remote address %v is not a unicast address", opts.Remote)
	}
	framing := opts.Transport.Framing()
	if local.Is4() != remote.Addr().Is4() {
		return nil, fmt.Errorf("endpoint: local %v and remote %v are of different families", local, remote.Addr())
	}
	if framing == FramingUDP && remote.Port() == 0 {
		return nil, fmt.Errorf("endpoint: remote %v needs a UDP port", opts.Remote)
	}
	e := &Endpoint{
		name:          opts.Name,
		tr:            opts.Transport,
		framing:       framing,
		pol:           opts.Policy,
		local:         local,
		roaming:       opts.Roaming,
		anySourcePort: opts.AnySourcePort,
		maxNesting:    opts.MaxNesting,
		batch:         opts.BatchSize,
		log:           opts.Logger,
	}
	if e.batch <= 0 {
		e.batch = 64
	}
	switch {
	case e.maxNesting == 0:
		e.maxNesting = encap.DefaultMaxNesting
	case e.maxNesting < 0:
		e.maxNesting = 0
	}
	if framing == FramingUDP {
		e.localPort = opts.Transport.LocalAddr().Port()
	}
	if e.log == nil {
		e.log = slog.New(slog.DiscardHandler)
	}
	if framing != FramingUDP && local.IsUnspecified() {
		return nil, errors.New("endpoint: a raw transport needs a local address to write into outer headers")
	}
	mtu := opts.MTU
	if mtu == 0 {
		path := opts.PathMTU
		if path == 0 {
			path = DefaultPathMTU
		}
		mtu = uint32(path - Overhead(framing, remote.Addr().Is6(), opts.Policy))
	}
	if mtu < MinMTU || mtu > MaxMTU {
		return nil, fmt.Errorf("endpoint: MTU %d outside %d..%d", mtu, MinMTU, MaxMTU)
	}
	e.initPathMTU(mtu, opts)
	if o, ok := opts.Transport.(Offloader); ok {
		e.offloads = o.Offloads()
	}
	if opts.DisableGRO {
		e.offloads.GRO = false
	} else {
		e.gro = true
	}
	if !opts.DisableGSO {
		e.gsoMax = gsoMaxSize(mtu)
	}
	if opts.DisableGSO {
		e.offloads.GSO = false
	}
	p, err := e.newTxPeer(remote)
	if err != nil {
		return nil, err
	}
	e.storePeer(p)
	e.SetAllowedSources(opts.AllowedSources)
	e.SetOnLink(opts.OnLink)
	e.roamer.moveInterval = roamMoveInterval
	e.ipID.Store(uint32(time.Now().UnixNano()))
	e.fragID.Store(rand.Uint32())
	e.txPool.New = func() any { return newTxBatch(e.batch) }
	return e, nil
}

// SetAllowedSources replaces the inner source prefixes accepted from the
// peer; nil accepts any non-martian source. Safe while traffic flows.
func (e *Endpoint) SetAllowedSources(p []netip.Prefix) {
	if p == nil {
		e.allowed.Store(nil)
		return
	}
	c := append([]netip.Prefix(nil), p...)
	e.allowed.Store(&c)
}

// Remote returns the peer's current outer address.
func (e *Endpoint) Remote() netip.AddrPort { return *e.remote.Load() }

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

// LocalAddr returns the local outer address.
func (e *Endpoint) LocalAddr() netip.AddrPort { return e.tr.LocalAddr() }

// Framing returns the transport's framing.
func (e *Endpoint) Framing() Framing { return e.framing }

// MTU implements stack.LinkEndpoint.MTU.
func (e *Endpoint) MTU() uint32 { return e.mtu.Load() }

// SetMTU implements stack.LinkEndpoint.SetMTU.
// It sets the configured MTU, which a learned outer path MTU may hold
// down (pmtu.go).
func (e *Endpoint) SetMTU(mtu uint32) { e.setBaseMTU(mtu) }

// MaxHeaderLength implements stack.LinkEndpoint.MaxHeaderLength. The outer
// header is written into a buffer of the endpoint's own, not into the
// packet, so no room is reserved.
func (*Endpoint) MaxHeaderLength() uint16 { return 0 }

// LinkAddress implements stack.LinkEndpoint.LinkAddress: a tunnel has none.
func (*Endpoint) LinkAddress() tcpip.LinkAddress { return "" }

// SetLinkAddress implements stack.LinkEndpoint.SetLinkAddress.
func (*Endpoint) SetLinkAddress(tcpip.LinkAddress) {}

// Capabilities implements stack.LinkEndpoint.Capabilities. RX checksum
// offload is declared except while the endpoint delivers packets it could
// not verify (rxcsum.go): everything else it delivers was verified. TX
// checksum offload is always declared: the endpoint completes the
// checksums of the packets the stack sends (txcsum.go).
func (e *Endpoint) Capabilities() stack.LinkEndpointCapabilities {
	if e.rxUnverified.Load() {
		return stack.CapabilityTXChecksumOffload
	}
	return stack.CapabilityRXChecksumOffload | stack.CapabilityTXChecksumOffload
}

// ARPHardwareType implements stack.LinkEndpoint.ARPHardwareType.
func (*Endpoint) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareNone }

// AddHeader implements stack.LinkEndpoint.AddHeader.
func (*Endpoint) AddHeader(*stack.PacketBuffer) {}

// ParseHeader implements stack.LinkEndpoint.ParseHeader.
func (*Endpoint) ParseHeader(*stack.PacketBuffer) bool { return true }

// SetOnCloseAction implements stack.LinkEndpoint.SetOnCloseAction.
func (e *Endpoint) SetOnCloseAction(f func()) {
	e.mu.Lock()
	e.onClose = f
	e.mu.Unlock()
}

// Attach implements stack.LinkEndpoint.Attach. The first non-nil
// dispatcher starts the receive goroutines; nil detaches, after which
// received packets are discarded.
func (e *Endpoint) Attach(d stack.NetworkDispatcher) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.dispatcher = d
	if d == nil || e.started || e.closed.Load() {
		return
	}
	e.started = true
	for _, r := range e.tr.Receivers() {
		e.wg.Add(1)
		go e.receive(r)
	}
}

// IsAttached implements stack.LinkEndpoint.IsAttached.
func (e *Endpoint) IsAttached() bool {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.dispatcher != nil
}

// Wait implements stack.LinkEndpoint.Wait.
func (e *Endpoint) Wait() { e.wg.Wait() }

// Close implements stack.LinkEndpoint.Close: it closes the transport,
// waits for the WritePackets calls in progress and for the goroutines of
// the endpoint (receive, ICMP errors to the stack), then drops the held
// fragments. Later WritePackets calls fail; Attach starts nothing.
func (e *Endpoint) Close() {
	e.mu.Lock()
	if e.closed.Load() {
		e.mu.Unlock()
		return
	}
	e.closed.Store(true)
	f := e.onClose
	e.mu.Unlock()
	e.stopPathMTU()
	// The transport first: a write blocked in it returns, so that the
	// stack's queue, which onClose (RemoveNIC) waits for, can stop.
	e.tr.Close()
	if f != nil {
		f()
	}
	// An empty critical section: waiting for the writers is the point.
	e.writers.Lock()
	//lint:ignore SA2001 Lock returned once every WritePackets in progress ended; nothing is guarded.
	e.writers.Unlock()
	e.wg.Wait()
	e.tx.Release()
}

// beginWrite reports whether a WritePackets call may go on; if so, the
// caller calls e.writers.RUnlock when it is done.
func (e *Endpoint) beginWrite() bool {
	e.writers.RLock()
	if e.closed.Load() {
		e.writers.RUnlock()
		return false
	}
	return true
}

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

// txBatch is the reusable state of one WritePackets call: the messages
// of one sendmmsg and what they point to.
type txBatch struct {
	msgs []Message
	// packets and bytes are the inner packets and bytes of each message,
	// for the counters (a GSO message carries several packets).
	packets, bytes []int
	hdrs           [][encap.IPv6HeaderLen + encap.EncapLimitLen]byte
	segs           [][MaxSegments][]byte
	n              int // messages filled
	// gso are buffers for segmented super-segments and cut packets;
	// gsoUsed are in use, and gsoFree bytes at the end of the last one in
	// use are left for cut packets (pieceBuf).
	gso     [][]byte
	gsoUsed int
	gsoFree int
	// enc writes the outer headers of this call's messages, for the peer
	// WritePackets saw when it began (nil for UDP).
	enc *encap.Encoder
}

func newTxBatch(n int) *txBatch {
	return &txBatch{
		msgs:    make([]Message, n),
		packets: make([]int, n),
		bytes:   make([]int, n),
		hdrs:    make([][encap.IPv6HeaderLen + encap.EncapLimitLen]byte, n),
		segs:    make([][MaxSegments][]byte, n),
	}
}

// maxGSOBuffers bounds the segmented super-segments one batch holds
// before it is sent (each buffer is 128 KiB).
const maxGSOBuffers = 8

// gsoBuf returns a buffer for one segmented super-segment.
func (tb *txBatch) gsoBuf() []byte {
	if tb.gsoUsed == len(tb.gso) {
		tb.gso = append(tb.gso, make([]byte, 1<<17))
	}
	tb.gsoUsed++
	tb.gsoFree = 0
	return tb.gso[tb.gsoUsed-1]
}

// pieceBuf returns n bytes of buffer for the pieces of a cut packet, from
// what is left of the last buffer in use if that is enough, or nil if the
// batch holds maxGSOBuffers already and must be flushed first.
func (tb *txBatch) pieceBuf(n int) []byte {
	if n > tb.gsoFree {
		if tb.gsoUsed == maxGSOBuffers {
			return nil
		}
		tb.gsoFree = len(tb.gsoBuf())
		if n > tb.gsoFree {
			return nil
		}
	}
	b := tb.gso[tb.gsoUsed-1]
	off := len(b) - tb.gsoFree
	tb.gsoFree -= n
	return b[off : off+n : off+n]
}

// WritePackets implements stack.LinkEndpoint.WritePackets. Packets that
// cannot be sent (too big, not IP, a send error) are dropped and counted,
// like a NIC drops on the wire; only a closed endpoint returns an error.
//
// TCP super-segments (host GSO) are cut into wire-size packets here; over
// a transport with UDP GSO they leave in UDP_SEGMENT sends of at most 64
// packets and 65,507 bytes each (queueGSO). IPv4 fragments the stack
// sends lose DF (fragdf.go).
func (e *Endpoint) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	if !e.beginWrite() {
		return 0, &tcpip.ErrClosedForSend{}
	}
	defer e.writers.RUnlock()
	tb := e.txPool.Get().(*txBatch)
	peer := e.peer.Load()
	remote := peer.addr
	tb.enc = peer.enc
	mtu := int(e.mtu.Load())
	for _, pkt := range pkts.AsSlice() {
		mtu := e.packetMTU(pkt, mtu) // less for IPv4 DF above the outer path (pmtu.go)
		gso := pkt.GSOOptions
		if gso.Type == stack.GSOTCPv4 || gso.Type == stack.GSOTCPv6 {
			if pkt.Data().Size() > int(gso.MSS) && gso.MSS > 0 {
				e.writeSuper(tb, pkt, int(gso.MSS), remote, mtu)
				continue
			}
			if gso.NeedsCsum {
				finishChecksum(pkt)
			}
		} else if clearFragmentDF(pkt); e.txChecksum(tb, pkt, remote, mtu) {
			continue // queued or held back by txcsum.go
		}
		e.queue(tb, pkt, remote, mtu)
	}
	e.flush(tb)
	tb.enc = nil
	e.txPool.Put(tb)
	return pkts.Len(), nil
}

// writeSuper cuts a TCP super-segment into packets of mss payload bytes
// and queues them: as UDP_SEGMENT messages where the transport can
// (queueGSO), as one message per packet otherwise.
func (e *Endpoint) writeSuper(tb *txBatch, pkt *stack.PacketBuffer, mss int, remote netip.AddrPort, mtu int) {
	hdr := len(pkt.NetworkHeader().Slice()) + len(pkt.TransportHeader().Slice())
	if hdr+mss > mtu {
		e.stats.drop(encap.TooBig)
		e.tooBig(pkt, mtu)
		return
	}
	pieces := (pkt.Data().Size() + mss - 1) / mss
	if tb.gsoUsed == maxGSOBuffers {
		e.flush(tb) // bound the memory one batch holds
	}
	buf := tb.gsoBuf()
	if pieces*(hdr+mss) > len(buf) {
		e.stats.drop(encap.TooBig)
		return
	}
	n, segSize := segmentTCP(buf, pkt, mss)
	if e.offloads.GSO && !e.gsoOff.Load() && e.gsoFits(segSize) {
		e.queueGSO(tb, buf[:n], segSize, remote)
		return
	}
	for off := 0; off < n; off += segSize {
		e.queuePiece(tb, buf[off:min(off+segSize, n)], remote)
	}
}

// queueGSO queues b, inner packets of segSize bytes back to back (the last
// may be shorter) in a buffer of tb's, as UDP_SEGMENT messages that each
// stay within the kernel's limits of one send (gsoSegmentsPerSend): the
// stack sizes super-segments for MTU-sized packets (gsoMaxSize), but cut
// at a smaller MSS (a peer's, or one lowered by path MTU discovery) one
// can hold twice as many packets and more than 64 KiB. A full batch is
// sent first, its buffers kept: the rest of b is still to be queued.
func (e *Endpoint) queueGSO(tb *txBatch, b []byte, segSize int, remote netip.AddrPort) {
	in, _ := encap.PeekInner(b)
	per := gsoSegmentsPerSend(segSize) * segSize
	for len(b) > 0 {
		if tb.n == len(tb.msgs) {
			e.flushKeep(tb)
		}
		k := min(len(b), per)
		i := tb.n
		m := &tb.msgs[i]
		m.Buffers, m.Addr, m.GSOSize = append(tb.segs[i][:0], b[:k]), remote, segSize
		if k <= segSize {
			m.GSOSize = 0 // one packet: a plain datagram
		}
		e.outerFields(m, in)
		tb.packets[i], tb.bytes[i] = (k+segSize-1)/segSize, k
		tb.n++
		b = b[k:]
	}
}

// queuePiece queues p, one inner packet in a buffer of tb's (gsoBuf,
// pieceBuf), as a message of its own. A full batch is sent first, its
// buffers kept: the rest of p's buffer is still to be queued.
func (e *Endpoint) queuePiece(tb *txBatch, p []byte, remote netip.AddrPort) {
	if tb.n == len(tb.msgs) {
		e.flushKeep(tb)
	}
	i := tb.n
	m := &tb.msgs[i]
	segs := tb.segs[i][:0]
	if tb.enc != nil {
		hdr := tb.hdrs[i][:]
		k, err := e.encodeOuter(tb.enc, hdr, p, len(p))
		if err != nil {
			e.stats.drop(encap.NotIP)
			return
		}
		segs = append(segs, hdr[:k])
	} else {
		in, _ := encap.PeekInner(p)
		e.outerFields(m, in)
	}
	m.Buffers, m.Addr, m.GSOSize = append(segs, p), remote, 0
	tb.packets[i], tb.bytes[i] = 1, len(p)
	tb.n++
}

// outerFields sets the outer ToS and TTL that the kernel writes for a UDP
// transport, from the inner packet's fields and the policy.
func (e *Endpoint) outerFields(m *Message, in encap.Inner) {
	m.TOS = e.pol.TOS
	if e.pol.TOSInherit {
		m.TOS = in.TOS
	}
	m.TOS = m.TOS&^3 | encap.EncapECN(in.TOS)
	m.TTL = e.pol.TTL
	if m.TTL == 0 {
		m.TTL = in.TTL
	}
}

// queue queues pkt: cut to its destination's path MTU (pmtu6.go) or as one
// message pointing into pkt, sending the batch first if it is full.
func (e *Endpoint) queue(tb *txBatch, pkt *stack.PacketBuffer, remote netip.AddrPort, mtu int) {
	if e.cutToPathMTU(tb, pkt, remote, mtu) {
		return
	}
	if tb.n == len(tb.msgs) {
		e.flush(tb)
	}
	if e.encode(tb, tb.n, pkt, remote, mtu) {
		tb.n++
	}
}

// encode fills message i of tb for pkt and reports whether it is to be
// sent. The message points into pkt's views, which stay alive until
// WritePackets returns.
func (e *Endpoint) encode(tb *txBatch, i int, pkt *stack.PacketBuffer, remote netip.AddrPort, mtu int) bool {
	size := pkt.Size()
	if size > mtu {
		e.stats.drop(encap.TooBig)
		e.tooBig(pkt, mtu)
		return false
	}
	segs := tb.segs[i][:0]
	if tb.enc != nil {
		segs = append(segs, nil) // the outer header, below
	}
	vl, off := pkt.AsViewList()
	for v := vl.Front(); v != nil; v = v.Next() {
		b := v.AsSlice()
		if off >= len(b) {
			off -= len(b)
			continue
		}
		b, off = b[off:], 0
		if len(segs) == MaxSegments {
			e.stats.drop(encap.SendError)
			return false
		}
		segs = append(segs, b)
	}
	first := 0
	if tb.enc != nil {
		first = 1
	}
	if len(segs) <= first {
		e.stats.drop(encap.NotIP)
		return false
	}
	in, ok := encap.PeekInner(segs[first])
	if !ok {
		e.stats.drop(encap.NotIP)
		return false
	}
	if in.Proto == encap.ProtoIPv6 {
		fixPacketTooBig(segs[first])
	}
	m := &tb.msgs[i]
	if tb.enc != nil {
		hdr := tb.hdrs[i][:]
		n, err := e.encodeOuter(tb.enc, hdr, segs[first], size)
		if err != nil {
			e.stats.drop(encap.NotIP)
			return false
		}
		segs[0] = hdr[:n]
	} else {
		e.outerFields(m, in)
	}
	m.Buffers, m.Addr, m.GSOSize = segs, remote, 0
	tb.packets[i], tb.bytes[i] = 1, size
	return true
}

// fixPacketTooBig gives an ICMPv6 Packet Too Big message whose MTU field
// is below IPv6's minimum link MTU that minimum, fixing the checksum. gVisor
// sends Packet Too Big with MTU 0 when it cannot forward a packet
// (ipv6.go forwardPacketWithRoute passes no MTU to returnError), and a
// gVisor sender that believes it sets its TCP segment size to 1 byte.
// RFC 8200 §5 guarantees every link 1280 bytes, so 1280 is always a safe
// answer, and what Linux assumes on receiving a smaller one (RFC 8201 §4).
// pkt is the inner packet's first bytes; it is written in place.
func fixPacketTooBig(pkt []byte) {
	const (
		icmp       = 40 // the ICMPv6 header follows the IPv6 header directly
		typeTooBig = 2  // RFC 4443 §3.2
	)
	if len(pkt) < icmp+8 || pkt[6] != 58 || pkt[icmp] != typeTooBig {
		return
	}
	mtu := binary.BigEndian.Uint32(pkt[icmp+4:])
	if mtu >= MinIPv6MTU {
		return
	}
	binary.BigEndian.PutUint32(pkt[icmp+4:], MinIPv6MTU)
	// RFC 1624 incremental update: HC' = ~(~HC + ~m + m') per 16-bit word.
	sum := uint32(^binary.BigEndian.Uint16(pkt[icmp+2:]))
	sum += uint32(^uint16(mtu>>16)) + uint32(^uint16(mtu)) + MinIPv6MTU>>16 + MinIPv6MTU&0xffff
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	binary.BigEndian.PutUint16(pkt[icmp+2:], ^uint16(sum))
}

// flush sends the queued messages and frees every buffer they used.
func (e *Endpoint) flush(tb *txBatch) {
	e.flushKeep(tb)
	tb.gsoUsed, tb.gsoFree = 0, 0
}

// flushKeep sends the queued messages but keeps the GSO buffers in use, for
// a super-segment whose packets span two batches.
func (e *Endpoint) flushKeep(tb *txBatch) {
	if tb.n > 0 {
		e.send(tb.msgs[:tb.n], tb.packets[:tb.n], tb.bytes[:tb.n])
	}
	for i := range tb.n {
		clear(tb.segs[i][:])
		tb.msgs[i].Buffers = nil
	}
	tb.n = 0
}

// send writes msgs, skipping over messages the kernel refuses, and counts
// what was sent.
func (e *Endpoint) send(msgs []Message, packets, bytes []int) {
	for len(msgs) > 0 {
		n, err := e.tr.WriteBatch(msgs)
		for i := range n {
			e.stats.txPackets.Add(uint64(packets[i]))
			e.stats.txBytes.Add(uint64(bytes[i]))
		}
		if err == nil && n == len(msgs) {
			return
		}
		msgs, packets, bytes = msgs[n:], packets[n:], bytes[n:]
		if len(msgs) == 0 {
			return
		}
		// msgs[0] failed: count it and go on with the rest.
		reason := encap.SendError
		switch {
		case errors.Is(err, syscall.EMSGSIZE):
			// Bigger than the outer path MTU, which may have dropped
			// (pmtu.go). The inner sender learns it on retransmission.
			reason = encap.TooBig
			e.learnPathMTU(datagramSize(&msgs[0]))
		case errors.Is(err, syscall.EINVAL) && msgs[0].GSOSize > 0 && e.learnPathMTU(msgs[0].GSOSize):
			// The kernel refuses UDP GSO segments above the path MTU
			// with EINVAL (udp_send_skb), not EMSGSIZE.
			reason = encap.TooBig
		case msgs[0].GSOSize > 0 && (errors.Is(err, syscall.EIO) || errors.Is(err, syscall.EINVAL)):
			// Not the path MTU (above) nor the limits of one send
			// (queueGSO): the kernel refuses UDP_SEGMENT here.
			e.refuseGSO(err)
			e.sendPlain(&msgs[0])
			msgs, packets, bytes = msgs[1:], packets[1:], bytes[1:]
			continue
		case errors.Is(err, ErrClosed):
			for i := range msgs {
				e.stats.drops[encap.Closed].Add(uint64(packets[i]))
			}
			return
		default:
			e.logSendError(err)
		}
		e.stats.drops[reason].Add(uint64(packets[0]))
		msgs, packets, bytes = msgs[1:], packets[1:], bytes[1:]
	}
}

// refuseGSO turns UDP GSO off for good after the kernel refused a
// UDP_SEGMENT send with err: EIO from udp_send_skb when the route's device
// cannot checksum (wireguard-go's ErrUDPGSODisabled), or EINVAL for a
// message within the limits of one send and the path MTU (some kernels
// refuse UDP GSO over IPv6, say). Super-segments are cut into plain
// datagrams from then on.
func (e *Endpoint) refuseGSO(err error) {
	e.stats.gsoRefused.Add(1)
	if !e.gsoOff.Swap(true) {
		e.log.Warn("the kernel refused a UDP GSO send; sending one datagram per packet from now on",
			"tunnel", e.name, "err", err,
			"hint", "check the TX checksum offload of the outer route's device (ethtool -k), or set DisableGSO to silence this")
	}
}

// sendPlain sends the packets of m, a UDP GSO message, as one datagram
// each, and counts them. It allocates, but runs only when the kernel
// refuses UDP GSO, for good after the first time.
func (e *Endpoint) sendPlain(m *Message) {
	const chunk = maxGSOSegments
	var (
		msgs          [chunk]Message
		bufs          [chunk][1][]byte
		packets, size [chunk]int
	)
	b := m.Buffers[0]
	for len(b) > 0 {
		k := 0
		for ; k < chunk && len(b) > 0; k++ {
			p := b[:min(m.GSOSize, len(b))]
			b = b[len(p):]
			bufs[k][0] = p
			msgs[k] = Message{Buffers: bufs[k][:], Addr: m.Addr, TOS: m.TOS, TTL: m.TTL}
			packets[k], size[k] = 1, len(p)
		}
		e.send(msgs[:k], packets[:k], size[:k])
	}
}

// datagramSize is the size of the datagram m sends, or of its segments
// if it is a GSO message.
func datagramSize(m *Message) int {
	if m.GSOSize > 0 {
		return m.GSOSize
	}
	n := 0
	for _, b := range m.Buffers {
		n += len(b)
	}
	return n
}

var sendErrLog atomic.Int64

func (e *Endpoint) logSendError(err error) {
	now := time.Now().UnixNano()
	if last := sendErrLog.Load(); now-last > int64(time.Second) && sendErrLog.CompareAndSwap(last, now) {
		e.log.Warn("tunnel send error", "tunnel", e.name, "err", err)
	}
}
