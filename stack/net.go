package stack

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"strconv"
	"syscall"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// timeoutError is what a deadline or an expired context gives, as in the
// net package: its text is "i/o timeout" and Timeout reports true.
type timeoutError struct{}

func (timeoutError) Error() string   { return "i/o timeout" }
func (timeoutError) Timeout() bool   { return true }
func (timeoutError) Temporary() bool { return true }

// Is makes errors.Is(err, os.ErrDeadlineExceeded) hold, as for net.Conn.
func (timeoutError) Is(target error) bool { return target == os.ErrDeadlineExceeded }

// errCanceled is the error for a cancelled context, worded as net's.
var errCanceled = errors.New("operation was canceled")

// ErrClosed is returned once the Stack is closed.
var ErrClosed = net.ErrClosed

// translate turns a gVisor error into the errno the kernel would give for
// the same condition, so that callers see the net package's words
// ("connection refused", "no route to host") and can use errors.Is.
func translate(op string, terr tcpip.Error) error {
	var errno syscall.Errno
	switch terr.(type) {
	case *tcpip.ErrConnectionRefused:
		errno = syscall.ECONNREFUSED
	case *tcpip.ErrHostUnreachable:
		errno = syscall.EHOSTUNREACH
	case *tcpip.ErrNetworkUnreachable, *tcpip.ErrNoNet:
		errno = syscall.ENETUNREACH
	case *tcpip.ErrPortInUse, *tcpip.ErrDuplicateAddress:
		errno = syscall.EADDRINUSE
	case *tcpip.ErrBadLocalAddress:
		errno = syscall.EADDRNOTAVAIL
	case *tcpip.ErrConnectionReset:
		errno = syscall.ECONNRESET
	case *tcpip.ErrConnectionAborted, *tcpip.ErrAborted:
		errno = syscall.ECONNABORTED
	case *tcpip.ErrMessageTooLong:
		errno = syscall.EMSGSIZE
	case *tcpip.ErrNoPortAvailable:
		errno = syscall.EAGAIN
	case *tcpip.ErrAddressFamilyNotSupported:
		errno = syscall.EAFNOSUPPORT
	case *tcpip.ErrInvalidEndpointState:
		errno = syscall.EINVAL
	case *tcpip.ErrTimeout:
		return timeoutError{}
	default:
		return errors.New(terr.String())
	}
	return os.NewSyscallError(op, errno)
}

// parseAddr splits "host:port" for network into an address the stack can
// use. The host must be an IP literal or empty (any address).
func parseAddr(network, address string) (netip.AddrPort, tcpip.NetworkProtocolNumber, error) {
	host, portStr, err := net.SplitHostPort(address)
	if err != nil {
		return netip.AddrPort{}, 0, err
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		p, lerr := net.LookupPort(network, portStr)
		if lerr != nil {
			return netip.AddrPort{}, 0, &net.AddrError{Err: "invalid port", Addr: address}
		}
		port = uint64(p)
	}
	var addr netip.Addr
	if host == "" {
		switch network[len(network)-1] {
		case '6':
			addr = netip.IPv6Unspecified()
		default:
			addr = netip.IPv4Unspecified()
		}
	} else if addr, err = netip.ParseAddr(host); err != nil {
		return netip.AddrPort{}, 0, &net.AddrError{Err: "not an IP address (listen on an inner address, or an empty host for all)", Addr: host}
	}
	addr = addr.Unmap()
	if addr.Zone() != "" {
		return netip.AddrPort{}, 0, &net.AddrError{Err: "zones are not supported", Addr: host}
	}
	switch network {
	case "tcp4", "udp4":
		if !addr.Is4() {
			return netip.AddrPort{}, 0, &net.AddrError{Err: "non-IPv4 address", Addr: host}
		}
	case "tcp6", "udp6":
		if !addr.Is6() {
			return netip.AddrPort{}, 0, &net.AddrError{Err: "non-IPv6 address", Addr: host}
		}
	}
	return netip.AddrPortFrom(addr, uint16(port)), protoOf(addr), nil
}

func fullAddr(ap netip.AddrPort) tcpip.FullAddress {
	fa := tcpip.FullAddress{Port: ap.Port()}
	if !ap.Addr().IsUnspecified() {
		fa.Addr = tcpipAddr(ap.Addr())
	}
	return fa
}

func checkNetwork(op, network string, allowed ...string) error {
	for _, a := range allowed {
		if network == a {
			return nil
		}
	}
	return &net.OpError{Op: op, Net: network, Err: net.UnknownNetworkError(network)}
}

func (s *Stack) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// Dial connects to address on the named network inside the stack; see
// DialContext.
func (s *Stack) Dial(network, address string) (net.Conn, error) {
	return s.DialContext(context.Background(), network, address)
}

// DialContext connects to address ("10.99.0.2:80", "[fd99::2]:80",
// "web.example:80") on network "tcp", "tcp4", "tcp6", "udp", "udp4" or
// "udp6" inside the stack, like net.Dialer.DialContext, so it can serve as
// an http.Transport.DialContext. A host name is looked up through
// Config.DNS (ErrNoDNS without it) and its addresses tried as net.Dialer
// does: those of the first address's family in turn, the other family's
// too if none connected within 300 ms (Happy Eyeballs, RFC 8305). The
// context bounds the lookup and the connection attempts only; its expiry
// gives an "i/o timeout" error.
func (s *Stack) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	if err := checkNetwork("dial", network, "tcp", "tcp4", "tcp6", "udp", "udp4", "udp6"); err != nil {
		return nil, err
	}
	opErr := func(err error) error {
		return &net.OpError{Op: "dial", Net: network, Addr: strAddr{network, address}, Err: err}
	}
	if s.isClosed() {
		return nil, opErr(ErrClosed)
	}
	if host, port, ok := hostName(address); ok {
		return s.dialName(ctx, network, address, host, port) // resolve.go
	}
	raddr, proto, err := parseAddr(network, address)
	if err != nil {
		return nil, opErr(err)
	}
	if raddr.Addr().IsUnspecified() || raddr.Port() == 0 {
		return nil, opErr(&net.AddrError{Err: "missing address or port", Addr: address})
	}
	if network[0] == 'u' {
		wq := new(waiter.Queue)
		ep, terr := s.gv.NewEndpoint(udp.ProtocolNumber, proto, wq)
		if terr != nil {
			return nil, opErr(translate("socket", terr))
		}
		if terr := ep.Connect(fullAddr(raddr)); terr != nil {
			ep.Close()
			return nil, opErr(translate("connect", terr))
		}
		return newUDPConn(wq, ep), nil
	}
	c, err := s.dialTCP(ctx, raddr, proto)
	if err != nil {
		return nil, opErr(err)
	}
	return c, nil
}

func (s *Stack) dialTCP(ctx context.Context, raddr netip.AddrPort, proto tcpip.NetworkProtocolNumber) (net.Conn, error) {
	if err := ctx.Err(); err != nil {
		return nil, ctxError(err)
	}
	var wq waiter.Queue
	ep, terr := s.gv.NewEndpoint(tcp.ProtocolNumber, proto, &wq)
	if terr != nil {
		return nil, translate("socket", terr)
	}
	entry, notify := waiter.NewChannelEntry(waiter.WritableEvents)
	wq.EventRegister(&entry)
	defer wq.EventUnregister(&entry)
	terr = ep.Connect(fullAddr(raddr))
	if _, ok := terr.(*tcpip.ErrConnectStarted); ok {
		select {
		case <-ctx.Done():
			ep.Close()
			return nil, ctxError(ctx.Err())
		case <-notify:
		}
		terr = ep.LastError()
	}
	if terr != nil {
		ep.Close()
		return nil, translate("connect", terr)
	}
	// After the handshake: gVisor starts the keepalive timer when the
	// option is set on a connected endpoint only.
	s.setKeepalive(ep) // keepalive.go
	return gonet.NewTCPConn(&wq, ep), nil
}

func ctxError(err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return timeoutError{}
	}
	return errCanceled
}

// Listen announces on address inside the stack for network "tcp", "tcp4"
// or "tcp6". An empty host listens on every inner address of the family
// ("tcp" and an empty host: IPv4 and IPv6 both).
func (s *Stack) Listen(network, address string) (net.Listener, error) {
	if err := checkNetwork("listen", network, "tcp", "tcp4", "tcp6"); err != nil {
		return nil, err
	}
	wq, ep, err := s.bind(tcp.ProtocolNumber, network, address)
	if err != nil {
		return nil, err
	}
	if terr := ep.Listen(1024); terr != nil {
		ep.Close()
		return nil, &net.OpError{Op: "listen", Net: network, Addr: strAddr{network, address}, Err: translate("listen", terr)}
	}
	ln := &TCPListener{} // addrport.go
	if s.keepalive > 0 {
		ln.ka = s.newKeepaliveListener(wq, ep) // keepalive.go
		ln.TCPListener = ln.ka.TCPListener
	} else {
		ln.TCPListener = gonet.NewTCPListener(s.gv, wq, ep)
	}
	if laddr, _, err := parseAddr(network, address); err == nil && laddr.Addr().IsUnspecified() {
		ln.wildcard = laddr.Addr()
		if network == "tcp" {
			ln.wildcard = netip.IPv6Unspecified() // dual stack, see bind
		}
	}
	return ln, nil
}

// ListenPacket announces on address inside the stack for network "udp",
// "udp4" or "udp6", like net.ListenPacket.
func (s *Stack) ListenPacket(network, address string) (net.PacketConn, error) {
	if err := checkNetwork("listen", network, "udp", "udp4", "udp6"); err != nil {
		return nil, err
	}
	wq, ep, err := s.bind(udp.ProtocolNumber, network, address)
	if err != nil {
		return nil, err
	}
	return newUDPConn(wq, ep), nil
}

// bind makes a transport endpoint bound to address for Listen and
// ListenPacket. "tcp" or "udp" with an empty host binds a dual-stack IPv6
// endpoint, which accepts IPv4 too, as the net package does.
func (s *Stack) bind(transport tcpip.TransportProtocolNumber, network, address string) (*waiter.Queue, tcpip.Endpoint, error) {
	opErr := func(err error) error {
		return &net.OpError{Op: "listen", Net: network, Addr: strAddr{network, address}, Err: err}
	}
	if s.isClosed() {
		return nil, nil, opErr(ErrClosed)
	}
	laddr, proto, err := parseAddr(network, address)
	if err != nil {
		return nil, nil, opErr(err)
	}
	dual := (network == "tcp" || network == "udp") && laddr.Addr().IsUnspecified()
	if dual {
		proto = ipv6.ProtocolNumber
	}
	wq := new(waiter.Queue)
	ep, terr := s.gv.NewEndpoint(transport, proto, wq)
	if terr != nil {
		return nil, nil, opErr(translate("socket", terr))
	}
	if dual {
		ep.SocketOptions().SetV6Only(false)
	}
	if terr := ep.Bind(fullAddr(laddr)); terr != nil {
		ep.Close()
		return nil, nil, opErr(translate("bind", terr))
	}
	return wq, ep, nil
}

// strAddr is a net.Addr for an address as the caller wrote it.
type strAddr struct{ net, addr string }

func (a strAddr) Network() string { return a.net }
func (a strAddr) String() string  { return a.addr }
