package endpoint

import (
	"net/netip"
	"sync"
	"time"

	"github.com/ipipstack/ipipstack/endpoint/encap"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// Path MTU, outer and inner.
//
// Outer: the transports set IP_PMTUDISC_DO (DF) on their sockets, so the
// kernel refuses a datagram larger than its path MTU to the peer with
// EMSGSIZE (EINVAL for a UDP GSO message whose segments are too big). The
// endpoint then asks the transport for the kernel's path MTU (a
// PathMTUer) and, if that leaves less room than the tunnel MTU, lowers the
// tunnel MTU to fit and logs it. The kernel learns a lower path MTU from
// its routes and from ICMP errors.
//
// Expiry: a learned path MTU holds the tunnel MTU down for
// Options.PathMTUExpiry (10 minutes by default: RFC 1191 §6.3, RFC 8201
// §4, Linux's net.ipv4.route.mtu_expires). Then the endpoint asks the
// kernel again and goes back up as far as it allows, to the configured
// MTU once the kernel has forgotten its own lower value (a Linux ipip
// tunnel follows its route the same way). If the path is in fact still
// narrow, the next datagram too big for it is refused again and the MTU
// learned again: a probe upward that costs one packet every interval.
// Stats shows the learned value and when it expires.
//
// IPv6's minimum: gVisor keeps one MTU per NIC, and below 1280 bytes its
// IPv6 refuses to send anything at all (ipv6.go calculateNetworkMTU
// returns ErrInvalidEndpointState for every packet, counted only in IP
// OutgoingPacketErrors; received packets are still delivered, but never
// answered). So, unless Options.IPv4Only says no IPv6 crosses the tunnel,
// an MTU of 1280 or more is never lowered below 1280. What the outer path
// still carries whole (the room, below the NIC MTU then) is kept apart,
// and packets above it go out with outer DF clear, to be fragmented on
// the way, as Linux sit does when its path is below 1280 (ipip6_tunnel_xmit):
//   - raw IPv4 outer: the endpoint clears DF in the outer headers of those
//     packets; the kernel fragments them to its path MTU;
//   - UDP over IPv4: the socket goes from IP_PMTUDISC_DO to
//     IP_PMTUDISC_WANT, with which the kernel sets DF on datagrams that
//     fit the path and fragments the others (and UDP GSO, whose segments
//     the kernel refuses above the path MTU even then, is not used for
//     packets above the room);
//   - inner IPv4 with DF above the room is dropped and answered with
//     Fragmentation Needed quoting the room, as Linux ipip does
//     (tnl_update_pmtu), so that its sender lowers its segment size
//     instead of having its packets fragmented;
//   - IPv6 outer is left as it was: the kernel does not fragment a raw
//     IPv6 packet the endpoint wrote, and an IPv6 path is at least 1280.
// Stats.OuterFragmentation says when this is in force.
//
// Inner: gVisor reads the NIC MTU afresh for every packet it forwards or
// fragments, and when a route is made, so forwarded packets and new
// connections see a lower MTU at once and forwarders answer DF packets
// with Fragmentation Needed / Packet Too Big. A TCP connection made
// before, though, keeps the segment size it chose at connect time, and
// its segments would now be dropped as TooBig for good. So, as a Linux
// tunnel does (skb_tunnel_check_pmtu), the endpoint answers a packet too
// big for the tunnel with an ICMP Fragmentation Needed (IPv4 with DF) or
// Packet Too Big (IPv6) delivered to its own stack, from the packet's
// destination to its source; gVisor's TCP then lowers its segment size
// and retransmits. A connection's segment size does not grow back when
// the MTU does (gVisor does no packetization layer probing); connections
// made after the expiry use the full MTU.

// DefaultPathMTUExpiry is how long a learned outer path MTU lasts when
// Options.PathMTUExpiry is 0.
const DefaultPathMTUExpiry = 10 * time.Minute

// outerPath is what the endpoint knows of its outer path MTU.
type outerPath struct {
	// expiry and ipv6Floor are set in New: Options.PathMTUExpiry and
	// !Options.IPv4Only.
	expiry    time.Duration
	ipv6Floor bool

	// mu guards the fields below. It is taken only when a send was
	// refused as too big, on expiry, by SetMTU and by Stats.
	mu sync.Mutex
	// base is the configured MTU (Options, SetMTU).
	base uint32
	// pmtu is the learned outer path MTU, 0 if none holds the MTU down;
	// learned and expires are when it was learned and when it is asked
	// again.
	pmtu             int
	learned, expires time.Time
	timer            *time.Timer
	closed           bool
	// frag: the transport lets the kernel fragment (fragmentAllower).
	frag bool
}

// fragmentAllower is implemented by transports that can let the kernel
// fragment outer IPv4 datagrams larger than its path MTU, instead of
// refusing them (the sockets of ListenUDP and ListenRaw).
type fragmentAllower interface {
	allowFragmentation(on bool) error
}

// PathMTUer is implemented by transports that can tell the kernel's
// current path MTU to a peer (the transports of ListenUDP and ListenRaw).
type PathMTUer interface {
	// PathMTU returns the path MTU to dst: the size of the largest outer
	// IP packet the kernel sends there unfragmented.
	PathMTU(dst netip.Addr) (int, error)
}

// maxPendingTooBig bounds the ICMP errors on their way into the stack.
const maxPendingTooBig = 16

// initPathMTU sets the configured MTU and the expiry from opts.
func (e *Endpoint) initPathMTU(mtu uint32, opts Options) {
	o := &e.opath
	o.expiry, o.ipv6Floor = opts.PathMTUExpiry, !opts.IPv4Only
	if o.expiry <= 0 {
		o.expiry = DefaultPathMTUExpiry
	}
	o.base = mtu
	e.room.Store(mtu)
	e.mtu.Store(mtu)
}

// learnPathMTU is called when the transport refused a datagram of size
// bytes (the outer payload: inner packet plus any outer header the
// endpoint wrote) as too big. It lowers the MTU to what the kernel's path
// MTU leaves and reports whether the datagram was too big for it.
func (e *Endpoint) learnPathMTU(size int) bool {
	p, ok := e.tr.(PathMTUer)
	if !ok {
		return true
	}
	remote := e.Remote()
	pmtu, err := p.PathMTU(remote.Addr())
	if err != nil {
		e.logSendError(err)
		return true
	}
	overhead := e.overhead()
	if e.framing != FramingUDP {
		// size includes the outer IP header the endpoint wrote.
		size -= overhead
	}
	mtu := pmtu - overhead
	if mtu < MinMTU {
		return true
	}
	o := &e.opath
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return true
	}
	room := int(e.room.Load())
	if mtu >= room {
		return size > mtu
	}
	now := time.Now()
	o.pmtu, o.learned, o.expires = pmtu, now, now.Add(o.expiry)
	e.armExpiry()
	e.applyMTU()
	e.log.Warn("outer path MTU dropped; tunnel MTU lowered", "tunnel", e.name, "peer", remote,
		"path_mtu", pmtu, "from", room, "to", mtu, "mtu", e.mtu.Load(), "expires", o.expires)
	return true
}

// overhead is the size of the outer headers.
func (e *Endpoint) overhead() int {
	return Overhead(e.framing, e.Remote().Addr().Is6(), e.pol)
}

// armExpiry (re)starts the timer that asks the kernel again at
// o.expires. o.mu is held.
func (e *Endpoint) armExpiry() {
	o := &e.opath
	d := time.Until(o.expires)
	if o.timer == nil {
		o.timer = time.AfterFunc(d, e.expirePathMTU)
		return
	}
	o.timer.Reset(d)
}

// expirePathMTU runs when a learned path MTU expires: it asks the kernel
// for the path MTU again and raises the tunnel MTU as far as that allows.
func (e *Endpoint) expirePathMTU() {
	o := &e.opath
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed || o.pmtu == 0 || time.Now().Before(o.expires) {
		return // closed, or learned again since the timer fired
	}
	old, oldMTU := o.pmtu, e.mtu.Load()
	o.pmtu = 0
	if p, ok := e.tr.(PathMTUer); ok {
		pmtu, err := p.PathMTU(e.Remote().Addr())
		switch {
		case err != nil:
			e.log.Warn("cannot ask the kernel for the outer path MTU; tunnel MTU back to its configured value",
				"tunnel", e.name, "err", err)
		case pmtu-e.overhead() < int(o.base):
			// The kernel still knows a lower path MTU (it may have
			// learned it later than we did): hold it another round.
			now := time.Now()
			o.pmtu, o.learned, o.expires = pmtu, now, now.Add(o.expiry)
			e.armExpiry()
		}
	}
	if o.pmtu == 0 {
		o.learned, o.expires = time.Time{}, time.Time{}
	}
	e.applyMTU()
	if o.pmtu != old {
		e.log.Info("learned outer path MTU expired; tunnel MTU raised", "tunnel", e.name,
			"path_mtu", old, "now_path_mtu", o.pmtu, "from", oldMTU, "to", e.mtu.Load())
	}
}

// applyMTU sets the MTU and the room from the configured MTU and the
// learned path MTU, and lets the transport fragment outer packets while
// the room is below the MTU (see the top of the file). o.mu is held.
func (e *Endpoint) applyMTU() {
	o := &e.opath
	room := o.base
	if o.pmtu != 0 {
		room = min(room, uint32(max(o.pmtu-e.overhead(), MinMTU)))
	}
	mtu := room
	if room < MinIPv6MTU && o.base >= MinIPv6MTU && o.ipv6Floor && e.canFragmentOuter() {
		mtu = MinIPv6MTU
	}
	frag := room < mtu
	if frag != o.frag {
		if fa, ok := e.tr.(fragmentAllower); ok {
			if err := fa.allowFragmentation(frag); err != nil {
				e.log.Warn("cannot change the outer socket's fragmentation; outer packets above the path MTU may be refused",
					"tunnel", e.name, "fragment", frag, "err", err)
			}
		}
		o.frag = frag
		if frag {
			e.log.Warn("outer path is narrower than IPv6's minimum MTU: tunnel MTU kept at 1280, outer packets above the path leave without DF and are fragmented on the way",
				"tunnel", e.name, "path_mtu", o.pmtu, "room", room)
		}
	}
	// Raise the room before the MTU and lower the MTU before the room,
	// so that a sender never sees more room than MTU.
	if room > e.room.Load() {
		e.room.Store(room)
		e.mtu.Store(mtu)
	} else {
		e.mtu.Store(mtu)
		e.room.Store(room)
	}
}

// canFragmentOuter reports whether outer packets can leave without DF:
// raw IPv4 outer headers are the endpoint's own; a UDP socket over IPv4
// must let the kernel fragment.
func (e *Endpoint) canFragmentOuter() bool {
	switch e.framing {
	case FramingRawIPv4:
		return true
	case FramingUDP:
		_, ok := e.tr.(fragmentAllower)
		return ok && e.Remote().Addr().Is4()
	}
	return false
}

// setBaseMTU changes the configured MTU (SetMTU).
func (e *Endpoint) setBaseMTU(mtu uint32) {
	o := &e.opath
	o.mu.Lock()
	defer o.mu.Unlock()
	o.base = mtu
	e.applyMTU()
}

// stopPathMTU stops the expiry timer (Close).
func (e *Endpoint) stopPathMTU() {
	o := &e.opath
	o.mu.Lock()
	defer o.mu.Unlock()
	o.closed = true
	if o.timer != nil {
		o.timer.Stop()
	}
}

// pathStats fills in the outer path MTU fields of s.
func (e *Endpoint) pathStats(s *Stats) {
	o := &e.opath
	o.mu.Lock()
	defer o.mu.Unlock()
	s.OuterPathMTU, s.OuterPathMTULearned, s.OuterPathMTUExpires = o.pmtu, o.learned, o.expires
	s.OuterFragmentation = e.room.Load() < e.mtu.Load()
}

// packetMTU is the largest size pkt may have, given the MTU mtu: the room
// for an inner IPv4 packet with DF while outer packets are fragmented, so
// that its sender is told the real path MTU (top of the file).
func (e *Endpoint) packetMTU(pkt *stack.PacketBuffer, mtu int) int {
	room := int(e.room.Load())
	if room >= mtu {
		return mtu
	}
	h := pkt.NetworkHeader().Slice()
	if len(h) >= header.IPv4MinimumSize && h[0]>>4 == 4 && header.IPv4(h).Flags()&header.IPv4FlagDontFragment != 0 {
		return room
	}
	return mtu
}

// gsoFits reports whether UDP GSO may carry segments of segSize inner
// bytes: not above the room, where the kernel refuses them even when it
// may fragment.
func (e *Endpoint) gsoFits(segSize int) bool { return segSize <= int(e.room.Load()) }

// encodeOuter writes, with enc, the outer header for an inner packet of size bytes
// whose first bytes are head (encap.Encoder.EncodeHead), with DF clear if
// the packet is bigger than the outer path carries.
func (e *Endpoint) encodeOuter(enc *encap.Encoder, hdr, head []byte, size int) (int, error) {
	n, err := enc.EncodeHead(hdr, head, size, uint16(e.ipID.Add(1)))
	if err == nil && size > int(e.room.Load()) && !enc.IsIPv6() {
		encap.ClearDF(hdr[:n])
	}
	return n, err
}
