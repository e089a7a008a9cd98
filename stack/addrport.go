package stack

import (
	"context"
	"net"
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
)

// The typed, netip.AddrPort variants of Dial, Listen and ListenPacket, as
// the net package's DialTCP and ListenUDP and wireguard-go's netstack have.

// DialTCPAddrPort connects to addr over TCP, like DialContext("tcp4" or
// "tcp6", addr). The *gonet.TCPConn has CloseWrite.
func (s *Stack) DialTCPAddrPort(ctx context.Context, addr netip.AddrPort) (*gonet.TCPConn, error) {
	c, err := s.DialContext(ctx, "tcp"+family(addr.Addr()), addr.String())
	if err != nil {
		return nil, err
	}
	return c.(*gonet.TCPConn), nil
}

// ListenTCPAddrPort listens for TCP on addr: an inner address of the stack,
// or the unspecified address of a family (0.0.0.0 or ::) for all of them.
// Port 0 picks a free port, which Addr then shows.
func (s *Stack) ListenTCPAddrPort(addr netip.AddrPort) (*TCPListener, error) {
	ln, err := s.Listen("tcp"+family(addr.Addr()), addr.String())
	if err != nil {
		return nil, err
	}
	return ln.(*TCPListener), nil
}

// DialUDPAddrPort makes a UDP socket connected to raddr, bound to laddr
// if laddr is valid (the zero AddrPort picks the source from the route).
func (s *Stack) DialUDPAddrPort(laddr, raddr netip.AddrPort) (*UDPConn, error) {
	if !laddr.IsValid() {
		c, err := s.DialContext(context.Background(), "udp"+family(raddr.Addr()), raddr.String())
		if err != nil {
			return nil, err
		}
		return c.(*UDPConn), nil
	}
	c, err := s.ListenUDPAddrPort(laddr)
	if err != nil {
		return nil, err
	}
	if terr := c.ep.Connect(fullAddr(netip.AddrPortFrom(raddr.Addr().Unmap(), raddr.Port()))); terr != nil {
		c.Close()
		return nil, &net.OpError{Op: "dial", Net: "udp", Addr: net.UDPAddrFromAddrPort(raddr), Err: translate("connect", terr)}
	}
	return c, nil
}

// ListenUDPAddrPort makes a UDP socket bound to laddr: an inner address of
// the stack, or the unspecified address of a family for all of them. Port
// 0 picks a free port, which LocalAddr then shows.
func (s *Stack) ListenUDPAddrPort(laddr netip.AddrPort) (*UDPConn, error) {
	c, err := s.ListenPacket("udp"+family(laddr.Addr()), laddr.String())
	if err != nil {
		return nil, err
	}
	return c.(*UDPConn), nil
}

// family is "4" or "6", the suffix of a network for a.
func family(a netip.Addr) string {
	if a.Unmap().Is4() {
		return "4"
	}
	return "6"
}

// ReadFromUDPAddrPort is ReadFrom with the source as a netip.AddrPort,
// IPv4 unmapped.
func (c *UDPConn) ReadFromUDPAddrPort(b []byte) (int, netip.AddrPort, error) {
	n, from, err := c.ReadFrom(b)
	var ap netip.AddrPort
	if ua, ok := from.(*net.UDPAddr); ok && ua != nil {
		ap = ua.AddrPort()
		ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return n, ap, err
}

// WriteToUDPAddrPort is WriteTo with the destination as a netip.AddrPort.
func (c *UDPConn) WriteToUDPAddrPort(b []byte, addr netip.AddrPort) (int, error) {
	return c.WriteTo(b, net.UDPAddrFromAddrPort(addr))
}

// TCPListener is a TCP listener of the stack, returned by Listen and
// ListenTCPAddrPort. Its Addr shows a wildcard listener as net does,
// 0.0.0.0:80 or [::]:80, rather than gVisor's ":80".
type TCPListener struct {
	*gonet.TCPListener
	// ka accepts instead, when the stack's accepted connections get TCP
	// keepalive (TCPOptions.Keepalive; keepalive.go).
	ka *keepaliveListener
	// wildcard is the unspecified address the listener was bound to, or
	// invalid if it was bound to a specific one.
	wildcard netip.Addr
}

var _ net.Listener = (*TCPListener)(nil)

// Accept implements net.Listener.Accept.
func (l *TCPListener) Accept() (net.Conn, error) {
	if l.ka != nil {
		return l.ka.Accept()
	}
	return l.TCPListener.Accept()
}

// Close implements net.Listener.Close.
func (l *TCPListener) Close() error {
	if l.ka != nil {
		return l.ka.Close()
	}
	return l.TCPListener.Close()
}

// Addr implements net.Listener.Addr.
func (l *TCPListener) Addr() net.Addr {
	a, ok := l.TCPListener.Addr().(*net.TCPAddr)
	if !ok || !l.wildcard.IsValid() || (len(a.IP) != 0 && !a.IP.IsUnspecified()) {
		return l.TCPListener.Addr()
	}
	return net.TCPAddrFromAddrPort(netip.AddrPortFrom(l.wildcard, uint16(a.Port)))
}

// LocalAddr returns the outer address the named tunnel's socket is bound
// to, with the port the kernel picked if Tunnel.Local had port 0; false if
// there is no such tunnel. See "Ephemeral outer ports" in the package doc.
func (s *Stack) LocalAddr(tunnel string) (netip.AddrPort, bool) {
	ep := s.Endpoint(tunnel)
	if ep == nil {
		return netip.AddrPort{}, false
	}
	return ep.LocalAddr(), true
}
