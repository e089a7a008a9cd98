package endpoint

import (
	"fmt"
	"net/netip"
	"os"

	"golang.org/x/sys/unix"
)

// ListenRaw opens the raw IP-in-IP transport on local: receiving sockets
// for IP protocols 4 and 41, and one IPPROTO_RAW socket that sends packets
// whose outer header the endpoint wrote. It needs CAP_NET_RAW. With
// opts.Peer set, the receiving sockets are connected to it (see
// SocketOptions.Peer), which needs a route to the peer.
func ListenRaw(local netip.Addr, opts SocketOptions) (Transport, error) {
	local = local.Unmap()
	v6 := local.Is6()
	peer := opts.Peer.Unmap()
	if peer.IsValid() && peer.Is6() != v6 {
		return nil, fmt.Errorf("endpoint: raw transport on %v: peer %v is of the other address family", local, peer)
	}
	family, framing := unix.AF_INET, FramingRawIPv4
	if v6 {
		family, framing = unix.AF_INET6, FramingRawIPv6
	}
	t := newSockTransport(framing, opts.batch(), opts.DontFragment)
	t.local = netip.AddrPortFrom(local, 0)
	open := func(proto int, bind bool) (*sockConn, error) {
		fd, err := unix.Socket(family, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, proto)
		if err != nil {
			return nil, fmt.Errorf("endpoint: raw socket for IP protocol %d: %w", proto, os.NewSyscallError("socket", err))
		}
		if err := setSockopts(fd, v6, opts, bind); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("endpoint: raw socket for IP protocol %d: %w", proto, err)
		}
		if bind && !local.IsUnspecified() {
			var sa unix.Sockaddr
			if v6 {
				sa = &unix.SockaddrInet6{Addr: local.As16()}
			} else {
				sa = &unix.SockaddrInet4{Addr: local.As4()}
			}
			if err := unix.Bind(fd, sa); err != nil {
				unix.Close(fd)
				return nil, fmt.Errorf("endpoint: bind raw socket to %v: %w", local, os.NewSyscallError("bind", err))
			}
		}
		if bind && v6 {
			// An unconnected IPv6 raw socket ignores ICMPv6 errors
			// (rawv6_err returns early) unless it asks for them, and
			// so does not even update the path MTU on Packet Too Big
			// (IPv4's raw_err does that first). The reports queue up
			// as errors: ReadBatch drains them (errQueue).
			if err := unix.SetsockoptInt(fd, unix.SOL_IPV6, unix.IPV6_RECVERR, 1); err != nil {
				unix.Close(fd)
				return nil, fmt.Errorf("endpoint: raw socket for IP protocol %d: %w", proto, os.NewSyscallError("setsockopt IPV6_RECVERR", err))
			}
		}
		if bind && peer.IsValid() {
			if err := connectRaw(fd, peer); err != nil {
				unix.Close(fd)
				return nil, fmt.Errorf("endpoint: raw socket for IP protocol %d on %v: %w", proto, local, err)
			}
		}
		f := os.NewFile(uintptr(fd), fmt.Sprintf("raw-%d", proto))
		rc, err := f.SyscallConn()
		if err != nil {
			f.Close()
			return nil, err
		}
		t.closers = append(t.closers, f.Close)
		return &sockConn{rc: rc, v6: v6}, nil
	}
	var err error
	t.openProbe(v6)
	if t.tx, err = open(unix.IPPROTO_RAW, false); err != nil {
		t.Close()
		return nil, err
	}
	for _, proto := range []int{unix.IPPROTO_IPIP, unix.IPPROTO_IPV6} {
		c, err := open(proto, true)
		if err != nil {
			t.Close()
			return nil, err
		}
		t.rx = append(t.rx, &sockReceiver{c: c, proto: uint8(proto), errQueue: v6})
	}
	return t, nil
}

// connectRaw connects the raw socket fd to peer, so that it receives only
// peer's packets. Like any datagram connect it looks up the route to peer,
// and fails if there is none.
func connectRaw(fd int, peer netip.Addr) error {
	var sa unix.Sockaddr
	if peer.Is6() {
		sa = &unix.SockaddrInet6{Addr: peer.As16()}
	} else {
		sa = &unix.SockaddrInet4{Addr: peer.As4()}
	}
	if err := unix.Connect(fd, sa); err != nil {
		return fmt.Errorf("connect to the peer %v to receive only its packets (is there a route to it?): %w",
			peer, os.NewSyscallError("connect", err))
	}
	return nil
}
