package stack

import (
	"fmt"
	"slices"

	"gvisor.dev/gvisor/pkg/tcpip"
)

// AddTunnel adds a tunnel to a running stack, as New adds those of
// Config.Tunnels: it opens the transport (or takes t.Conn), creates the
// NIC, assigns the addresses and adds the tunnel's routes (its on-link
// prefixes, Routes and DefaultRoute) to the route table. It fails with
// ErrLinkExists if a tunnel or link already has t.Name and with ErrClosed
// once the stack is closed. The stack owns t.Conn from the call on, even
// if AddTunnel fails; on error nothing of the tunnel is left.
//
// It is safe while traffic flows on the other tunnels: their packets are
// routed by the table before or after the new routes are in. Tunnels
// added and removed at run time take the stack's forwarding setting
// (Config.Forwarding) like the others. AddTunnel and RemoveTunnel calls
// are serialized with each other.
func (s *Stack) AddTunnel(t Tunnel) error {
	s.tunnelChange.Lock()
	defer s.tunnelChange.Unlock()
	if t.Name == "" {
		return addTunnelFailed(t, fmt.Errorf("no name"))
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return addTunnelFailed(t, ErrClosed)
	}
	if s.nameTakenLocked(t.Name) {
		s.mu.Unlock()
		return addTunnelFailed(t, ErrLinkExists)
	}
	s.nextNIC++
	nic := s.nextNIC
	s.mu.Unlock()
	if err := s.addTunnel(&t, nic); err != nil {
		// addTunnel closed the transport, unless it had made the NIC
		// already: then the tunnel is registered and goes the usual way.
		s.removeTunnel(t.Name)
		return err
	}
	return nil
}

// addTunnelFailed closes t's Conn, which AddTunnel owns once called, and
// wraps err. It is a function rather than a closure in AddTunnel so that
// checklocks does not take it to return with tunnelChange held.
func addTunnelFailed(t Tunnel, err error) error {
	if t.Conn != nil {
		t.Conn.Close()
	}
	return fmt.Errorf("stack: add tunnel %q: %w", t.Name, err)
}

// RemoveTunnel removes the named tunnel, whether New or AddTunnel added
// it: its routes leave the route table (those the tunnel made and those
// AddRoute added through it), its forwarding state goes, its transport is
// closed, which stops its goroutines, and its NIC is removed with the
// NIC's addresses. Its counters leave Stats. The name is free for
// AddTunnel (or AddLink) again. It fails with ErrUnknownTunnel if no
// tunnel has that name (a link added with AddLink is removed with
// RemoveLink) and with ErrClosed once the stack is closed.
//
// It is safe while traffic flows on the other tunnels. Connections and
// sockets that used the tunnel, or were bound to its addresses, fail
// their next sends or time out; the caller drains them first if it
// wants them to finish.
func (s *Stack) RemoveTunnel(name string) error {
	s.tunnelChange.Lock()
	defer s.tunnelChange.Unlock()
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return fmt.Errorf("stack: remove tunnel %q: %w", name, ErrClosed)
	}
	if !s.removeTunnel(name) {
		return fmt.Errorf("stack: remove tunnel %q: %w", name, ErrUnknownTunnel)
	}
	return nil
}

// removeTunnel takes the named tunnel out of the stack and reports
// whether there was one.
func (s *Stack) removeTunnel(name string) bool {
	s.mu.Lock()
	i := slices.IndexFunc(s.tunnels, func(t *tunnel) bool { return t.name == name })
	if i < 0 {
		s.mu.Unlock()
		return false
	}
	t := s.tunnels[i]
	s.tunnels = slices.Delete(slices.Clone(s.tunnels), i, i+1)
	s.mu.Unlock()

	s.removeRoutesOf(t.nic)
	if t.link != nil {
		s.unwrapForwarding(t.link)
	}
	// The endpoint first, as Close does: closing its transport unblocks a
	// writer the NIC's queue waits for, and its onClose action removes
	// the NIC; then its receive goroutines have returned.
	t.ep.Close()
	if t.shared != nil {
		s.leaveShared(t.shared, name) // shared.go
	}
	if terr := s.gv.RemoveNIC(t.nic); terr != nil {
		if _, ok := terr.(*tcpip.ErrUnknownNICID); !ok {
			s.log.Warn("tunnel removed, but gVisor kept its NIC", "tunnel", name, "nic", t.nic, "error", terr.String())
		}
	}
	// A route that AddRoute added while the name still resolved.
	s.removeRoutesOf(t.nic)
	s.log.Info("tunnel removed", "tunnel", name)
	return true
}
