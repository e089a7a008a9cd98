package endpoint

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// DefaultSocketBuffer is the send and receive buffer size asked for on
// outer sockets. With the kernel's default 208 KiB, bursts from a fast TCP
// sender overflow the receive queue and gVisor TCP falls into
// retransmission timeouts; 4 MiB was measured to be enough on loopback.
const DefaultSocketBuffer = 4 << 20

// SocketOptions tune the outer sockets.
type SocketOptions struct {
	// Buffer is SO_RCVBUF and SO_SNDBUF; 0 means DefaultSocketBuffer. As
	// root the FORCE variants lift the net.core limits.
	Buffer int
	// DontFragment sets DF on outer packets the kernel builds (UDP) and
	// makes the kernel refuse, not fragment, oversize sends
	// (IP_PMTUDISC_DO). IPv6 outer packets are never fragmented.
	DontFragment bool
	// BatchSize is how many datagrams one recvmmsg or sendmmsg call moves;
	// 0 means 64.
	BatchSize int
	// NoGSO and NoGRO keep UDP_SEGMENT and UDP_GRO off.
	NoGSO, NoGRO bool
	// ZeroChecksum sends UDP datagrams over IPv4 with checksum 0, as
	// Linux FOU does by default (SO_NO_CHECK). It rules out UDP GSO.
	ZeroChecksum bool
	// Peer, if valid, is the only outer source address ListenRaw's
	// receiving sockets take packets from: they are connect()ed to it,
	// and the kernel hands a connected raw socket only packets whose
	// source is its remote address (raw_v4_match in net/ipv4/raw.c,
	// raw_v6_match in net/ipv6/raw.c). Raw tunnels that share a local
	// address then each get their own peer's packets rather than every
	// tunnel all of them. The zero value takes packets from any source,
	// as a roaming tunnel needs. Packets the kernel filters out are
	// neither seen nor counted by the endpoint. ListenUDP ignores Peer.
	Peer netip.Addr
}

func (o *SocketOptions) batch() int {
	if o.BatchSize <= 0 {
		return 64
	}
	return o.BatchSize
}

// sockTransport is a Transport over one sending socket and one or more
// receiving sockets.
type sockTransport struct {
	framing Framing
	local   netip.AddrPort

	tx *sockConn
	rx []*sockReceiver

	// closers run once on Close (the net.UDPConn or os.Files).
	closeOnce sync.Once
	closers   []func() error

	offloads Offloads

	// txMu guards txBatch, the state of sendmmsg calls.
	txMu    sync.Mutex
	txBatch *mmsgBatch

	// probe asks the kernel for the path MTU (pmtu_linux.go); nil if it
	// could not be opened.
	probe *pmtuProbe
	// dontFragment: the sending socket is IP_PMTUDISC_DO
	// (SocketOptions.DontFragment), which allowFragmentation relaxes.
	dontFragment bool
}

// openProbe opens t's path MTU probe; without one the endpoint does not
// learn a lower outer path MTU.
func (t *sockTransport) openProbe(v6 bool) {
	if p, err := newPMTUProbe(v6); err == nil {
		t.probe = p
		t.closers = append(t.closers, p.close)
	}
}

type sockReceiver struct {
	c     *sockConn
	proto uint8
	// verified: the kernel checked the UDP checksum of what this socket
	// reads (see ListenUDP).
	verified bool
	// b is owned by the one goroutine that calls ReadBatch.
	b *mmsgBatch
}

// ReadBatch implements Receiver.ReadBatch.
func (r *sockReceiver) ReadBatch(msgs []Message) (int, error) {
	if r.b == nil || len(r.b.hdrs) < len(msgs) {
		r.b = newMmsgBatch(len(msgs))
	}
	n, err := r.c.recv(r.b, msgs)
	for i := 0; i < n; i++ {
		msgs[i].Proto, msgs[i].Verified = r.proto, r.verified
	}
	return n, err
}

// Offloads implements Offloader.
func (t *sockTransport) Offloads() Offloads { return t.offloads }

func (t *sockTransport) Framing() Framing          { return t.framing }
func (t *sockTransport) LocalAddr() netip.AddrPort { return t.local }

func (t *sockTransport) Receivers() []Receiver {
	rs := make([]Receiver, len(t.rx))
	for i, r := range t.rx {
		rs[i] = r
	}
	return rs
}

// WriteBatch implements Transport.WriteBatch.
func (t *sockTransport) WriteBatch(msgs []Message) (int, error) {
	t.txMu.Lock()
	defer t.txMu.Unlock()
	return t.tx.send(t.txBatch, msgs, t.framing == FramingUDP)
}

// Close implements Transport.Close.
func (t *sockTransport) Close() error {
	var first error
	t.closeOnce.Do(func() {
		for _, c := range t.closers {
			if err := c(); err != nil && first == nil {
				first = err
			}
		}
	})
	return first
}

// ListenUDP opens the rootless FOU transport: a UDP socket bound to local.
//
// Over IPv4 it opens two sockets in one SO_REUSEPORT group and a classic
// BPF program steers each datagram by its UDP checksum: non-zero to the
// first, zero (Linux FOU's default over IPv4) to the second. The kernel
// drops datagrams whose non-zero checksum is wrong, so everything the
// first socket reads had its inner bytes verified, and the endpoint need
// not verify them again (Message.Verified). Where the group cannot be set
// up, one socket reads everything, unverified. Over IPv6 the kernel drops
// a zero checksum (no UDP_NO_CHECK6_RX), so every datagram is verified.
func ListenUDP(local netip.AddrPort, opts SocketOptions) (Transport, error) {
	v6 := local.Addr().Is6() && !local.Addr().Is4In6()
	t := &sockTransport{framing: FramingUDP, txBatch: newMmsgBatch(opts.batch()), dontFragment: opts.DontFragment}
	if !v6 {
		// SO_REUSEPORT would let our bind share a port that another
		// socket of this user holds with SO_REUSEPORT too, and a second
		// tunnel on our port would silently get nothing. A plain bind
		// first fails as it should on a port in use, and picks the port
		// when local has none.
		probe, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(local))
		if err != nil {
			return nil, fmt.Errorf("endpoint: %w", err)
		}
		local = netip.AddrPortFrom(local.Addr(), probe.LocalAddr().(*net.UDPAddr).AddrPort().Port())
		probe.Close()
	}
	first, err := listenUDP(local, v6, opts, !v6)
	if err != nil {
		return nil, err
	}
	t.closers = append(t.closers, first.close)
	t.tx = first.sc
	t.local = first.local
	t.offloads = first.off
	t.rx = []*sockReceiver{{c: first.sc, verified: v6}}
	t.offloads.RXChecksum = v6
	t.openProbe(v6)
	if !v6 {
		if second, err := listenUDP(first.local, false, opts, true); err == nil {
			if err := attachChecksumSteering(first.fd); err == nil {
				t.closers = append(t.closers, second.close)
				t.rx[0].verified = true
				t.rx = append(t.rx, &sockReceiver{c: second.sc})
				t.offloads.RXChecksum = true
			} else {
				second.close()
			}
		}
	}
	return t, nil
}

// udpSocket is one bound UDP socket of a transport.
type udpSocket struct {
	sc    *sockConn
	fd    int
	local netip.AddrPort
	off   Offloads
	close func() error
}

func listenUDP(local netip.AddrPort, v6 bool, opts SocketOptions, reusePort bool) (*udpSocket, error) {
	network := "udp4"
	if v6 {
		network = "udp6"
	}
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		if !reusePort {
			return nil
		}
		var serr error
		c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1) })
		return serr
	}}
	pc, err := lc.ListenPacket(context.Background(), network, net.UDPAddrFromAddrPort(local).String())
	if err != nil {
		return nil, fmt.Errorf("endpoint: %w", err)
	}
	c := pc.(*net.UDPConn)
	rc, err := c.SyscallConn()
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("endpoint: %w", err)
	}
	u := &udpSocket{close: c.Close}
	var serr error
	rc.Control(func(fd uintptr) {
		u.fd = int(fd)
		serr = setSockopts(int(fd), v6, opts, true)
		if serr == nil && opts.ZeroChecksum && !v6 {
			serr = os.NewSyscallError("setsockopt SO_NO_CHECK", unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_NO_CHECK, 1))
		}
		u.off = udpOffloads(int(fd), opts)
	})
	if serr != nil {
		c.Close()
		return nil, fmt.Errorf("endpoint: udp %v: %w", local, serr)
	}
	u.sc = &sockConn{rc: rc, v6: v6}
	la := c.LocalAddr().(*net.UDPAddr).AddrPort()
	u.local = netip.AddrPortFrom(la.Addr().Unmap(), la.Port())
	return u, nil
}

// skfNetOff makes a classic BPF load address the network header
// (SKF_NET_OFF in linux/filter.h).
const skfNetOff = 0xfff00000 // -0x100000

// attachChecksumSteering attaches, to fd's SO_REUSEPORT group, a program
// that returns socket 1 for a zero UDP checksum and socket 0 otherwise. A
// reuseport program sees the datagram after the UDP header, so the IPv4
// header is reached through SKF_NET_OFF.
func attachChecksumSteering(fd int) error {
	prog := []unix.SockFilter{
		// X = 4 * (IPv4 IHL)
		{Code: unix.BPF_LDX | unix.BPF_B | unix.BPF_MSH, K: skfNetOff},
		// A = the UDP checksum, 6 bytes into the UDP header
		{Code: unix.BPF_LD | unix.BPF_H | unix.BPF_IND, K: skfNetOff + 6},
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, K: 0, Jt: 1, Jf: 0},
		{Code: unix.BPF_RET | unix.BPF_K, K: 0},
		{Code: unix.BPF_RET | unix.BPF_K, K: 1},
	}
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_CBPF, &fprog); err != nil {
		return os.NewSyscallError("setsockopt SO_ATTACH_REUSEPORT_CBPF", err)
	}
	return nil
}

// udpOffloads turns UDP GRO on and probes UDP GSO, unless opts say not to.
// Kernels before 4.18 (GSO) and 5.0 (GRO) lack them; the endpoint then
// sends and receives one datagram per packet.
func udpOffloads(fd int, opts SocketOptions) Offloads {
	var o Offloads
	if !opts.NoGSO && !opts.ZeroChecksum && unix.SetsockoptInt(fd, unix.SOL_UDP, unix.UDP_SEGMENT, 0) == nil {
		o.GSO = true
	}
	if !opts.NoGRO && unix.SetsockoptInt(fd, unix.SOL_UDP, unix.UDP_GRO, 1) == nil {
		o.GRO = true
	}
	return o
}

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
	t := &sockTransport{
		framing: framing,
		local:   netip.AddrPortFrom(local, 0),
		txBatch: newMmsgBatch(opts.batch()),

		dontFragment: opts.DontFragment,
	}
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
		t.rx = append(t.rx, &sockReceiver{c: c, proto: uint8(proto)})
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

// setSockopts sizes the buffers, asks for the outer ToS on receive and sets
// the DF policy.
func setSockopts(fd int, v6 bool, opts SocketOptions, rx bool) error {
	size := opts.Buffer
	if size <= 0 {
		size = DefaultSocketBuffer
	}
	for _, o := range [][2]int{{unix.SO_RCVBUFFORCE, unix.SO_RCVBUF}, {unix.SO_SNDBUFFORCE, unix.SO_SNDBUF}} {
		if unix.SetsockoptInt(fd, unix.SOL_SOCKET, o[0], size) != nil {
			if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, o[1], size); err != nil {
				return os.NewSyscallError("setsockopt SO_RCVBUF/SO_SNDBUF", err)
			}
		}
	}
	if v6 {
		if rx {
			if err := unix.SetsockoptInt(fd, unix.SOL_IPV6, unix.IPV6_RECVTCLASS, 1); err != nil {
				return os.NewSyscallError("setsockopt IPV6_RECVTCLASS", err)
			}
		}
		// Never let the kernel fragment an outer IPv6 packet.
		if err := unix.SetsockoptInt(fd, unix.SOL_IPV6, unix.IPV6_MTU_DISCOVER, unix.IPV6_PMTUDISC_DO); err != nil {
			return os.NewSyscallError("setsockopt IPV6_MTU_DISCOVER", err)
		}
		return nil
	}
	if rx {
		if err := unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_RECVTOS, 1); err != nil {
			return os.NewSyscallError("setsockopt IP_RECVTOS", err)
		}
	}
	pmtu := unix.IP_PMTUDISC_DONT
	if opts.DontFragment {
		pmtu = unix.IP_PMTUDISC_DO
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_MTU_DISCOVER, pmtu); err != nil {
		return os.NewSyscallError("setsockopt IP_MTU_DISCOVER", err)
	}
	return nil
}
