package stack

import (
	"errors"
	"fmt"
	"slices"

	"gvisor.dev/gvisor/pkg/tcpip"
	gvstack "gvisor.dev/gvisor/pkg/tcpip/stack"
)

// ErrLinkExists: AddLink was given the name of a tunnel or link the stack
// has already.
var ErrLinkExists = errors.New("a tunnel or link of that name exists")

// nameTakenLocked reports whether a tunnel or link is called name.
//
// +checklocks:s.mu
func (s *Stack) nameTakenLocked(name string) bool {
	if _, ok := s.linkNICs[name]; ok {
		return true
	}
	return slices.ContainsFunc(s.tunnels, func(t *tunnel) bool { return t.name == name })
}

// RemoveLink removes the link that AddLink added as name: its routes from
// the stack's route table (those AddLink made and those AddRoute added),
// its forwarding state, then its NIC with the NIC's addresses; the link
// endpoint is closed. The name is free for AddLink again. It fails with
// ErrUnknownTunnel if no link has that name (tunnels are removed with
// RemoveTunnel)
// and with ErrClosed once the stack is closed.
//
// It is safe while traffic flows: packets are routed by the table before
// or after the routes go, and gVisor stops the NIC's traffic before it
// closes the link endpoint. Connected endpoints that found a route through
// the link fail their next sends. A link endpoint whose own goroutines may
// be waiting for the stack (a TUN device's reader delivering a packet)
// should be stopped first, outside the stack's locks, as service/tun
// does: gVisor removes the NIC holding its stack lock.
func (s *Stack) RemoveLink(name string) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return fmt.Errorf("stack: remove link %q: %w", name, ErrClosed)
	}
	nic, ok := s.linkNICs[name]
	if !ok {
		s.mu.Unlock()
		return fmt.Errorf("stack: remove link %q: %w", name, ErrUnknownTunnel)
	}
	link := s.linkEPs[name]
	delete(s.linkNICs, name)
	delete(s.linkEPs, name)
	raw := unwrapLink(link)
	s.links = slices.DeleteFunc(s.links, func(l gvstack.LinkEndpoint) bool { return l == raw })
	s.mu.Unlock()

	s.removeRoutesOf(nic)
	s.unwrapForwarding(link)
	if terr := s.gv.RemoveNIC(nic); terr != nil {
		if _, ok := terr.(*tcpip.ErrUnknownNICID); !ok {
			return fmt.Errorf("stack: remove link %q: remove NIC: %s", name, terr)
		}
		link.Close() // AddLink failed before the NIC was made
	}
	// A route that AddRoute added while the name still resolved.
	s.removeRoutesOf(nic)
	return nil
}

// removeRoutesOf removes the routes through nic from the route table.
// NIC numbers are never reused, so a later link cannot lose its routes.
func (s *Stack) removeRoutesOf(nic tcpip.NICID) {
	s.routeMu.Lock()
	defer s.routeMu.Unlock()
	for p := range s.routes.byPrefix {
		s.deleteRoutesLocked(p, func(r route) bool { return r.nic == nic })
	}
}

// unwrapLink returns the link endpoint that wrapForwarding wrapped into
// link, or link itself.
func unwrapLink(link gvstack.LinkEndpoint) gvstack.LinkEndpoint {
	if l, ok := link.(*forwardLink); ok {
		return l.Endpoint.Child()
	}
	return link
}

// unwrapForwarding drops link, if it is a forwardLink, from the links
// whose MTU the forwarding workarounds consider.
func (s *Stack) unwrapForwarding(link gvstack.LinkEndpoint) {
	l, ok := link.(*forwardLink)
	if !ok {
		return
	}
	s.fwd.mu.Lock()
	defer s.fwd.mu.Unlock()
	old := s.fwd.links.Load()
	if old == nil {
		return
	}
	links := slices.DeleteFunc(slices.Clone(*old), func(x *forwardLink) bool { return x == l })
	s.fwd.links.Store(&links)
}
