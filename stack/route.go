package stack

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"gvisor.dev/gvisor/pkg/tcpip"
)

// Route sends the inner destinations in Prefix through the named tunnel (or
// a link added with AddLink).
//
// The longest prefix that contains a destination wins; among routes with
// the same prefix, the lowest Metric wins, and among equal metrics the
// route added first. Routes the stack makes itself (a tunnel's on-link
// prefixes, Tunnel.Routes, Tunnel.DefaultRoute, AddLink's prefixes) have
// metric 0. Only the best route of a prefix is used: if its tunnel cannot
// carry a packet (it has no address of the packet's family), the route of
// a shorter prefix is tried next, not the same prefix's next best.
type Route struct {
	// Prefix is the destination prefix, with no host bits set
	// (10.1.0.0/16, not 10.1.2.3/16); 0.0.0.0/0 and ::/0 are default
	// routes.
	Prefix netip.Prefix
	// Tunnel names the tunnel or link the route points at.
	Tunnel string
	// Metric orders routes with the same prefix: lower wins.
	Metric int
}

func (r Route) String() string {
	return fmt.Sprintf("%v via %q metric %d", r.Prefix, r.Tunnel, r.Metric)
}

// Route errors that callers can test for with errors.Is.
var (
	// ErrUnknownTunnel: the route names no tunnel or link of the stack.
	ErrUnknownTunnel = errors.New("no such tunnel")
	// ErrRouteExists: AddRoute was given a route the table already has.
	ErrRouteExists = errors.New("route exists")
	// ErrRouteNotFound: RemoveRoute was given a route the table lacks.
	ErrRouteNotFound = errors.New("no such route")
)

// route is one entry of the stack's route table.
type route struct {
	Route
	nic tcpip.NICID
	seq uint64 // when it was added: the tie-break among equal metrics
}

// routeTable is the stack's route table, kept by prefix so that a change
// costs the same whatever the table's size.
//
// gVisor matches its own table (a list ordered by prefix length, longest
// first) front to back on every lookup, and inserts a route with a scan
// past all routes of the same or a longer prefix. Handing it the whole
// sorted table on each change (SetRouteTable) cost O(n²) per change, and
// minutes for 10,000 routes added one by one. The stack instead installs
// one gVisor route per prefix, through the prefix's best route (lowest
// metric, then first added), and changes only that prefix's gVisor route
// when its best route changes: one gVisor insertion or removal, a scan
// of gVisor's list, and allocations that do not grow with the table.
// Routes of the same length but different prefixes never overlap, so
// their order in gVisor's list does not matter.
//
// gVisor still finds a route by scanning its list, so a lookup costs in
// proportion to the number of distinct prefixes in front of the match
// (bench/RESULTS.md, "Routes at scale and idle tunnels").
type routeTable struct {
	// byPrefix holds the routes of each prefix, best first: lowest
	// metric, then lowest seq. No slice is empty.
	byPrefix map[netip.Prefix][]route
	n        int
	seq      uint64
}

// insertLocked adds r through nic to the table and gVisor's. It reports
// false, changing nothing, if the table has r already.
//
// +checklocks:s.routeMu
func (s *Stack) insertRouteLocked(r Route, nic tcpip.NICID) bool {
	t := &s.routes
	g := t.byPrefix[r.Prefix]
	if slices.ContainsFunc(g, func(e route) bool { return e.Route == r }) {
		return false
	}
	if t.byPrefix == nil {
		t.byPrefix = map[netip.Prefix][]route{}
	}
	t.seq++
	// After every route of a lower or equal metric: those were added
	// earlier.
	i := len(g)
	for i > 0 && g[i-1].Metric > r.Metric {
		i--
	}
	before := bestNIC(g)
	g = slices.Insert(g, i, route{Route: r, nic: nic, seq: t.seq})
	t.byPrefix[r.Prefix] = g
	t.n++
	s.installLocked(r.Prefix, before, bestNIC(g))
	return true
}

// deleteRoutesLocked removes the routes of prefix p for which drop
// reports true, and returns how many it removed.
//
// +checklocks:s.routeMu
func (s *Stack) deleteRoutesLocked(p netip.Prefix, drop func(route) bool) int {
	t := &s.routes
	g := t.byPrefix[p]
	before := bestNIC(g)
	n := len(g)
	g = slices.DeleteFunc(g, drop)
	if len(g) == n {
		return 0
	}
	if len(g) == 0 {
		delete(t.byPrefix, p)
	} else {
		t.byPrefix[p] = g
	}
	t.n -= n - len(g)
	s.installLocked(p, before, bestNIC(g))
	return n - len(g)
}

// bestNIC is the NIC of the first route of g, the prefix's best, or 0
// if g is empty (gVisor numbers NICs from 1).
func bestNIC(g []route) tcpip.NICID {
	if len(g) == 0 {
		return 0
	}
	return g[0].nic
}

// installLocked moves gVisor's route for p from NIC from to NIC to (0:
// no route). The new route goes in first: gVisor puts it after the old
// one, of the same prefix, so lookups take the old route until it goes,
// then the new one, never neither.
//
// +checklocks:s.routeMu
func (s *Stack) installLocked(p netip.Prefix, from, to tcpip.NICID) {
	if from == to {
		return
	}
	dst := subnet(p)
	if to != 0 {
		s.gv.AddRoute(tcpip.Route{Destination: dst, NIC: to})
	}
	if from != 0 {
		old := tcpip.Route{Destination: dst, NIC: from}
		done := false
		s.gv.RemoveRoutes(func(r tcpip.Route) bool {
			r.RouteEntry = tcpip.RouteEntry{} // the list's links
			if done || r != old {
				return false
			}
			done = true // only ours: an identical foreign route stays
			return true
		})
	}
}

// AddRoute adds r to the route table. It fails if r's prefix is invalid or
// has host bits set, if r names no tunnel or link of the stack, or if the
// table has r already. Safe while traffic flows: packets are routed by the
// table before or after the change, never by a partial one. Connected
// endpoints (TCP connections, dialled UDP sockets) keep the route they
// found when they connected. Its cost does not grow with the table's size
// beyond one scan of gVisor's route list.
func (s *Stack) AddRoute(r Route) error {
	if err := checkPrefix(r.Prefix); err != nil {
		return fmt.Errorf("stack: add route %v: %w", r, err)
	}
	nic, ok := s.nicByName(r.Tunnel)
	if !ok {
		return fmt.Errorf("stack: add route %v: %w", r, ErrUnknownTunnel)
	}
	s.routeMu.Lock()
	defer s.routeMu.Unlock()
	if !s.insertRouteLocked(r, nic) {
		return fmt.Errorf("stack: add route %v: %w", r, ErrRouteExists)
	}
	return nil
}

// RemoveRoute removes the route equal to r (prefix, tunnel and metric)
// from the table, whether AddRoute or the configuration added it. Like
// AddRoute, it is safe while traffic flows.
func (s *Stack) RemoveRoute(r Route) error {
	if err := checkPrefix(r.Prefix); err != nil {
		return fmt.Errorf("stack: remove route %v: %w", r, err)
	}
	if _, ok := s.nicByName(r.Tunnel); !ok {
		return fmt.Errorf("stack: remove route %v: %w", r, ErrUnknownTunnel)
	}
	s.routeMu.Lock()
	defer s.routeMu.Unlock()
	if s.deleteRoutesLocked(r.Prefix, func(e route) bool { return e.Route == r }) == 0 {
		return fmt.Errorf("stack: remove route %v: %w", r, ErrRouteNotFound)
	}
	return nil
}

// Routes returns the route table in the order routes are matched: longest
// prefix first, then lowest metric. Routes added to the gVisor stack
// directly are not included.
func (s *Stack) Routes() []Route {
	s.routeMu.Lock()
	defer s.routeMu.Unlock()
	all := make([]route, 0, s.routes.n)
	for _, g := range s.routes.byPrefix {
		all = append(all, g...)
	}
	slices.SortFunc(all, func(a, b route) int {
		if a.Prefix.Bits() != b.Prefix.Bits() {
			return b.Prefix.Bits() - a.Prefix.Bits()
		}
		if a.Metric != b.Metric {
			return cmp.Compare(a.Metric, b.Metric)
		}
		return cmp.Compare(a.seq, b.seq)
	})
	out := make([]Route, len(all))
	for i, e := range all {
		out[i] = e.Route
	}
	return out
}

func checkPrefix(p netip.Prefix) error {
	switch {
	case !p.IsValid():
		return errors.New("invalid prefix")
	case p.Addr().Is4In6() || p.Addr().Zone() != "":
		return errors.New("prefix is not a plain IPv4 or IPv6 prefix")
	case p != p.Masked():
		return fmt.Errorf("prefix has host bits set (want %v)", p.Masked())
	}
	return nil
}

// nicByName returns the NIC of the named tunnel or link.
func (s *Stack) nicByName(name string) (tcpip.NICID, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, t := range s.tunnels {
		if t.name == name {
			return t.nic, true
		}
	}
	nic, ok := s.linkNICs[name]
	return nic, ok
}

// addSystemRoute adds a route that the stack makes itself (an on-link
// prefix, a tunnel's routes, a default route), with metric 0. A duplicate
// is ignored.
func (s *Stack) addSystemRoute(name string, nic tcpip.NICID, p netip.Prefix) {
	s.routeMu.Lock()
	defer s.routeMu.Unlock()
	s.insertRouteLocked(Route{Prefix: p.Masked(), Tunnel: name}, nic)
}
