// Package endpoint is a gVisor link endpoint whose wire is an IP-in-IP
// tunnel to one peer. Out: the stack hands WritePackets its packets
// (send.go), which completes their checksums (txcsum.go), cuts TCP
// super-segments to the wire size (offload.go) and queues each packet as
// a Message pointing into the stack's own buffers, behind an outer header
// written into the batch's buffers (sendbatch.go); the batch goes to the
// Transport in one call, and the packets are the stack's again once
// WritePackets returns. In: a receive goroutine per Receiver (the
// endpoint's own, or a Shared socket set's, which picks each datagram's
// tunnel by its outer source: shared.go) reads a batch into buffers it
// owns (receive.go), checks and decapsulates each
// datagram (decap), verifies what the kernel did not (rxcsum.go),
// coalesces TCP segments (coalesce.go) and delivers them, as copies or as
// gVisor views that then own the buffer, to the stack. Transports (UDP:
// udp_linux.go, raw: raw_linux.go, any net.PacketConn:
// stacktransport.go) move the datagrams; off Linux only UDP exists, one
// datagram per call (socket_other.go). Path MTU and the ICMP "too big"
// messages live in pmtu.go, pmtu6.go and ptb.go, roaming in roam.go.
//
// Inner IPv4 and IPv6 packets that the stack writes are encapsulated and
// sent by a Transport: as the bare payload of a UDP datagram (Linux FOU
// direct encapsulation, no privileges), or behind an outer IPv4 or IPv6
// header over raw sockets (IP protocol 4 / 41, as Linux ipip, sit and
// ip6tnl). Received datagrams are decapsulated, checked (peer, headers,
// inner source, ECN, checksums) and delivered to the stack; every drop is
// counted with its encap.Reason.
//
// # Receive checksums
//
// No inner byte reaches the stack unverified, and the endpoint, not the
// stack, decides what is verified (rxcsum.go): a packet is verified when
// the kernel checked a non-zero outer UDP checksum and the inner source is
// on the tunnel's link (Options.OnLink: the peer originated it), or when the
// endpoint checked its TCP, UDP, ICMP or ICMPv6 checksum itself; a wrong one
// is dropped as encap.BadChecksum. The endpoint declares RX checksum
// offload, except while it hands the stack the few packets it cannot check
// (fragments, IPv6 extension headers), which the stack then checks itself.
//
// # Usage
//
//	tr, err := endpoint.ListenUDP(netip.MustParseAddrPort("127.0.0.1:4700"), endpoint.SocketOptions{})
//	ep, err := endpoint.New(endpoint.Options{Transport: tr, Remote: peer})
//	s.CreateNIC(1, ep)
//
// The endpoint owns the Transport and closes it in Close. One goroutine per
// Receiver reads from the transport once the stack attaches the endpoint;
// Close stops them and Wait waits for them. Many tunnels can share one
// set of sockets (one UDP port, or the raw sockets of one local address):
//
//	sh := endpoint.NewShared(tr, logger)
//	jt, err := sh.Join(peer, false, false)
//	ep, err := endpoint.New(endpoint.Options{Transport: jt, Remote: peer})
//
// # Path MTU
//
// When the kernel refuses a datagram as too big for its path MTU to the
// peer, the endpoint lowers the tunnel MTU to what that path MTU leaves,
// for Options.PathMTUExpiry (10 minutes by default); then it asks the
// kernel again and goes back up, to the configured MTU once the kernel no
// longer knows a lower path MTU. Unless Options.IPv4Only is set, an MTU of
// 1280 or more is never lowered below IPv6's minimum of 1280 (gVisor
// stops sending IPv6 altogether below it): over an IPv4 outer path
// narrower than 1280 plus the overhead, outer packets the path cannot
// carry leave without DF and are fragmented on the way, as with Linux sit,
// and inner IPv4 packets with DF are answered with Fragmentation Needed
// quoting the real path. Stats shows the learned path MTU, its expiry and
// whether outer packets are being fragmented. See pmtu.go.
package endpoint
