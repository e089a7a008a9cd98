package stack

import (
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
// metric 0.
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
}

// AddRoute adds r to the route table. It fails if r's prefix is invalid or
// has host bits set, if r names no tunnel or link of the stack, or if the
// table has r already. Safe while traffic flows: packets are routed by the
// table before or after the change, never by a partial one. Connected
// endpoints (TCP connections, dialled UDP sockets) keep the route they
// found when they connected.
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
	if slices.ContainsFunc(s.routes, func(e route) bool { return e.Route == r }) {
		return fmt.Errorf("stack: add route %v: %w", r, ErrRouteExists)
	}
	s.routes = append(s.routes, route{Route: r, nic: nic})
	s.syncRoutesLocked()
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
	i := slices.IndexFunc(s.routes, func(e route) bool { return e.Route == r })
	if i < 0 {
		return fmt.Errorf("stack: remove route %v: %w", r, ErrRouteNotFound)
	}
	s.routes = slices.Delete(s.routes, i, i+1)
	s.syncRoutesLocked()
	return nil
}

// Routes returns the route table in the order routes are matched: longest
// prefix first, then lowest metric. Routes added to the gVisor stack
// directly are not included.
func (s *Stack) Routes() []Route {
	s.routeMu.Lock()
	defer s.routeMu.Unlock()
	out := make([]Route, 0, len(s.routes))
	for _, e := range sortedRoutes(s.routes) {
		out = append(out, e.Route)
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
	r := route{Route: Route{Prefix: p.Masked(), Tunnel: name}, nic: nic}
	s.routeMu.Lock()
	defer s.routeMu.Unlock()
	if !slices.Contains(s.routes, r) {
		s.routes = append(s.routes, r)
		if !s.routesHeld {
			s.syncRoutesLocked()
		}
	}
}

// holdRoutes makes addSystemRoute collect routes without handing gVisor
// the table each time, which costs O(routes) per route: New adds the
// routes of all its tunnels (thousands, on a hub) and then calls
// releaseRoutes once.
func (s *Stack) holdRoutes() {
	s.routeMu.Lock()
	s.routesHeld = true
	s.routeMu.Unlock()
}

// releaseRoutes ends holdRoutes and hands gVisor the table.
func (s *Stack) releaseRoutes() {
	s.routeMu.Lock()
	defer s.routeMu.Unlock()
	if s.routesHeld {
		s.routesHeld = false
		s.syncRoutesLocked()
	}
}

// sortedRoutes returns rs in matching order: longest prefix first, then
// lowest metric, then insertion order.
func sortedRoutes(rs []route) []route {
	out := slices.Clone(rs)
	slices.SortStableFunc(out, func(a, b route) int {
		if a.Prefix.Bits() != b.Prefix.Bits() {
			return b.Prefix.Bits() - a.Prefix.Bits()
		}
		return a.Metric - b.Metric
	})
	return out
}

// syncRoutesLocked replaces gVisor's route table with the stack's, sorted.
// gVisor matches its table front to back, and its AddRoute inserts by
// prefix length only, after routes of equal length, so the stack owns the
// order and hands gVisor the whole table. Routes that someone added through
// GVisor() are kept, after the stack's routes of the same length.
//
// +checklocks:s.routeMu
func (s *Stack) syncRoutesLocked() {
	// What gVisor has beyond what we installed last time is foreign.
	ours := map[tcpip.Route]int{}
	for _, r := range s.installed {
		ours[r]++
	}
	var foreign []tcpip.Route
	for _, r := range s.gv.GetRouteTable() {
		r.RouteEntry = tcpip.RouteEntry{}
		if ours[r] > 0 {
			ours[r]--
			continue
		}
		foreign = append(foreign, r)
	}
	table := make([]tcpip.Route, 0, len(s.routes)+len(foreign))
	for _, e := range sortedRoutes(s.routes) {
		table = append(table, tcpip.Route{Destination: subnet(e.Prefix), NIC: e.nic})
	}
	s.installed = slices.Clone(table)
	// SetRouteTable inserts each route after those of the same or a
	// longer prefix, so sorted input keeps its order, and foreign routes
	// go after ours of the same length.
	s.gv.SetRouteTable(append(table, foreign...))
}
