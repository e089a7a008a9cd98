package endpoint

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

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
