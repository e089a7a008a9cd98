package endpoint

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
)

// ListenUDP opens the rootless FOU transport: UDP sockets bound to local.
//
// It reads with one socket per core the process may use (GOMAXPROCS), in
// one SO_REUSEPORT group: the kernel keeps each flow (outer addresses and
// ports) on one socket, so a flow's datagrams stay in order while
// different peers, or one peer's per-flow source ports, are read in
// parallel, each socket by a goroutine of its own. Over IPv4 the group has
// twice as many sockets and a classic BPF program steers each datagram by
// its UDP checksum as well as its flow: non-zero to the first half,
// zero (Linux FOU's default over IPv4) to the second. The kernel drops
// datagrams whose non-zero checksum is wrong, so everything the first half
// reads had its outer UDP checksum verified (Message.Verified; see
// rxcsum.go for what that proves). Where the program cannot be attached,
// every socket reads unverified. Over IPv6 the kernel drops a zero
// checksum (no UDP_NO_CHECK6_RX), so every datagram is verified. The
// first socket sends.
func ListenUDP(local netip.AddrPort, opts SocketOptions) (Transport, error) {
	v6 := local.Addr().Is6() && !local.Addr().Is4In6()
	t := newSockTransport(FramingUDP, opts.batch(), opts.DontFragment)
	// SO_REUSEPORT would let our bind share a port that another socket
	// of this user holds with SO_REUSEPORT too, and a second tunnel on
	// our port would silently get nothing. A plain bind first fails as it
	// should on a port in use, and picks the port when local has none.
	network := "udp4"
	if v6 {
		network = "udp6"
	}
	probe, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(local))
	if err != nil {
		return nil, fmt.Errorf("endpoint: %w", err)
	}
	local = netip.AddrPortFrom(local.Addr(), probe.LocalAddr().(*net.UDPAddr).AddrPort().Port())
	probe.Close()
	cores := receiveSockets()
	socks := make([]*udpSocket, 0, 2*cores)
	fail := func(err error) (Transport, error) {
		for _, u := range socks {
			u.close()
		}
		return nil, err
	}
	want := cores
	if !v6 {
		want = 2 * cores
	}
	for range want {
		u, err := listenUDP(local, v6, opts, true)
		if err != nil {
			return fail(err)
		}
		socks = append(socks, u)
	}
	verified := v6
	if !v6 {
		if err := attachChecksumSteering(socks[0].fd, cores); err == nil {
			verified = true
		} else {
			// The second half would get datagrams by flow alone.
			for _, u := range socks[cores:] {
				u.close()
			}
			socks = socks[:cores]
		}
	}
	first := socks[0]
	t.tx, t.local, t.offloads = first.sc, first.local, first.off
	t.offloads.RXChecksum = verified
	for i, u := range socks {
		t.closers = append(t.closers, u.close)
		t.rx = append(t.rx, &sockReceiver{c: u.sc, verified: verified && (v6 || i < cores)})
	}
	t.openProbe(v6)
	return t, nil
}

// receiveSockets is the number of sockets of each kind that ListenUDP
// reads with: one per core the process may use.
func receiveSockets() int { return max(1, runtime.GOMAXPROCS(0)) }

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

// attachChecksumSteering attaches, to fd's SO_REUSEPORT group of 2n
// sockets, a program that picks socket flow%n for a non-zero UDP checksum
// and n+flow%n for a zero one, where flow mixes the outer source address
// and both ports, so that one flow always reaches the same socket. A
// reuseport program sees the datagram after the UDP header, so the IPv4
// and UDP headers are reached through SKF_NET_OFF.
func attachChecksumSteering(fd, n int) error {
	const (
		ld   = unix.BPF_LD
		ldx  = unix.BPF_LDX
		alu  = unix.BPF_ALU
		jmp  = unix.BPF_JMP
		gold = 0x9e3779b1 // 2^32 / the golden ratio: spreads the bits
	)
	prog := []unix.SockFilter{
		// X = 4 * (IPv4 IHL)
		{Code: ldx | unix.BPF_B | unix.BPF_MSH, K: skfNetOff},
		// A = the UDP checksum, 6 bytes into the UDP header
		{Code: ld | unix.BPF_H | unix.BPF_IND, K: skfNetOff + 6},
		// M[0] = A == 0 ? n : 0
		{Code: jmp | unix.BPF_JEQ | unix.BPF_K, K: 0, Jt: 0, Jf: 2},
		{Code: ld | unix.BPF_IMM, K: uint32(n)},
		{Code: jmp | unix.BPF_JA, K: 1},
		{Code: ld | unix.BPF_IMM, K: 0},
		{Code: unix.BPF_ST, K: 0},
		// M[1] = the source and destination ports
		{Code: ld | unix.BPF_W | unix.BPF_IND, K: skfNetOff},
		{Code: unix.BPF_ST, K: 1},
		// A = (source address ^ M[1]) * gold >> 16 % n + M[0]
		{Code: ld | unix.BPF_W | unix.BPF_ABS, K: skfNetOff + 12},
		{Code: ldx | unix.BPF_MEM, K: 1},
		{Code: alu | unix.BPF_XOR | unix.BPF_X},
		{Code: alu | unix.BPF_MUL | unix.BPF_K, K: gold},
		{Code: alu | unix.BPF_RSH | unix.BPF_K, K: 16},
		{Code: alu | unix.BPF_MOD | unix.BPF_K, K: uint32(n)},
		{Code: ldx | unix.BPF_MEM, K: 0},
		{Code: alu | unix.BPF_ADD | unix.BPF_X},
		{Code: unix.BPF_RET | unix.BPF_A},
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
