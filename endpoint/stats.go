package endpoint

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ipipstack/ipipstack/endpoint/encap"
)

// counters are the endpoint's statistics, updated atomically on the data
// path.
type counters struct {
	rxPackets, rxBytes atomic.Uint64
	txPackets, txBytes atomic.Uint64
	rxCoalesced        atomic.Uint64
	pmtuLearned        atomic.Uint64
	pmtuCut            atomic.Uint64
	pmtuPieces         atomic.Uint64
	gsoRefused         atomic.Uint64
	roams, roamProbes  atomic.Uint64
	roamsRefused       atomic.Uint64
	drops              [encap.NumReasons]atomic.Uint64
	lastSeen           atomic.Int64 // unix nanoseconds of the last datagram read
	firsts             firstDrops
}

func (c *counters) drop(r encap.Reason) {
	c.drops[r].Add(1)
	if !c.firsts.seen[r].Load() {
		c.firsts.record(DropSample{Reason: r})
	}
}

// dropAt is drop for a received packet whose addresses are known: the
// outer source and, once the inner header was parsed, the inner ones.
func (c *counters) dropAt(r encap.Reason, outer netip.AddrPort, src, dst netip.Addr) {
	c.drops[r].Add(1)
	if !c.firsts.seen[r].Load() {
		c.firsts.record(DropSample{Reason: r, Outer: outer, InnerSrc: src, InnerDst: dst})
	}
}

// DropSample is the first packet an endpoint dropped for one reason: when,
// and the addresses involved as far as they were known. It is what a user
// needs to see to fix a configuration (an inner address the peer's file
// has wrong, a peer sending from another outer address).
type DropSample struct {
	Reason encap.Reason
	Time   time.Time
	// Outer is the outer source of a received packet; zero for a drop
	// on send or one not tied to a datagram.
	Outer netip.AddrPort
	// InnerSrc and InnerDst are the inner packet's addresses; zero if the
	// drop came before the inner header was parsed.
	InnerSrc, InnerDst netip.Addr
}

// firstDrops keeps the first DropSample of each reason. On the data path
// it costs one atomic load per drop; the lock is taken once per reason.
type firstDrops struct {
	seen [encap.NumReasons]atomic.Bool
	mu   sync.Mutex
	// first is guarded by mu; an entry is valid once its Time is set.
	first [encap.NumReasons]DropSample
}

func (f *firstDrops) record(s DropSample) {
	if !f.seen[s.Reason].CompareAndSwap(false, true) {
		return
	}
	s.Time = time.Now()
	f.mu.Lock()
	f.first[s.Reason] = s
	f.mu.Unlock()
}

// FirstDrops returns the first drop of each reason that has occurred, in
// reason order. It is for the operator (the daemon logs each once, with
// its addresses), not for the data path.
func (e *Endpoint) FirstDrops() []DropSample {
	f := &e.stats.firsts
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []DropSample
	for _, s := range f.first {
		if !s.Time.IsZero() {
			out = append(out, s)
		}
	}
	return out
}

// Stats is a snapshot of an Endpoint's counters. Packets and bytes count
// inner packets; a datagram dropped on receive is counted only under its
// reason in Drops.
type Stats struct {
	RxPackets, RxBytes uint64
	TxPackets, TxBytes uint64
	// RxCoalesced counts the received packets (of RxPackets) that reached
	// the stack merged with others into one TCP segment (coalesce.go).
	RxCoalesced uint64
	// PathMTULearned counts the ICMPv6 Packet Too Big messages that set or
	// lowered the path MTU of an inner IPv6 destination (pmtu6.go).
	PathMTULearned uint64
	// PathMTUCut counts the IPv6 packets sent cut to fit their
	// destination's path MTU, and PathMTUPieces the fragments they were
	// cut into (also counted in TxPackets).
	PathMTUCut, PathMTUPieces uint64
	// TxGSORefused counts the UDP GSO messages the kernel refused at run
	// time (EIO, or EINVAL not caused by the path MTU) and that were sent
	// again one datagram per packet. The first refusal turns UDP GSO off
	// for good, so it is 0 or, rarely, a few from one batch.
	TxGSORefused uint64
	// Roams counts the moves of a roaming peer to a new outer address,
	// each confirmed by an echo reply from it (roam.go); RoamProbes the
	// echo requests sent to check a new address, and RoamsRefused the
	// confirmed moves refused for coming too soon after the last.
	Roams, RoamProbes, RoamsRefused uint64
	// Drops counts dropped packets by reason, indexed by encap.Reason.
	Drops [encap.NumReasons]uint64
	// LastSeen is when the last datagram arrived (valid or not); zero if
	// none has.
	LastSeen time.Time
	// Peer is the peer's current outer address.
	Peer netip.AddrPort
	// OuterPathMTU is the outer path MTU the endpoint learned from the
	// kernel after a send was refused as too big, while it holds the
	// tunnel MTU below its configured value; 0 if none does (pmtu.go).
	// OuterPathMTULearned is when it was learned, OuterPathMTUExpires
	// when the endpoint asks the kernel again (Options.PathMTUExpiry).
	OuterPathMTU                             int
	OuterPathMTULearned, OuterPathMTUExpires time.Time
	// OuterFragmentation reports that the outer path is narrower than
	// IPv6's minimum MTU plus the overhead: the tunnel MTU stays at 1280
	// and outer packets the path cannot carry leave without DF, to be
	// fragmented on the way.
	OuterFragmentation bool
}

// DropTotal sums Drops.
func (s *Stats) DropTotal() uint64 {
	var n uint64
	for _, d := range s.Drops {
		n += d
	}
	return n
}

// Stats returns a snapshot of the counters.
func (e *Endpoint) Stats() Stats {
	s := Stats{
		RxPackets:   e.stats.rxPackets.Load(),
		RxBytes:     e.stats.rxBytes.Load(),
		TxPackets:   e.stats.txPackets.Load(),
		TxBytes:     e.stats.txBytes.Load(),
		RxCoalesced: e.stats.rxCoalesced.Load(),
		Peer:        e.Remote(),

		PathMTULearned: e.stats.pmtuLearned.Load(),
		PathMTUCut:     e.stats.pmtuCut.Load(),
		PathMTUPieces:  e.stats.pmtuPieces.Load(),
		Roams:          e.stats.roams.Load(),
		RoamProbes:     e.stats.roamProbes.Load(),
		RoamsRefused:   e.stats.roamsRefused.Load(),
		TxGSORefused:   e.stats.gsoRefused.Load(),
	}
	for i := range s.Drops {
		s.Drops[i] = e.stats.drops[i].Load()
	}
	if ns := e.stats.lastSeen.Load(); ns != 0 {
		s.LastSeen = time.Unix(0, ns)
	}
	e.pathStats(&s)
	return s
}
