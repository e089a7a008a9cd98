package endpoint

import (
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ipipstack/ipipstack/endpoint/encap"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

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
	// sendTooBig) either starts before Close waits on wg or not at all.
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
	if p, ok := opts.Transport.(*sharedPeer); ok {
		if err := p.bind(e); err != nil {
			return nil, err
		}
	}
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
	rs := e.tr.Receivers()
	batch := rxBatchPer(e.batch, len(rs))
	for _, r := range rs {
		e.wg.Add(1)
		go e.receive(r, batch)
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

// enter reports whether a Shared's receive goroutine may hand the
// endpoint n datagrams, and returns the dispatcher to hand them to; if ok,
// the caller calls e.wg.Done when it is done, and Close waits for it.
// Under mu, like Close sets closed.
func (e *Endpoint) enter(n int) (d stack.NetworkDispatcher, ok bool) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	if e.closed.Load() {
		for range n {
			e.stats.drop(encap.Closed)
		}
		return nil, false
	}
	e.wg.Add(1)
	return e.dispatcher, true
}
