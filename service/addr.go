package service

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
)

// NetworkFor narrows proto ("tcp" or "udp") to "tcp4"/"tcp6" or
// "udp4"/"udp6" when address ("host:port") has an IP literal host, and
// returns proto unchanged otherwise (a name, an empty host, or a malformed
// address, which the Network will reject itself).
//
// The tunnel stack has no dual-stack wildcard socket and wants the family
// spelled out, while the host accepts either, so services pass every address
// through NetworkFor before they call a Network.
func NetworkFor(proto, address string) string {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return proto
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return proto
	}
	if ip.Unmap().Is4() {
		return proto + "4"
	}
	return proto + "6"
}

// AddrPort returns the IP and port of a, which is usually a *net.TCPAddr or
// *net.UDPAddr (from the host or the tunnel stack). Other kinds are parsed
// from their String form; ok is false when that fails. IPv4-mapped IPv6
// addresses are unmapped.
func AddrPort(a net.Addr) (ap netip.AddrPort, ok bool) {
	switch a := a.(type) {
	case *net.TCPAddr:
		if a == nil {
			return ap, false
		}
		ap = a.AddrPort()
	case *net.UDPAddr:
		if a == nil {
			return ap, false
		}
		ap = a.AddrPort()
	case nil:
		return ap, false
	default:
		p, err := netip.ParseAddrPort(a.String())
		if err != nil {
			return ap, false
		}
		ap = p
	}
	if !ap.Addr().IsValid() {
		return ap, false
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), true
}

// ListenTCP listens for TCP on address through n, for a server whose errors
// start with prefix ("socks5", "httpproxy"): a failure reads
// "PREFIX: listen tcp ADDRESS: REASON", naming the network and address
// once, however n words it.
func ListenTCP(n Network, address, prefix string) (net.Listener, error) {
	ln, err := n.Listen(NetworkFor("tcp", address), address)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "listen" {
			cp := *op
			cp.Net = "tcp"
			return nil, fmt.Errorf("%s: %w", prefix, &cp)
		}
		return nil, fmt.Errorf("%s: listen tcp %s: %w", prefix, address, err)
	}
	return ln, nil
}
