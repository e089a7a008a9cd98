// Package stack runs a userspace TCP/IP stack (gVisor netstack) whose
// network interfaces are IP-in-IP tunnels, and hands out net.Conn,
// net.Listener and net.PacketConn values that live inside it.
//
// # Usage
//
//	s, err := stack.New(stack.Config{Tunnels: []stack.Tunnel{{
//		Name:      "peer",
//		Transport: stack.UDP,
//		Local:     netip.MustParseAddrPort("127.0.0.1:4700"),
//		Remote:    netip.MustParseAddrPort("127.0.0.1:4701"),
//		Addresses: []netip.Prefix{netip.MustParsePrefix("10.99.0.1/30")},
//	}}})
//	defer s.Close()
//	client := &http.Client{Transport: &http.Transport{DialContext: s.DialContext}}
//
// Each tunnel is one NIC, point to point like Linux ipip with remote set:
// its inner addresses' prefixes, its extra routes and an optional default
// route point at it, and the longest prefix wins. Tunnels can be added and
// removed while the stack runs (Stack.AddTunnel, Stack.RemoveTunnel).
//
// # Hubs: many tunnels on one port
//
// Tunnels with the same Local share one set of outer sockets, as Linux's
// FOU port or ipip device serves every tunnel: any number of UDP tunnels
// may use one port, and raw tunnels one address. Each datagram goes to the
// tunnel whose Remote sent it; one from no tunnel's peer is counted once,
// by the socket (Stack.SocketStats), and by no tunnel. A tunnel on a
// shared socket has no receive goroutine or buffer of its own.
//
// # Names
//
// Listen and ListenPacket take IP literals. Dial and DialContext also take
// host names when Config.DNS lists DNS servers reachable through the
// tunnels: the name is looked up through the stack (Stack.Resolver,
// Stack.LookupNetIP), never by the host's resolver, and its addresses are
// tried as net.Dialer does. Without Config.DNS a name fails with ErrNoDNS.
//
// # Typed API
//
// DialTCPAddrPort, ListenTCPAddrPort, DialUDPAddrPort and ListenUDPAddrPort
// take netip.AddrPort and return *gonet.TCPConn (with CloseWrite),
// *TCPListener and *UDPConn (with ReadFromUDPAddrPort and
// WriteToUDPAddrPort), as the net package and wireguard-go's netstack do.
// UDPConn.WriteBatch and ReadBatch move many datagrams (Message) per call,
// as golang.org/x/net/ipv4.PacketConn does for a kernel socket.
// A wildcard listener's Addr reads as net's: [::]:80, 0.0.0.0:80.
//
// # Ephemeral outer ports
//
// Each end of a UDP tunnel needs the other's outer port. To let the kernel
// pick both, bind first and build the stacks second: open each outer
// socket with endpoint.ListenUDP(netip.MustParseAddrPort("127.0.0.1:0"),
// endpoint.SocketOptions{}), read the port it got from its LocalAddr, and
// give each stack its own socket as Tunnel.Conn and the other's LocalAddr as
// Tunnel.Remote. A tunnel whose Local has port 0 also binds a free port;
// Stack.LocalAddr (or TunnelStats.Local) tells which, for the peer's
// configuration.
//
// # Forwarding
//
// Forwarding (Config.Forwarding) is gVisor's, with workarounds for three
// bugs of the gVisor version this module pins (ipv4.go and ipv6.go in
// pkg/tcpip/network); forward.go refers to them as bug 1 to bug 3:
//
//  1. forwardPacketWithRoute recomputes the TCP or UDP checksum of every
//     packet it forwards out of a NIC without TX checksum offload. For a
//     first fragment it sums only that fragment, so the reassembled
//     datagram fails its checksum; in a later IPv4 fragment it overwrites
//     two bytes of data (6-7 or 16-17) taken for a checksum field; and it
//     repairs a packet corrupted on the way, which a router must pass on.
//     The tunnel endpoint therefore declares TX checksum offload and
//     completes the checksums of the packets the stack itself sends
//     (endpoint.TXChecksummer, endpoint/txcsum.go), and forwarded packets
//     leave as they came. A link added with AddLink (the TUN device,
//     gVisor's fdbased) declares no offload of its own: its forwardLink
//     (see 2) declares it instead and completes the checksums with an
//     endpoint.TXChecksummer before the link writes the packets, so
//     that forwarded packets leave the TUN device as they came too.
//  2. An IPv4 router that has to cut a packet which is already a fragment
//     (handleFragments, buildNextFragment) numbers the pieces from offset
//     0 and sets More Fragments only on the pieces it cut, not after them:
//     the destination reassembles garbage. So on a forwarding stack each
//     NIC's link endpoint is wrapped in a forwardLink, which cuts an IPv4
//     packet without DF that is bigger than the MTU of the link it will
//     leave by itself, with offsets counted from the original datagram
//     (RFC 791 §3.2; options whose copy flag is clear go in the first
//     piece only), and hands gVisor pieces that fit. A packet whose data
//     would end past byte 65535 of its datagram, which no valid datagram
//     has, is dropped and counted (ForwardStats.OffsetOverflow): its later
//     pieces would need offsets past the field's 65528 and would wrap.
//  3. forwardUnicastPacket tests the IPv4 TTL for 0 before decrementing
//     it, so a packet that arrives with TTL 1 leaves with TTL 0 and the
//     next hop answers Time Exceeded (IPv6 tests the hop limit for <= 1,
//     as it should). The forwardLink sets the TTL of a packet to be
//     forwarded that arrives with TTL 1 to 0, so that gVisor discards it
//     and answers Time Exceeded from this hop (RFC 1812 §5.3.1). The quote
//     in that message shows TTL 0 where Linux shows 1.
//
// A fourth bug has no workaround here: forwardPacketWithRoute reads the
// TTL through a header slice whose chunk DeepCopyForForwarding has
// released (copy-on-write), a use-after-free that the race detector
// reports when two NICs forward IPv4 at once. The tests that do so skip
// under -race, and `make test` runs them again without it.
//
// IPv6 routers do not fragment (RFC 8200 §4.5): gVisor answers an IPv6
// packet too big for the next link with Packet Too Big. See "UDP and the
// path MTU" for what the sender's side does about it.
//
// # UDP and the path MTU
//
// gVisor's UDP, unlike Linux's, ignores ICMP Fragmentation Needed and
// Packet Too Big and keeps no path MTU per destination (udp/endpoint.go
// HandleError), and its IPv6 fragments to the NIC MTU only (ipv6.go
// writePacket); only its TCP adapts (it lowers its segment size). So a
// datagram bigger than a narrower hop further on would be refused there
// every time. The stack works around it per family:
//
//   - IPv4: UDPConn sends without DF (IP_PMTUDISC_DONT, udpconn.go), so
//     that the narrow hop fragments the datagram (RFC 791).
//   - IPv6, which routers never fragment: the sender's tunnel endpoint
//     keeps the path MTU cache that gVisor lacks (endpoint/pmtu6.go). It
//     learns a destination's MTU from the Packet Too Big it passes to the
//     stack, and cuts the IPv6 packets, other than TCP, that the stack
//     then sends there into fragments that fit. The datagram that drew the
//     Packet Too Big is lost, and the ones after it arrive. A router's
//     forwarded packets are never cut.
package stack
