package endpoint

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

var _ PathMTUer = (*sockTransport)(nil)

// PathMTU implements PathMTUer.
func (t *sockTransport) PathMTU(dst netip.Addr) (int, error) {
	if t.probe == nil {
		return 0, errors.New("endpoint: no socket to ask the path MTU with")
	}
	return t.probe.pathMTU(dst)
}

// pmtuProbe is a UDP socket that is connected to a peer only to ask the
// kernel for its path MTU there (IP_MTU, IPV6_MTU need a connected
// socket; the transports' own sockets are not connected). It is opened
// with the transport's sockets, so that it lives in their network
// namespace whichever thread asks later.
type pmtuProbe struct {
	v6 bool
	// mu guards fd, which is -1 once closed.
	mu sync.Mutex
	fd int
}

func newPMTUProbe(v6 bool) (*pmtuProbe, error) {
	family := unix.AF_INET
	if v6 {
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, os.NewSyscallError("socket", err)
	}
	return &pmtuProbe{v6: v6, fd: fd}, nil
}

// pathMTU connects the probe to dst (port 9, discard: nothing is sent) and
// returns the kernel's path MTU for that route.
func (p *pmtuProbe) pathMTU(dst netip.Addr) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fd < 0 {
		return 0, ErrClosed
	}
	var sa unix.Sockaddr
	level, opt := unix.IPPROTO_IP, unix.IP_MTU
	switch {
	case p.v6:
		sa = &unix.SockaddrInet6{Port: 9, Addr: dst.As16()}
		level, opt = unix.IPPROTO_IPV6, unix.IPV6_MTU
	case dst.Unmap().Is4():
		sa = &unix.SockaddrInet4{Port: 9, Addr: dst.Unmap().As4()}
	default:
		return 0, errors.New("endpoint: IPv6 peer for an IPv4 socket")
	}
	if err := unix.Connect(p.fd, sa); err != nil {
		return 0, os.NewSyscallError("connect", err)
	}
	mtu, err := unix.GetsockoptInt(p.fd, level, opt)
	if err != nil {
		return 0, os.NewSyscallError("getsockopt IP_MTU", err)
	}
	return mtu, nil
}

func (p *pmtuProbe) close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fd < 0 {
		return nil
	}
	err := unix.Close(p.fd)
	p.fd = -1
	return err
}

var _ fragmentAllower = (*sockTransport)(nil)

// allowFragmentation switches the sending socket of an IPv4 transport
// between IP_PMTUDISC_DO (refuse datagrams above the path MTU with
// EMSGSIZE) and IP_PMTUDISC_WANT (set DF on datagrams that fit the path
// MTU, fragment the others). A raw IPv4 socket with IP_HDRINCL sends the
// DF bit of the header the endpoint wrote, and fragments a packet without
// it either way; its setting is changed all the same, so that the two
// transports read alike. A socket made without DontFragment
// (IP_PMTUDISC_DONT) already fragments, and IPv6 sockets are left alone.
func (t *sockTransport) allowFragmentation(on bool) error {
	if !t.dontFragment || t.tx.v6 {
		return nil
	}
	v := unix.IP_PMTUDISC_DO
	if on {
		v = unix.IP_PMTUDISC_WANT
	}
	var serr error
	if err := t.tx.rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_MTU_DISCOVER, v)
	}); err != nil {
		return fmt.Errorf("endpoint: outer socket: %w", err)
	}
	if serr != nil {
		return fmt.Errorf("endpoint: outer socket: %w", os.NewSyscallError("setsockopt IP_MTU_DISCOVER", serr))
	}
	return nil
}
