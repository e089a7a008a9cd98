package endpoint

import "net/netip"

// DefaultSocketBuffer is the send and receive buffer size asked for on
// outer sockets. With the kernel's default 208 KiB, bursts from a fast TCP
// sender overflow the receive queue and gVisor TCP falls into
// retransmission timeouts. 4 MiB was enough for TCP on loopback, but not
// for small UDP datagrams once equal-size ones leave as one UDP_SEGMENT
// send (txcoalesce.go): the kernel charges about 1 KiB per queued
// datagram, and a sender of 64-byte datagrams lost 6-24 % of them at the
// peer's socket with 4 MiB, none with 16 MiB (UDPRate, bench/RESULTS.md).
// It is kernel memory, used only while the queue is backed up, and
// without CAP_NET_ADMIN the kernel caps it at net.core.rmem_max.
const DefaultSocketBuffer = 16 << 20

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
