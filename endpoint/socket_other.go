//go:build !linux

package endpoint

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
)

// ListenUDP opens the FOU transport on local. Off Linux it is a plain
// net.UDPConn moved by NewPacketConnTransport: one datagram per system
// call, no UDP GSO or GRO, no per-datagram ToS or TTL, and no word from
// the kernel on checksums, so the endpoint verifies every packet itself.
// SocketOptions other than Buffer are ignored.
func ListenUDP(local netip.AddrPort, opts SocketOptions) (Transport, error) {
	network := "udp4"
	if local.Addr().Is6() && !local.Addr().Is4In6() {
		network = "udp6"
	}
	c, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(local))
	if err != nil {
		return nil, fmt.Errorf("endpoint: %w", err)
	}
	size := opts.Buffer
	if size <= 0 {
		size = DefaultSocketBuffer
	}
	// Best effort: the system may cap the buffers lower.
	c.SetReadBuffer(size)
	c.SetWriteBuffer(size)
	return NewPacketConnTransport(c, netip.AddrPort{})
}

// ErrRawUnsupported is returned by ListenRaw where raw IP-in-IP sockets
// are not available.
var ErrRawUnsupported = errors.New("endpoint: the raw IP-in-IP transport (IP protocols 4 and 41) needs Linux; use the UDP (FOU) transport here")

// ListenRaw fails off Linux: see ErrRawUnsupported.
func ListenRaw(local netip.Addr, opts SocketOptions) (Transport, error) {
	return nil, ErrRawUnsupported
}
