package daemon

import (
	"context"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/ipipstack/ipipstack/config"
)

// Peers are watched: a tunnel with a keepalive sends an ICMP (ICMPv6) echo
// request to its peer's inner address (config.Tunnel.PeerInner) every
// interval, which any IP peer answers without configuration and which
// keeps NAT and firewall state on the outer path alive. A peerWatch per
// tunnel keeps the peer's state:
//
//   - up: a probe was answered, or inner packets were accepted from the
//     peer (the tunnel's RxPackets moved), within the last
//     peerDeadIntervals keepalive intervals (DefaultPeerIdle for a tunnel
//     without keepalive);
//   - down: a tunnel with a keepalive has heard nothing for that long;
//   - unknown: a tunnel without keepalive that has heard nothing for
//     DefaultPeerIdle, or one with a keepalive that has not yet run that
//     long.
//
// Every change is logged (info for up, warn for down). /readyz is ready
// when every tunnel with a keepalive is up and every listener is open.

// PeerState is the liveness of a tunnel's peer.
type PeerState string

// Peer states.
const (
	PeerUnknown PeerState = "unknown"
	PeerUp      PeerState = "up"
	PeerDown    PeerState = "down"
)

// peerDeadIntervals is how many keepalive intervals without an answer or
// accepted traffic mark a peer down.
const peerDeadIntervals = 3

// DefaultPeerIdle is how long after the last accepted packet the peer of
// a tunnel without keepalive goes from up back to unknown.
const DefaultPeerIdle = 3 * time.Minute

// maxProbeWait bounds how long one keepalive probe waits for its answer
// (the stack's Ping repeats the request every second meanwhile).
const maxProbeWait = 3 * time.Second

// peerWatch is the watched state of one tunnel's peer.
type peerWatch struct {
	tunnel   string
	addr     netip.Addr    // probed; invalid if interval is 0
	interval time.Duration // keepalive; 0: none
	started  time.Time
	stop     context.CancelFunc // stops the prober; nil without keepalive
	done     chan struct{}      // closed when the prober returned

	// mu guards the fields below.
	mu          sync.Mutex
	state       PeerState
	since       time.Time // of state
	rtt         time.Duration
	lastReply   time.Time
	lastTraffic time.Time
	lastRx      uint64
	probes      uint64
	replies     uint64
}

// PeerStatus is the watched state of a tunnel's peer, in TunnelStatus.
type PeerStatus struct {
	State PeerState `json:"state"`
	// Since is when the state last changed.
	Since time.Time `json:"since"`
	// Address is the inner address keepalive probes, absent without
	// keepalive; Keepalive is the interval in seconds (0: off).
	Address   string  `json:"address,omitempty"`
	Keepalive float64 `json:"keepalive_seconds"`
	// RTT is the round-trip time of the last answered probe in seconds;
	// absent until one is answered.
	RTT *float64 `json:"rtt_seconds,omitempty"`
	// LastReply is when a probe was last answered.
	LastReply *time.Time `json:"last_reply,omitempty"`
	// Probes and Replies count the probes sent and answered.
	Probes  uint64 `json:"probes"`
	Replies uint64 `json:"replies"`
}

// peers is the daemon's set of peerWatches, one per running tunnel.
type peers struct {
	mu sync.Mutex
	// +checklocks:mu
	byName map[string]*peerWatch
	// +checklocks:mu
	evalStop context.CancelFunc
	evalDone chan struct{}
}

// watchPeer starts watching the peer of tunnel t, which must be running
// in the daemon's stack.
func (d *Daemon) watchPeer(t *config.Tunnel) {
	now := time.Now()
	w := &peerWatch{tunnel: t.Name, started: now, state: PeerUnknown, since: now}
	if t.Keepalive > 0 {
		w.addr, w.interval = t.PeerInner(), t.Keepalive
	}
	d.peers.mu.Lock()
	if d.peers.byName == nil {
		d.peers.byName = map[string]*peerWatch{}
	}
	d.peers.byName[t.Name] = w
	if d.peers.evalStop == nil {
		ctx, cancel := context.WithCancel(context.Background())
		d.peers.evalStop, d.peers.evalDone = cancel, make(chan struct{})
		go d.evaluatePeers(ctx, d.peers.evalDone)
	}
	d.peers.mu.Unlock()
	if w.interval > 0 {
		ctx, cancel := context.WithCancel(context.Background())
		w.stop, w.done = cancel, make(chan struct{})
		go d.probe(ctx, w)
		d.log.Info("keepalive on", "tunnel", t.Name, "peer", w.addr.String(), "interval", w.interval.String())
	}
}

// unwatchPeer stops watching the peer of the named tunnel and waits for
// its prober.
func (d *Daemon) unwatchPeer(name string) {
	d.peers.mu.Lock()
	w := d.peers.byName[name]
	delete(d.peers.byName, name)
	d.peers.mu.Unlock()
	if w != nil && w.stop != nil {
		w.stop()
		<-w.done
	}
}

// stopPeers stops every prober and the evaluator.
func (d *Daemon) stopPeers() {
	d.peers.mu.Lock()
	names := make([]string, 0, len(d.peers.byName))
	for n := range d.peers.byName {
		names = append(names, n)
	}
	stop, done := d.peers.evalStop, d.peers.evalDone
	d.peers.evalStop = nil
	d.peers.mu.Unlock()
	for _, n := range names {
		d.unwatchPeer(n)
	}
	if stop != nil {
		stop()
		<-done
	}
}

// probe sends w's echo requests until ctx is done.
func (d *Daemon) probe(ctx context.Context, w *peerWatch) {
	defer close(w.done)
	tick := time.NewTicker(w.interval)
	defer tick.Stop()
	for {
		pctx, cancel := context.WithTimeout(ctx, min(w.interval, maxProbeWait))
		rtt, err := d.st.Ping(pctx, w.addr)
		cancel()
		now := time.Now()
		w.mu.Lock()
		w.probes++
		if err == nil {
			w.replies++
			w.rtt, w.lastReply = rtt, now
		}
		w.mu.Unlock()
		if err == nil {
			d.evaluatePeer(w, now, d.rxPackets(w.tunnel))
		} else if ctx.Err() == nil {
			d.log.Debug("keepalive probe unanswered", "tunnel", w.tunnel, "peer", w.addr.String(), "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// evaluatePeers re-evaluates every peer each second, so that a peer goes
// down (and is logged) when it stops answering.
func (d *Daemon) evaluatePeers(ctx context.Context, done chan struct{}) {
	defer close(done)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		rx := map[string]uint64{}
		for _, ts := range d.st.Stats() {
			rx[ts.Name] = ts.RxPackets
		}
		now := time.Now()
		d.peers.mu.Lock()
		ws := make([]*peerWatch, 0, len(d.peers.byName))
		for _, w := range d.peers.byName {
			ws = append(ws, w)
		}
		d.peers.mu.Unlock()
		for _, w := range ws {
			d.evaluatePeer(w, now, rx[w.tunnel])
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// rxPackets returns the named tunnel's RxPackets.
func (d *Daemon) rxPackets(name string) uint64 {
	if ep := d.st.Endpoint(name); ep != nil {
		return ep.Stats().RxPackets
	}
	return 0
}

// evaluatePeer updates w's state from the tunnel's received-packet count
// rx and logs a change.
func (d *Daemon) evaluatePeer(w *peerWatch, now time.Time, rx uint64) {
	w.mu.Lock()
	if rx != w.lastRx {
		w.lastRx, w.lastTraffic = rx, now
	}
	heard := w.lastReply
	if w.lastTraffic.After(heard) {
		heard = w.lastTraffic
	}
	window := DefaultPeerIdle
	if w.interval > 0 {
		window = peerDeadIntervals * w.interval
	}
	state := PeerUnknown
	switch {
	case !heard.IsZero() && now.Sub(heard) <= window:
		state = PeerUp
	case w.interval > 0 && now.Sub(w.started) >= window:
		state = PeerDown
	}
	old := w.state
	if state != old {
		w.state, w.since = state, now
	}
	rtt := w.rtt
	w.mu.Unlock()
	if state == old {
		return
	}
	args := []any{"tunnel", w.tunnel, "from", string(old), "to", string(state)}
	if w.interval > 0 {
		args = append(args, "peer", w.addr.String())
	}
	switch state {
	case PeerUp:
		if rtt > 0 {
			args = append(args, "rtt", rtt.String())
		}
		d.log.Info("peer up", args...)
	case PeerDown:
		args = append(args, "silent_for", window.String())
		d.log.Warn("peer down: no answer to keepalive and no traffic; check that the peer runs and that the outer path passes its datagrams", args...)
	default:
		d.log.Info("peer state unknown: no traffic lately and no keepalive", args...)
	}
}

// peerStatus returns the watched state of the named tunnel's peer.
func (d *Daemon) peerStatus(name string) *PeerStatus {
	d.peers.mu.Lock()
	w := d.peers.byName[name]
	d.peers.mu.Unlock()
	if w == nil {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	ps := &PeerStatus{State: w.state, Since: w.since, Keepalive: w.interval.Seconds(), Probes: w.probes, Replies: w.replies}
	if w.interval > 0 {
		ps.Address = w.addr.String()
	}
	if !w.lastReply.IsZero() {
		rtt, lr := w.rtt.Seconds(), w.lastReply
		ps.RTT, ps.LastReply = &rtt, &lr
	}
	return ps
}

// notReady returns why the daemon is not ready, or nil if it is: every
// tunnel with a keepalive has a live peer and every listener is open.
func notReady(st *Status) []string {
	var why []string
	if st.Draining {
		why = append(why, "draining: shutting down")
	}
	for _, t := range st.Tunnels {
		if t.PeerState != nil && t.PeerState.Keepalive > 0 && t.PeerState.State != PeerUp {
			why = append(why, "tunnel "+t.Name+": peer "+t.PeerState.Address+" is "+string(t.PeerState.State))
		}
	}
	return why
}

// serveHealthz answers 200 while the process serves.
func serveHealthz(w http.ResponseWriter, r *http.Request) {
	if !allowRead(w, r) {
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Write([]byte("ok\n"))
}

// serveReadyz answers 200 when the daemon is ready (see notReady), 503
// with the reasons otherwise.
func (d *Daemon) serveReadyz(w http.ResponseWriter, r *http.Request) {
	if !allowRead(w, r) {
		return
	}
	st := d.Status()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if why := notReady(&st); len(why) > 0 {
		w.WriteHeader(http.StatusServiceUnavailable)
		w.Write([]byte("not ready\n" + strings.Join(why, "\n") + "\n"))
		return
	}
	w.Write([]byte("ready\n"))
}

// collectPeers returns the metric families of the peers' states.
func collectPeers(st *Status) []*family {
	up := &family{name: "ipipstack_tunnel_up", typ: gauge,
		help: "1 if the tunnel's peer is up (answered a keepalive or sent accepted traffic lately), 0 if it is down or unknown."}
	state := &family{name: "ipipstack_tunnel_peer_state", typ: gauge,
		help: "The tunnel's peer state: 1 for the current of up, down and unknown, 0 for the others."}
	rtt := &family{name: "ipipstack_tunnel_rtt_seconds", typ: gauge,
		help: "Round-trip time of the last answered keepalive probe; absent until one is answered."}
	for _, t := range st.Tunnels {
		if t.PeerState == nil {
			continue
		}
		up.add(boolValue(t.PeerState.State == PeerUp), "tunnel", t.Name)
		for _, s := range []PeerState{PeerUp, PeerDown, PeerUnknown} {
			state.add(boolValue(t.PeerState.State == s), "tunnel", t.Name, "state", string(s))
		}
		if t.PeerState.RTT != nil {
			rtt.add(f64(*t.PeerState.RTT), "tunnel", t.Name)
		}
	}
	return []*family{up, state, rtt}
}
