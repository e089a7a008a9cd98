package stack

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/link/nested"
	gvstack "gvisor.dev/gvisor/pkg/tcpip/stack"
)

// Tunnel filters (Tunnel.Filter).
//
// A tunnel with a Filter checks every inner packet that arrives FROM the
// tunnel, whether the stack forwards it to another tunnel or link or
// delivers it to itself (its inner addresses and services: reverse
// forwards, listeners, ping). Packets the stack sends INTO the tunnel are
// never filtered; they open flows whose replies then pass. A tunnel
// without a Filter pays one nil check: its link endpoint is not wrapped.
//
// The decision for a packet from the tunnel, in order:
//
//  1. A packet that cannot be classified (a truncated header, IPv6
//     extension headers that end past the first 256 bytes) is dropped.
//  2. A non-first IPv4 or IPv6 fragment passes if the first fragment of
//     the same datagram (source, destination, identification, protocol)
//     passed in the last 30 seconds, and is dropped otherwise: a
//     fragment that overtakes its first fragment is lost, and the
//     datagram with it. A first fragment too short to hold the ports is
//     dropped (RFC 1858's tiny fragments).
//  3. A packet of a flow in the flow table passes: TCP and UDP by
//     5-tuple, ICMP echo by addresses and identifier, other protocols by
//     addresses and protocol. An ICMP error (destination unreachable,
//     time exceeded, packet too big, parameter problem) passes if the
//     packet it quotes belongs to a flow in the table.
//  4. Otherwise the rules are tried in order and the first whose
//     protocol, destination prefixes and ports match decides; if none
//     matches, Filter.Default does. An allowed packet opens a flow
//     (except ICMP other than echo), so the rest of it passes even if
//     the rules change nothing.
//
// Every packet the stack sends into the tunnel opens (or refreshes) the
// flow its replies belong to. Flows expire when idle, like Linux
// conntrack: TCP after 5 minutes once packets went both ways and no FIN
// or RST was seen, 30 seconds otherwise; UDP and other protocols after
// 60 seconds; ICMP echo after 30 seconds. The table holds at most
// Filter.MaxFlows flows; a new flow on a full table evicts an expired
// one or the most idle of a few sampled (the one closest to expiring),
// counted in FilterStats.Evicted, so memory and the cost per packet stay
// bounded under a flood of new flows.
//
// Dropped packets count in the tunnel's Drops under encap.Filtered. The
// first drop of each tunnel is logged at warn with the packet's
// addresses, then at most one summary every 10 seconds.
//
// The filter is not a NAT and keeps no TCP sequence state: a peer that
// guesses the 5-tuple of a flow in the table can inject into it, as with
// any stateless-per-packet firewall without sequence tracking.

// FilterAction is what a filter does with a packet.
type FilterAction int

const (
	// FilterDeny drops the packet. It is the zero value.
	FilterDeny FilterAction = iota
	// FilterAllow lets it pass.
	FilterAllow
)

func (a FilterAction) String() string {
	switch a {
	case FilterDeny:
		return "deny"
	case FilterAllow:
		return "allow"
	}
	return "action(?)"
}

// FilterProtocol is the protocol a FilterRule matches.
type FilterProtocol int

const (
	// FilterAny matches every packet. It is the zero value.
	FilterAny FilterProtocol = iota
	// FilterTCP matches TCP.
	FilterTCP
	// FilterUDP matches UDP.
	FilterUDP
	// FilterICMP matches ICMP for IPv4 and ICMPv6.
	FilterICMP
)

func (p FilterProtocol) String() string {
	switch p {
	case FilterAny:
		return "any"
	case FilterTCP:
		return "tcp"
	case FilterUDP:
		return "udp"
	case FilterICMP:
		return "icmp"
	}
	return "protocol(?)"
}

// PortRange is an inclusive range of ports; First == Last is one port.
type PortRange struct {
	First, Last uint16
}

// FilterRule matches packets arriving from a tunnel.
type FilterRule struct {
	// Action is what happens to a packet the rule matches.
	Action FilterAction
	// Protocol is the protocol matched; FilterAny matches every one.
	Protocol FilterProtocol
	// Destinations are the inner destination prefixes matched; nil
	// matches every destination.
	Destinations []netip.Prefix
	// Ports are the destination ports matched, for FilterTCP and
	// FilterUDP only; nil matches every port.
	Ports []PortRange
}

// Filter is a tunnel's stateful filter of the packets arriving from it
// (see the comment at the top of filter.go). It is read once, by New.
type Filter struct {
	// Rules are tried in order; the first that matches decides.
	Rules []FilterRule
	// Default is the action when no rule matches; the zero value is
	// FilterDeny.
	Default FilterAction
	// MaxFlows bounds the flow table; 0 means DefaultMaxFlows.
	MaxFlows int
}

// DefaultMaxFlows is Filter.MaxFlows' default: about 6 MiB of table at
// most.
const DefaultMaxFlows = 65536

// MaxFlows is the largest Filter.MaxFlows.
const MaxFlows = 1 << 24

// Flow timeouts (see the comment at the top of filter.go).
const (
	tcpEstablishedTimeout = 5 * time.Minute
	tcpTimeout            = 30 * time.Second
	udpTimeout            = 60 * time.Second
	icmpTimeout           = 30 * time.Second
	fragTimeout           = 30 * time.Second
	// maxFrags bounds the table of first fragments that passed.
	maxFrags = 4096
	// filterLogEvery is the least time between two drop logs of a tunnel.
	filterLogEvery = 10 * time.Second
	// maxPeek is how much of a packet's start the classifier sees.
	maxPeek = 256
	// evictSample is how many flows a full shard samples for the one to
	// evict.
	evictSample = 8
	// sweepEvery is how often a shard drops its expired flows, on an
	// insertion.
	sweepEvery = 10 * time.Second
)

// FilterStats are the counters of a tunnel's filter; all zero without one.
type FilterStats struct {
	// Flows is the number of flows in the table now (expired ones
	// included until they are swept).
	Flows int
	// Evicted counts the flows dropped from a full table to make room
	// (and the records of passed first fragments dropped from theirs,
	// maxFrags).
	Evicted uint64
	// Denied counts the packets dropped (also in Drops[encap.Filtered]).
	Denied uint64
}

// validate checks f's rules.
func (f *Filter) validate() error {
	if f.Default != FilterAllow && f.Default != FilterDeny {
		return fmt.Errorf("default action %d: want FilterAllow or FilterDeny", f.Default)
	}
	if f.MaxFlows < 0 || f.MaxFlows > MaxFlows {
		return fmt.Errorf("max flows %d: want 0 (the default, %d) to %d", f.MaxFlows, DefaultMaxFlows, MaxFlows)
	}
	for i, r := range f.Rules {
		if r.Action != FilterAllow && r.Action != FilterDeny {
			return fmt.Errorf("rule %d: action %d: want FilterAllow or FilterDeny", i, r.Action)
		}
		if r.Protocol < FilterAny || r.Protocol > FilterICMP {
			return fmt.Errorf("rule %d: unknown protocol %d", i, r.Protocol)
		}
		if len(r.Ports) > 0 && r.Protocol != FilterTCP && r.Protocol != FilterUDP {
			return fmt.Errorf("rule %d: ports need protocol tcp or udp, not %v", i, r.Protocol)
		}
		for _, p := range r.Destinations {
			if !p.IsValid() {
				return fmt.Errorf("rule %d: invalid destination prefix", i)
			}
		}
		for _, p := range r.Ports {
			if p.First > p.Last {
				return fmt.Errorf("rule %d: port range %d-%d is empty", i, p.First, p.Last)
			}
		}
	}
	return nil
}

// flowKey is a flow as seen in packets arriving from the tunnel: src is
// the tunnel side. For ICMP echo both ports are the identifier; for
// protocols without ports both are 0.
type flowKey struct {
	src, dst     netip.Addr
	sport, dport uint16
	proto        uint8
}

func (k flowKey) reverse() flowKey {
	return flowKey{src: k.dst, dst: k.src, sport: k.dport, dport: k.sport, proto: k.proto}
}

// fragKey identifies an IP datagram for its fragments.
type fragKey struct {
	src, dst netip.Addr
	id       uint32
	proto    uint8
}

// Packet kinds, as classify sees them.
const (
	kindFlow      = iota // TCP, UDP, ICMP echo, other protocols: stateful
	kindICMPOther        // ICMP neither echo nor error: rules only
	kindICMPError        // quoted holds the quoted packet's flow
	kindFragment         // a non-first fragment: frag only
)

// Protocol numbers.
const (
	protoICMP   = 1
	protoTCP    = 6
	protoUDP    = 17
	protoICMPv6 = 58
)

// packetClass is what the filter needs of a packet.
type packetClass struct {
	key  flowKey
	kind uint8
	// tcpFlags are the TCP header's flags.
	tcpFlags uint8
	// hasPorts is set for TCP and UDP.
	hasPorts bool
	// first is set on a first fragment (offset 0, more fragments).
	first bool
	frag  fragKey
	// quoted is the flow of the packet an ICMP error quotes, as that
	// packet left (its src is this side).
	quoted flowKey
}

var errClassify = errors.New("cannot classify")

// classify parses the IP packet at the start of b (at most its first
// maxPeek bytes) into c. It does not allocate.
func classify(b []byte, c *packetClass) error {
	*c = packetClass{}
	proto, l4, err := parseIP(b, c, false)
	if err != nil {
		return err
	}
	if c.kind == kindFragment {
		return nil
	}
	return parseL4(proto, l4, c, false)
}

// parseIP parses the IP header (and IPv6 extension headers) of b into
// c.key's addresses and protocol and c's fragment fields, and returns the
// protocol and the bytes after the headers. quoted parses the packet an
// ICMP error quotes, which may be truncated after the first 8 bytes of
// its payload and whose length fields are not checked.
func parseIP(b []byte, c *packetClass, quoted bool) (proto uint8, l4 []byte, err error) {
	if len(b) < 1 {
		return 0, nil, errClassify
	}
	switch b[0] >> 4 {
	case 4:
		if len(b) < 20 {
			return 0, nil, errClassify
		}
		hl := int(b[0]&0xf) * 4
		if hl < 20 || hl > len(b) {
			return 0, nil, errClassify
		}
		if !quoted {
			if tl := int(binary.BigEndian.Uint16(b[2:])); tl < hl {
				return 0, nil, errClassify
			} else if tl < len(b) {
				b = b[:tl]
			}
		}
		proto = b[9]
		c.key.src = netip.AddrFrom4([4]byte(b[12:16]))
		c.key.dst = netip.AddrFrom4([4]byte(b[16:20]))
		c.key.proto = proto
		ff := binary.BigEndian.Uint16(b[6:])
		off, more := ff&0x1fff, ff&0x2000 != 0
		if off != 0 || more {
			if quoted {
				if off != 0 {
					return 0, nil, errClassify // no ports in it
				}
			} else {
				c.frag = fragKey{src: c.key.src, dst: c.key.dst, id: uint32(binary.BigEndian.Uint16(b[4:])), proto: proto}
				if off != 0 {
					c.kind = kindFragment
					return proto, nil, nil
				}
				c.first = true
			}
		}
		return proto, b[hl:], nil
	case 6:
		if len(b) < 40 {
			return 0, nil, errClassify
		}
		c.key.src = netip.AddrFrom16([16]byte(b[8:24]))
		c.key.dst = netip.AddrFrom16([16]byte(b[24:40]))
		if !quoted {
			if pl := int(binary.BigEndian.Uint16(b[4:])); pl != 0 && 40+pl < len(b) {
				b = b[:40+pl]
			}
		}
		next := b[6]
		rest := b[40:]
		for {
			switch next {
			case 0, 43, 60: // hop-by-hop, routing, destination options (RFC 8200 4.3-4.6)
				if len(rest) < 8 {
					return 0, nil, errClassify
				}
				n := (int(rest[1]) + 1) * 8
				if n > len(rest) {
					return 0, nil, errClassify
				}
				next, rest = rest[0], rest[n:]
			case 51: // AH (RFC 4302): length in 4-byte units, minus 2
				if len(rest) < 8 {
					return 0, nil, errClassify
				}
				n := (int(rest[1]) + 2) * 4
				if n > len(rest) {
					return 0, nil, errClassify
				}
				next, rest = rest[0], rest[n:]
			case 44: // fragment (RFC 8200 4.5)
				if len(rest) < 8 {
					return 0, nil, errClassify
				}
				fo := binary.BigEndian.Uint16(rest[2:])
				off, more := fo>>3, fo&1 != 0
				id := binary.BigEndian.Uint32(rest[4:])
				next = rest[0]
				rest = rest[8:]
				if off == 0 && !more {
					continue // an atomic fragment: a whole datagram
				}
				if quoted {
					if off != 0 {
						return 0, nil, errClassify
					}
					continue
				}
				c.frag = fragKey{src: c.key.src, dst: c.key.dst, id: id, proto: next}
				if off != 0 {
					c.key.proto = next
					c.kind = kindFragment
					return next, nil, nil
				}
				c.first = true
			default:
				c.key.proto = next
				return next, rest, nil
			}
		}
	}
	return 0, nil, errClassify
}

// parseL4 fills c's ports and kind from the transport header l4 of a
// packet of protocol proto.
func parseL4(proto uint8, l4 []byte, c *packetClass, quoted bool) error {
	switch proto {
	case protoTCP, protoUDP:
		if len(l4) < 4 || (proto == protoTCP && !quoted && len(l4) < 14) {
			return errClassify // RFC 1858: a first fragment must hold the ports (and TCP flags)
		}
		c.key.sport = binary.BigEndian.Uint16(l4[0:])
		c.key.dport = binary.BigEndian.Uint16(l4[2:])
		c.hasPorts = true
		if proto == protoTCP && !quoted {
			c.tcpFlags = l4[13]
		}
	case protoICMP, protoICMPv6:
		if len(l4) < 8 {
			return errClassify
		}
		typ := l4[0]
		echo := proto == protoICMP && (typ == 8 || typ == 0) || proto == protoICMPv6 && (typ == 128 || typ == 129)
		isErr := proto == protoICMP && (typ == 3 || typ == 11 || typ == 12 || typ == 4) ||
			proto == protoICMPv6 && typ >= 1 && typ <= 4
		switch {
		case echo:
			id := binary.BigEndian.Uint16(l4[4:])
			c.key.sport, c.key.dport = id, id
		case isErr && !quoted:
			var q packetClass
			qp, ql4, err := parseIP(l4[8:], &q, true)
			if err != nil {
				c.kind = kindICMPOther // rules decide
				return nil
			}
			if err := parseL4(qp, ql4, &q, true); err != nil || q.kind != kindFlow {
				c.kind = kindICMPOther
				return nil
			}
			c.kind = kindICMPError
			c.quoted = q.key
		default:
			c.kind = kindICMPOther
		}
	}
	return nil
}

// filterProtocol is the rule protocol of an IP protocol number.
func filterProtocol(proto uint8) FilterProtocol {
	switch proto {
	case protoTCP:
		return FilterTCP
	case protoUDP:
		return FilterUDP
	case protoICMP, protoICMPv6:
		return FilterICMP
	}
	return FilterAny
}

// match returns the action of the first rule of f that matches c.
func (f *Filter) match(c *packetClass) FilterAction {
	fp := filterProtocol(c.key.proto)
rules:
	for i := range f.Rules {
		r := &f.Rules[i]
		if r.Protocol != FilterAny && r.Protocol != fp {
			continue
		}
		if r.Destinations != nil {
			ok := false
			for _, p := range r.Destinations {
				if p.Contains(c.key.dst) {
					ok = true
					break
				}
			}
			if !ok {
				continue
			}
		}
		if r.Ports != nil {
			if !c.hasPorts {
				continue
			}
			for _, p := range r.Ports {
				if c.key.dport >= p.First && c.key.dport <= p.Last {
					return r.Action
				}
			}
			continue rules
		}
		return r.Action
	}
	return f.Default
}

// flowEntry is a flow's state.
type flowEntry struct {
	expires int64 // clock nanoseconds
	// fromTunnel says the flow was opened by a packet from the tunnel;
	// both says packets went both ways since.
	fromTunnel, both bool
	// closing is set once a FIN or RST was seen.
	closing bool
}

// flowShard is one lock's part of the flow table.
type flowShard struct {
	mu sync.Mutex
	// +checklocks:mu
	m map[flowKey]flowEntry
	// +checklocks:mu
	lastSweep int64
}

// tunnelFilter is a tunnel's filter with its state. Safe for concurrent
// use.
type tunnelFilter struct {
	cfg    Filter // validated copy
	tunnel string
	log    *slog.Logger
	// now returns the clock in nanoseconds; monotonic.
	now func() int64

	shards   []flowShard
	perShard int

	fragMu sync.Mutex
	// +checklocks:fragMu
	frags map[fragKey]int64 // expiry

	flows           atomic.Int64
	evicted, denied atomic.Uint64
	lastLog         atomic.Int64 // clock nanoseconds of the last drop log; 0 before the first
	droppedSinceLog atomic.Uint64
}

var filterEpoch = time.Now()

func monotonicNanos() int64 { return int64(time.Since(filterEpoch)) + 1 }

// newTunnelFilter validates f and builds its state. It fills the shards
// without their locks: nothing else sees them yet.
//
// +checklocksignore
func newTunnelFilter(f *Filter, tunnel string, log *slog.Logger) (*tunnelFilter, error) {
	if err := f.validate(); err != nil {
		return nil, err
	}
	cfg := *f
	cfg.Rules = append([]FilterRule(nil), f.Rules...)
	for i := range cfg.Rules {
		r := &cfg.Rules[i]
		r.Destinations = append([]netip.Prefix(nil), r.Destinations...)
		for j, p := range r.Destinations {
			r.Destinations[j] = p.Masked()
		}
		if len(f.Rules[i].Destinations) == 0 {
			r.Destinations = nil
		}
		r.Ports = append([]PortRange(nil), r.Ports...)
		if len(f.Rules[i].Ports) == 0 {
			r.Ports = nil
		}
	}
	if cfg.MaxFlows == 0 {
		cfg.MaxFlows = DefaultMaxFlows
	}
	n := 1
	if cfg.MaxFlows >= 1024 {
		n = 16
	}
	tf := &tunnelFilter{cfg: cfg, tunnel: tunnel, log: log, now: monotonicNanos,
		shards: make([]flowShard, n), perShard: cfg.MaxFlows / n, frags: map[fragKey]int64{}}
	for i := range tf.shards {
		tf.shards[i].m = map[flowKey]flowEntry{}
	}
	return tf, nil
}

// shard returns the shard of k.
func (tf *tunnelFilter) shard(k *flowKey) *flowShard {
	if len(tf.shards) == 1 {
		return &tf.shards[0]
	}
	// FNV-1a over the fields that vary most; order-sensitive, which is
	// fine: a flow is always looked up in the same orientation.
	h := uint32(2166136261)
	mix := func(b byte) { h = (h ^ uint32(b)) * 16777619 }
	a, d := k.src.As16(), k.dst.As16()
	for i := 12; i < 16; i++ {
		mix(a[i])
		mix(d[i])
	}
	mix(byte(k.sport))
	mix(byte(k.sport >> 8))
	mix(byte(k.dport))
	mix(byte(k.dport >> 8))
	mix(k.proto)
	return &tf.shards[h%uint32(len(tf.shards))]
}

// timeout is how long the flow e of protocol proto lives idle.
func timeout(proto uint8, e *flowEntry) time.Duration {
	switch proto {
	case protoTCP:
		if e.both && !e.closing {
			return tcpEstablishedTimeout
		}
		return tcpTimeout
	case protoICMP, protoICMPv6:
		return icmpTimeout
	}
	return udpTimeout
}

// touch refreshes the flow k if it is in the table and alive, noting a
// packet from the tunnel (in) or into it, and reports whether it was.
// With insert set, a missing flow is added.
func (tf *tunnelFilter) touch(k flowKey, in, insert bool, tcpFlags uint8) bool {
	now := tf.now()
	sh := tf.shard(&k)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	e, ok := sh.m[k]
	if ok && e.expires <= now {
		delete(sh.m, k)
		tf.flows.Add(-1)
		ok = false
	}
	if !ok {
		if !insert {
			return false
		}
		tf.makeRoomLocked(sh, now)
		e = flowEntry{fromTunnel: in}
		tf.flows.Add(1)
	} else if e.fromTunnel != in {
		e.both = true
	}
	if tcpFlags&0x05 != 0 { // FIN or RST
		e.closing = true
	}
	e.expires = now + int64(timeout(k.proto, &e))
	sh.m[k] = e
	return ok
}

// makeRoomLocked drops sh's expired flows once every sweepEvery, and
// evicts one flow if sh is still full: of a few sampled (map iteration
// starts at random), the first expired one, or else the one closest to
// expiring, which is the most idle of them for its protocol.
//
// +checklocks:sh.mu
func (tf *tunnelFilter) makeRoomLocked(sh *flowShard, now int64) {
	if now-sh.lastSweep >= int64(sweepEvery) {
		sh.lastSweep = now
		for k, e := range sh.m {
			if e.expires <= now {
				delete(sh.m, k)
				tf.flows.Add(-1)
			}
		}
	}
	if len(sh.m) < tf.perShard {
		return
	}
	var victim flowKey
	soonest, n := int64(0), 0
	for k, e := range sh.m {
		if e.expires <= now {
			victim = k
			break
		}
		if n == 0 || e.expires < soonest {
			victim, soonest = k, e.expires
		}
		if n++; n == evictSample {
			break
		}
	}
	delete(sh.m, victim)
	tf.flows.Add(-1)
	tf.evicted.Add(1)
}

// fragPassed reports whether the first fragment of k passed lately.
func (tf *tunnelFilter) fragPassed(k fragKey) bool {
	now := tf.now()
	tf.fragMu.Lock()
	defer tf.fragMu.Unlock()
	exp, ok := tf.frags[k]
	return ok && exp > now
}

// notePassedFragment remembers that the first fragment of k passed. On
// a full table it drops the expired records among a few sampled, or one
// record if none was (counted in FilterStats.Evicted).
func (tf *tunnelFilter) notePassedFragment(k fragKey) {
	now := tf.now()
	tf.fragMu.Lock()
	defer tf.fragMu.Unlock()
	if _, ok := tf.frags[k]; !ok && len(tf.frags) >= maxFrags {
		n, freed := 0, false
		for fk, exp := range tf.frags {
			if exp <= now {
				delete(tf.frags, fk)
				freed = true
			}
			if n++; n == 4*evictSample {
				break
			}
		}
		if !freed {
			for fk := range tf.frags {
				delete(tf.frags, fk)
				tf.evicted.Add(1)
				break
			}
		}
	}
	tf.frags[k] = now + int64(fragTimeout)
}

// inbound decides the packet b from the tunnel; see the top of the file.
func (tf *tunnelFilter) inbound(b []byte) bool {
	var c packetClass
	if classify(b, &c) != nil {
		tf.drop(&c, "unparsable")
		return false
	}
	if c.kind == kindFragment {
		if tf.fragPassed(c.frag) {
			return true
		}
		tf.drop(&c, "fragment without its first fragment")
		return false
	}
	pass := false
	switch c.kind {
	case kindFlow:
		pass = tf.touch(c.key, true, false, c.tcpFlags)
	case kindICMPError:
		pass = tf.lookup(c.quoted.reverse())
	}
	if !pass {
		if tf.cfg.match(&c) != FilterAllow {
			tf.drop(&c, "denied")
			return false
		}
		if c.kind == kindFlow {
			tf.touch(c.key, true, true, c.tcpFlags)
		}
	}
	if c.first {
		tf.notePassedFragment(c.frag)
	}
	return true
}

// lookup reports whether the flow k is in the table and alive, without
// refreshing it.
func (tf *tunnelFilter) lookup(k flowKey) bool {
	now := tf.now()
	sh := tf.shard(&k)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	e, ok := sh.m[k]
	return ok && e.expires > now
}

// outbound notes the packet b that leaves through the tunnel: it opens or
// refreshes the flow of its replies.
func (tf *tunnelFilter) outbound(b []byte) {
	var c packetClass
	if classify(b, &c) != nil || c.kind != kindFlow {
		return
	}
	tf.touch(c.key.reverse(), false, true, c.tcpFlags)
}

// drop counts a dropped packet and logs, rate-limited.
func (tf *tunnelFilter) drop(c *packetClass, why string) {
	tf.denied.Add(1)
	tf.droppedSinceLog.Add(1)
	now := tf.now()
	last := tf.lastLog.Load()
	if last != 0 && now-last < int64(filterLogEvery) {
		return
	}
	if !tf.lastLog.CompareAndSwap(last, now) {
		return
	}
	n := tf.droppedSinceLog.Swap(0)
	msg := "tunnel filter dropped packets from the tunnel"
	if last == 0 {
		msg = "tunnel filter dropped a packet from the tunnel (first drop; later ones are summarized every 10s)"
	}
	tf.log.Warn(msg, "tunnel", tf.tunnel, "dropped", n, "reason", why,
		"protocol", c.key.proto, "src", c.key.src, "dst", c.key.dst, "dst_port", c.key.dport,
		"hint", "add an allow rule to the tunnel's filter block if this traffic should pass")
}

// stats returns the filter's counters; nil-safe.
func (tf *tunnelFilter) stats() FilterStats {
	if tf == nil {
		return FilterStats{}
	}
	return FilterStats{Flows: int(tf.flows.Load()), Evicted: tf.evicted.Load(), Denied: tf.denied.Load()}
}

// filterLink is the link endpoint of a tunnel with a filter, around the
// tunnel's own (or its capture): it filters what the tunnel delivers and
// notes what the stack writes into it.
type filterLink struct {
	nested.Endpoint
	f *tunnelFilter
}

var (
	_ gvstack.LinkEndpoint      = (*filterLink)(nil)
	_ gvstack.GSOEndpoint       = (*filterLink)(nil)
	_ gvstack.NetworkDispatcher = (*filterLink)(nil)
)

// wrapFilter returns link wrapped in a filterLink applying f.
func wrapFilter(link gvstack.LinkEndpoint, f *tunnelFilter) gvstack.LinkEndpoint {
	l := &filterLink{f: f}
	l.Endpoint.Init(link, l)
	return l
}

// DeliverNetworkPacket implements stack.NetworkDispatcher: it passes pkt
// on if the filter allows it. The caller keeps its reference either way.
func (l *filterLink) DeliverNetworkPacket(proto tcpip.NetworkProtocolNumber, pkt *gvstack.PacketBuffer) {
	var buf [maxPeek]byte
	if !l.f.inbound(peek(pkt, &buf)) {
		return
	}
	l.Endpoint.DeliverNetworkPacket(proto, pkt)
}

// WritePackets implements stack.LinkEndpoint.WritePackets: it notes each
// packet's flow, then writes them all. The caller keeps its references.
func (l *filterLink) WritePackets(pkts gvstack.PacketBufferList) (int, tcpip.Error) {
	var buf [maxPeek]byte
	for _, pkt := range pkts.AsSlice() {
		l.f.outbound(peek(pkt, &buf))
	}
	return l.Endpoint.WritePackets(pkts)
}

// peek returns the first maxPeek bytes of pkt (all of it if shorter),
// headers included: a slice of its first chunk if that holds them,
// otherwise a copy in buf.
func peek(pkt *gvstack.PacketBuffer, buf *[maxPeek]byte) []byte {
	vl, off := pkt.AsViewList()
	want := min(pkt.Size(), maxPeek)
	n := 0
	for v := vl.Front(); v != nil && n < want; v = v.Next() {
		s := v.AsSlice()
		if off >= len(s) {
			off -= len(s)
			continue
		}
		s = s[off:]
		off = 0
		if n == 0 && len(s) >= want {
			return s[:want]
		}
		n += copy(buf[n:want], s)
	}
	return buf[:n]
}
