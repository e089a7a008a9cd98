package endpoint

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Shared is one set of outer sockets serving many tunnels, as Linux's one
// FOU receive port (ip fou add port 5555) or its one ipip receive hook
// serves every tunnel: it reads every Receiver of its Transport with a
// goroutine of its own and hands each datagram to the endpoint whose peer
// sent it, picked by the outer source address and port (the address alone
// for a peer with per-flow source ports, and over raw sockets, which
// carry no port). A datagram from no tunnel's peer is counted once, in
// SharedStats.WrongPeer, not by any endpoint.
//
// A tunnel on a Shared owns no goroutine and no receive buffer: its
// endpoint is made with the Transport that Join returns, whose WriteBatch
// goes straight to the shared sockets (which take concurrent writers) and
// whose Receivers are none. Consecutive datagrams of one read from one
// peer are handed over together, so GRO and coalescing work as on a
// socket of the tunnel's own.
type Shared struct {
	tr      Transport
	framing Framing
	log     *slog.Logger

	// table is the peers. Join and leave change it holding mu; the
	// receive goroutines read it holding mu for reading, once a batch.
	mu    sync.RWMutex
	table peerTable
	// fragWanted counts the joined tunnels that asked for outer
	// fragmentation (allowFragmentation); the socket fragments while
	// it is not zero. Guarded by mu.
	fragWanted int

	closed  atomic.Bool
	wg      sync.WaitGroup
	stats   sharedCounters
	lastLog atomic.Int64
}

// SharedStats are the counters of a Shared socket set.
type SharedStats struct {
	// Received counts the datagrams read (a coalesced read counts each
	// datagram in it).
	Received uint64
	// WrongPeer counts datagrams that reached no endpoint: from an
	// outer address that is no tunnel's peer, too short to name their
	// sender (raw IPv4 without a whole outer header), or for a tunnel
	// whose endpoint is not made yet (between Join and New).
	WrongPeer uint64
}

type sharedCounters struct {
	received, wrongPeer atomic.Uint64
}

// Errors of Join, for errors.Is.
var (
	// ErrPeerTaken: another tunnel of the socket set has that peer, or
	// one of them takes every source port of the address.
	ErrPeerTaken = errors.New("another tunnel on these sockets has that peer")
	// ErrRoamingTaken: another tunnel of the socket set is roaming; a
	// datagram from an unknown address could be either's.
	ErrRoamingTaken = errors.New("another tunnel on these sockets is roaming")
)

// sharedBatch is the number of datagrams a Shared reads per call, shared
// among its receive goroutines as an endpoint's is (rxBatchPer).
const sharedBatch = 64

// NewShared takes ownership of tr (from ListenUDP or ListenRaw, say) and
// starts reading it. A nil log discards the logs.
func NewShared(tr Transport, log *slog.Logger) *Shared {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Shared{tr: tr, framing: tr.Framing(), log: log}
	s.table.init()
	rs := tr.Receivers()
	batch := rxBatchPer(sharedBatch, len(rs))
	for _, r := range rs {
		s.wg.Add(1)
		go s.receive(r, batch)
	}
	return s
}

// LocalAddr is the sockets' local address.
func (s *Shared) LocalAddr() netip.AddrPort { return s.tr.LocalAddr() }

// Framing is the sockets' framing.
func (s *Shared) Framing() Framing { return s.framing }

// Tunnels is the number of joined Transports that are open.
func (s *Shared) Tunnels() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.table.n
}

// Stats returns the counters.
func (s *Shared) Stats() SharedStats {
	return SharedStats{
		Received:  s.stats.received.Load(),
		WrongPeer: s.stats.wrongPeer.Load(),
	}
}

// Close closes the sockets and waits for the receive goroutines. The
// joined Transports fail their writes from then on.
func (s *Shared) Close() error {
	s.mu.Lock()
	if s.closed.Swap(true) {
		s.mu.Unlock()
		return nil
	}
	s.mu.Unlock()
	err := s.tr.Close()
	s.wg.Wait()
	return err
}

// Join returns the Transport of one tunnel to remote over s, for
// Options.Transport of endpoint.New; one endpoint may use it. That
// endpoint receives the datagrams from remote (from remote's address and
// any port if anySourcePort), and, if roaming, those from no other
// tunnel's peer. Closing the Transport, as Endpoint.Close does, takes the
// tunnel out; it does not close s.
func (s *Shared) Join(remote netip.AddrPort, anySourcePort, roaming bool) (Transport, error) {
	remote = netip.AddrPortFrom(remote.Addr().Unmap(), remote.Port())
	if s.framing != FramingUDP {
		remote, anySourcePort = netip.AddrPortFrom(remote.Addr(), 0), false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed.Load() {
		return nil, ErrClosed
	}
	t := &s.table
	switch {
	case t.exact[remote] != nil, t.any[remote.Addr()] != nil,
		anySourcePort && t.ports[remote.Addr()] > 0:
		return nil, fmt.Errorf("endpoint: join %v on %v: %w", remote, s.LocalAddr(), ErrPeerTaken)
	case roaming && t.roam != nil:
		return nil, fmt.Errorf("endpoint: join %v on %v: %w (%v)", remote, s.LocalAddr(), ErrRoamingTaken, t.roam.remote)
	}
	p := &sharedPeer{s: s, remote: remote, anySourcePort: anySourcePort, roaming: roaming}
	t.add(p)
	return p, nil
}

// leave takes p out of the table.
func (s *Shared) leave(p *sharedPeer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.table.remove(p)
	if p.frag {
		p.frag = false
		s.setFragmentation(-1)
	}
}

// setFragmentation adds d to the tunnels that want outer fragmentation and
// switches the socket when that count leaves or reaches zero. s.mu is
// held.
func (s *Shared) setFragmentation(d int) error {
	was := s.fragWanted > 0
	s.fragWanted += d
	now := s.fragWanted > 0
	fa, ok := s.tr.(fragmentAllower)
	if was == now || !ok {
		return nil
	}
	return fa.allowFragmentation(now)
}

// receive is the loop of one Receiver: read a batch, find each datagram's
// tunnel, and hand each run of consecutive datagrams of one tunnel to its
// endpoint.
func (s *Shared) receive(r Receiver, batch int) {
	defer s.wg.Done()
	l := newRxLoop(batch)
	defer l.release()
	peers := make([]*sharedPeer, batch)
	warn := func(err error) { s.log.Warn("shared tunnel socket receive error", "local", s.LocalAddr(), "err", err) }
	for {
		n, ok := l.read(r, s.closed.Load, warn)
		if !ok {
			return
		}
		received := 0
		s.mu.RLock()
		for i := range n {
			m := &l.msgs[i]
			received += datagrams(m)
			peers[i] = s.lookup(&s.table, m)
		}
		s.mu.RUnlock()
		s.stats.received.Add(uint64(received))
		for i := 0; i < n; {
			p := peers[i]
			j := i + 1
			for j < n && peers[j] == p {
				j++
			}
			if p != nil {
				p.deliver(l, i, j)
			}
			i = j
		}
		clear(peers[:n])
	}
}

// datagrams is the number of datagrams m holds: more than one if the
// kernel coalesced them (UDP GRO).
func datagrams(m *Message) int {
	if m.GSOSize > 0 && m.GSOSize < m.N {
		return (m.N + m.GSOSize - 1) / m.GSOSize
	}
	return 1
}

// lookup returns the tunnel of m's sender, or nil after counting m as
// from no known peer.
func (s *Shared) lookup(t *peerTable, m *Message) *sharedPeer {
	var src netip.AddrPort
	switch s.framing {
	case FramingRawIPv4:
		b := m.Buffers[0][:m.N]
		if len(b) < 20 || b[0]>>4 != 4 {
			s.stats.wrongPeer.Add(1)
			return nil
		}
		src = netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[12:16])), 0)
	case FramingRawIPv6:
		src = netip.AddrPortFrom(m.Addr.Addr().Unmap(), 0)
	default:
		src = netip.AddrPortFrom(m.Addr.Addr().Unmap(), m.Addr.Port())
	}
	if p := t.lookup(src); p != nil {
		return p
	}
	s.stats.wrongPeer.Add(uint64(datagrams(m)))
	s.logWrongPeer(src)
	return nil
}

// wrongPeerLogInterval spaces the warnings about datagrams from unknown
// peers.
const wrongPeerLogInterval = time.Minute

func (s *Shared) logWrongPeer(src netip.AddrPort) {
	now := time.Now().UnixNano()
	last := s.lastLog.Load()
	if last != 0 && now-last < int64(wrongPeerLogInterval) || !s.lastLog.CompareAndSwap(last, now) {
		return
	}
	s.log.Warn("datagrams from an outer address that is no tunnel's peer are dropped (counted as wrong_peer of the socket)",
		"local", s.LocalAddr(), "from", src, "dropped_so_far", s.stats.wrongPeer.Load(),
		"hint", "add a tunnel with that remote, or check the remote and local of the peer's configuration")
}

// peerTable maps outer sources to tunnels.
type peerTable struct {
	exact map[netip.AddrPort]*sharedPeer
	// any holds the tunnels that take every port of their peer's
	// address (anySourcePort); ports counts the exact ones per address,
	// so that Join can refuse an overlap.
	any   map[netip.Addr]*sharedPeer
	ports map[netip.Addr]int
	// roam takes what no other tunnel does.
	roam *sharedPeer
	n    int
}

func (t *peerTable) lookup(src netip.AddrPort) *sharedPeer {
	if p := t.exact[src]; p != nil {
		return p
	}
	if p := t.any[src.Addr()]; p != nil {
		return p
	}
	return t.roam
}

func (t *peerTable) init() {
	t.exact, t.any, t.ports = map[netip.AddrPort]*sharedPeer{}, map[netip.Addr]*sharedPeer{}, map[netip.Addr]int{}
}

func (t *peerTable) add(p *sharedPeer) {
	if p.anySourcePort {
		t.any[p.remote.Addr()] = p
	} else {
		t.exact[p.remote] = p
		t.ports[p.remote.Addr()]++
	}
	if p.roaming {
		t.roam = p
	}
	t.n++
}

func (t *peerTable) remove(p *sharedPeer) {
	switch {
	case p.anySourcePort && t.any[p.remote.Addr()] == p:
		delete(t.any, p.remote.Addr())
	case !p.anySourcePort && t.exact[p.remote] == p:
		delete(t.exact, p.remote)
		if t.ports[p.remote.Addr()]--; t.ports[p.remote.Addr()] <= 0 {
			delete(t.ports, p.remote.Addr())
		}
	default:
		return // not in the table: left already
	}
	if t.roam == p {
		t.roam = nil
	}
	t.n--
}

// sharedPeer is the Transport of one tunnel on a Shared.
type sharedPeer struct {
	s                      *Shared
	remote                 netip.AddrPort
	anySourcePort, roaming bool
	ep                     atomic.Pointer[Endpoint]
	closed                 atomic.Bool
	frag                   bool // asked for outer fragmentation; guarded by s.mu
}

var (
	_ Transport       = (*sharedPeer)(nil)
	_ Offloader       = (*sharedPeer)(nil)
	_ PathMTUer       = (*sharedPeer)(nil)
	_ fragmentAllower = (*sharedPeer)(nil)
)

// bind makes e the endpoint that p's datagrams go to.
func (p *sharedPeer) bind(e *Endpoint) error {
	if !p.ep.CompareAndSwap(nil, e) {
		return errors.New("endpoint: a joined transport serves one endpoint; Join again for another")
	}
	return nil
}

// deliver hands messages i to j-1 of l to p's endpoint.
func (p *sharedPeer) deliver(l *rxLoop, i, j int) {
	e := p.ep.Load()
	if e == nil {
		p.s.stats.wrongPeer.Add(uint64(j - i))
		return
	}
	d, ok := e.enter(j - i)
	if !ok {
		return
	}
	defer e.wg.Done()
	e.handle(l, i, j, d)
}

func (p *sharedPeer) Framing() Framing          { return p.s.framing }
func (p *sharedPeer) LocalAddr() netip.AddrPort { return p.s.LocalAddr() }

// Receivers implements Transport: none, the Shared reads.
func (p *sharedPeer) Receivers() []Receiver { return nil }

// WriteBatch implements Transport.WriteBatch on the shared sockets.
func (p *sharedPeer) WriteBatch(msgs []Message) (int, error) {
	if p.closed.Load() {
		return 0, ErrClosed
	}
	return p.s.tr.WriteBatch(msgs)
}

// Close implements Transport.Close: the tunnel leaves the Shared.
func (p *sharedPeer) Close() error {
	if !p.closed.Swap(true) {
		p.s.leave(p)
	}
	return nil
}

// Offloads implements Offloader: the shared sockets'.
func (p *sharedPeer) Offloads() Offloads {
	if o, ok := p.s.tr.(Offloader); ok {
		return o.Offloads()
	}
	return Offloads{}
}

// PathMTU implements PathMTUer through the shared sockets.
func (p *sharedPeer) PathMTU(dst netip.Addr) (int, error) {
	if pm, ok := p.s.tr.(PathMTUer); ok {
		return pm.PathMTU(dst)
	}
	return 0, errors.New("endpoint: the shared transport cannot tell the path MTU")
}

// allowFragmentation lets the shared socket fragment outer packets while
// any of its tunnels asks for it. For a UDP socket that is a setting of
// the socket: the other tunnels' oversize datagrams are then fragmented
// too rather than refused, and they learn no lower path MTU meanwhile.
func (p *sharedPeer) allowFragmentation(on bool) error {
	s := p.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if on == p.frag || p.closed.Load() {
		return nil
	}
	p.frag = on
	d := 1
	if !on {
		d = -1
	}
	return s.setFragmentation(d)
}
