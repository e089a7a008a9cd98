package daemon

import (
	"log/slog"
	"sync"
	"time"

	"github.com/ipipstack/ipipstack/endpoint/encap"
	"github.com/ipipstack/ipipstack/stack"
)

// How the daemon reports dropped packets: every dropCheckInterval it
// looks at each tunnel; the first drop of each reason is a warning with
// the addresses involved (endpoint.Endpoint.FirstDrops), and what was
// dropped since is summed up in one warning per tunnel at most every
// dropSummaryInterval. Never a line per packet.
const (
	dropCheckInterval   = 5 * time.Second
	dropSummaryInterval = time.Minute
)

// dropHints say what a drop reason usually means for the configuration.
var dropHints = map[encap.Reason]string{
	encap.SpoofedSource: "the inner source is not one this tunnel accepts from its peer (addresses, routes, allowed_sources): the inner addresses in the two peers' files probably do not match",
	encap.WrongPeer:     "a datagram came from an outer address other than this tunnel's remote: check remote here and local in the peer's file, or set roaming = true for a peer that moves (on a socket that tunnels share, such datagrams count once under the socket's wrong_peer in /status \"sockets\", not here)",
	encap.Martian:       "the inner packet carries an address that never appears on a network (loopback, unspecified, multicast source)",
	encap.Recursion:     "the inner packet would go back into a tunnel: a route sends the tunnel's own outer traffic into it",
	encap.BadChecksum:   "the inner packet's checksum is wrong: something on the path corrupts datagrams",
}

// dropWatch logs the drops of the stack's tunnels; see dropCheckInterval.
type dropWatch struct {
	st   *stack.Stack
	log  *slog.Logger
	stop chan struct{}
	done chan struct{}

	mu sync.Mutex
	// tunnels is guarded by mu.
	tunnels map[string]*tunnelDrops
}

// tunnelDrops is what was reported of one tunnel.
type tunnelDrops struct {
	logged      [encap.NumReasons]bool   // first drop of the reason logged
	reported    [encap.NumReasons]uint64 // counts at the last warning
	lastSummary time.Time                // of the last warning; zero before the first
}

// startDropWatch starts the watch of st's drops; stop it with close.
func startDropWatch(st *stack.Stack, log *slog.Logger) *dropWatch {
	w := &dropWatch{st: st, log: log, stop: make(chan struct{}), done: make(chan struct{}),
		tunnels: make(map[string]*tunnelDrops)}
	go func() {
		defer close(w.done)
		tick := time.NewTicker(dropCheckInterval)
		defer tick.Stop()
		for {
			select {
			case now := <-tick.C:
				w.check(now)
			case <-w.stop:
				return
			}
		}
	}()
	return w
}

// close stops the watch and waits for it; a nil watch is ignored.
func (w *dropWatch) close() {
	if w == nil {
		return
	}
	close(w.stop)
	<-w.done
}

// check logs the first drops not yet logged and, per tunnel, a summary of
// the drops since the last warning if it was at least
// dropSummaryInterval ago.
func (w *dropWatch) check(now time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, ts := range w.st.Stats() {
		td := w.tunnels[ts.Name]
		if td == nil {
			td = &tunnelDrops{}
			w.tunnels[ts.Name] = td
		}
		if ep := w.st.Endpoint(ts.Name); ep != nil {
			for _, s := range ep.FirstDrops() {
				if td.logged[s.Reason] {
					continue
				}
				td.logged[s.Reason] = true
				args := []any{"tunnel", ts.Name, "reason", s.Reason.String(), "at", s.Time.Format(time.RFC3339Nano)}
				if s.Outer.IsValid() {
					args = append(args, "outer_source", s.Outer.String())
				}
				if s.InnerSrc.IsValid() {
					args = append(args, "inner_source", s.InnerSrc.String(), "inner_destination", s.InnerDst.String())
				}
				args = append(args, "count", ts.Drops[s.Reason])
				if h := dropHints[s.Reason]; h != "" {
					args = append(args, "hint", h)
				}
				w.log.Warn("tunnel dropping packets; further drops are summed up at most once a minute", args...)
				td.reported[s.Reason] = ts.Drops[s.Reason]
				if td.lastSummary.IsZero() {
					td.lastSummary = now
				}
			}
		}
		if td.lastSummary.IsZero() || now.Sub(td.lastSummary) < dropSummaryInterval {
			continue
		}
		args := []any{"tunnel", ts.Name}
		var total uint64
		for r := 1; r < encap.NumReasons; r++ {
			if n := ts.Drops[r] - td.reported[r]; n > 0 {
				args = append(args, encap.Reason(r).String(), n)
				total += n
			}
		}
		if total == 0 {
			continue
		}
		args = append(args, "since", td.lastSummary.Format(time.RFC3339), "total", total)
		w.log.Warn("tunnel dropped packets", args...)
		td.reported = ts.Drops
		td.lastSummary = now
	}
}
