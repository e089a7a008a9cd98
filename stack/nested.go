package stack

import (
	"fmt"
	"net/netip"

	"github.com/ipipstack/ipipstack/endpoint"
)

// TunnelTransport opens a UDP socket inside s at local (one of s's inner
// addresses and a port; port 0 picks one) and returns it as a FOU
// transport, so that a tunnel of another stack runs through s: give it to
// that stack as Tunnel.Conn, with Tunnel.Remote the peer's socket inside
// the stack it runs through. That stack then owns the transport.
//
// Each layer costs its overhead again (endpoint.Overhead: 28 bytes over
// inner IPv4, 48 over IPv6): set the nested tunnel's MTU to s's tunnel MTU
// minus that (1472 - 28 = 1444), or s fragments every full-size packet.
func (s *Stack) TunnelTransport(local netip.AddrPort) (endpoint.Transport, error) {
	network := "udp4"
	if local.Addr().Is6() && !local.Addr().Is4In6() {
		network = "udp6"
	}
	pc, err := s.ListenPacket(network, local.String())
	if err != nil {
		return nil, err
	}
	if local.Port() == 0 {
		local = netip.AddrPort{} // the port s picked, from pc
	}
	tr, err := endpoint.NewPacketConnTransport(pc, local)
	if err != nil {
		pc.Close()
		return nil, fmt.Errorf("stack: tunnel transport: %w", err)
	}
	return tr, nil
}
