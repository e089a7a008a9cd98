package stack

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/ipipstack/ipipstack/endpoint"
	"github.com/ipipstack/ipipstack/endpoint/encap"
	gvstack "gvisor.dev/gvisor/pkg/tcpip/stack"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/link/sniffer"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/raw"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
)

// TransportKind selects how a tunnel moves its outer datagrams.
type TransportKind int

const (
	// UDP carries each inner packet as the payload of a UDP datagram
	// (Linux FOU). It needs no privileges.
	UDP TransportKind = iota
	// Raw sends real IP-in-IP (protocol 4 / 41) over raw sockets; it needs
	// CAP_NET_RAW.
	Raw
)

func (k TransportKind) String() string {
	switch k {
	case UDP:
		return "udp"
	case Raw:
		return "raw"
	}
	return "transport(?)"
}

// Tunnel configures one tunnel, that is one NIC of the stack.
type Tunnel struct {
	// Name identifies the tunnel in errors, logs and Stats. Required and
	// unique.
	Name string
	// Transport is UDP (the default) or Raw.
	Transport TransportKind
	// Local is the outer address to bind: address and port for UDP (port
	// 0 picks one), address only for Raw. Tunnels with the same Local
	// share one set of sockets, which hands each datagram to the tunnel
	// whose peer sent it (see shared.go and Stack.SocketStats): any number
	// of UDP tunnels may use one port, as Linux's FOU port does, and raw
	// tunnels one address, as Linux's ipip does. They need distinct
	// Remotes, at most one of them may roam, and they must agree on the
	// socket options (SocketBuffer, Policy.DF clear or not, DisableGSO,
	// DisableGRO, ZeroUDPChecksum). A tunnel with Conn or Wrap, or with
	// port 0, has sockets of its own.
	Local netip.AddrPort
	// Remote is the peer's outer address: address and port for UDP,
	// address only for Raw. Same family as Local.
	Remote netip.AddrPort
	// Addresses are the inner addresses of this end, with the prefix of
	// the link (10.99.0.1/30). Each prefix becomes an on-link route.
	Addresses []netip.Prefix
	// Routes are further inner prefixes reached through this tunnel.
	Routes []netip.Prefix
	// DefaultRoute adds 0.0.0.0/0 and ::/0 (for the families that
	// Addresses has) through this tunnel.
	DefaultRoute bool
	// AllowedSources are the inner source prefixes accepted from the peer.
	// Nil means the prefixes of Addresses and Routes, or any source if
	// DefaultRoute is set.
	AllowedSources []netip.Prefix
	// MTU is the inner MTU; 0 derives it from PathMTU and the overhead
	// (1480 for raw over IPv4, 1472 for UDP over IPv4 on a 1500-byte path).
	MTU int
	// PathMTU is the outer path MTU; 0 means 1500.
	PathMTU int
	// PathMTUExpiry is how long a lower outer path MTU, learned when the
	// kernel refuses a datagram as too big, holds the tunnel MTU down
	// before the tunnel asks the kernel again; 0 means 10 minutes (see
	// endpoint.Options.PathMTUExpiry).
	PathMTUExpiry time.Duration
	// Policy sets the outer TTL, ToS, DF and IPv6 encapsulation limit; the
	// zero value is Linux ipip's default (see encap.Policy).
	Policy encap.Policy
	// Roaming accepts a peer whose outer address changes: datagrams on
	// its Local that no other tunnel's peer sent go to it. A Raw tunnel
	// with a socket of its own (Wrap) that does not roam receives from
	// Remote only: its raw sockets are connected to it (see
	// endpoint.SocketOptions.Peer), which needs a route to Remote when the
	// tunnel starts.
	Roaming bool
	// AnySourcePort accepts UDP from the peer's address on any port (Linux
	// FOU with encap-sport auto).
	AnySourcePort bool
	// SocketBuffer sizes the outer sockets' buffers; 0 means
	// endpoint.DefaultSocketBuffer (16 MiB).
	SocketBuffer int
	// Capture, if set, receives every inner packet of the tunnel in pcap
	// format, as the stack hands it to the tunnel: TCP and UDP packets the
	// stack sends itself show checksum 0 (see endpoint/txcsum.go).
	Capture io.Writer
	// DisableGSO and DisableGRO turn the segmentation offloads off (see
	// endpoint.Options); they are on by default. GRO's coalescing is
	// always off in a forwarding stack, whose packets leave again.
	DisableGSO, DisableGRO bool
	// ZeroUDPChecksum sends outer UDP datagrams over IPv4 with checksum 0,
	// like Linux FOU by default; the peer then verifies every inner
	// checksum in software, and UDP GSO is off.
	ZeroUDPChecksum bool
	// MaxNesting is how many inner tunnel headers addressed back to this
	// tunnel's outer address an inner packet may carry; deeper nesting is
	// dropped as recursion. 0 means 4, negative none (see
	// endpoint.Options.MaxNesting).
	MaxNesting int
	// Wrap, if set, wraps the transport the stack opens (or Conn): an
	// impairment for trying programs over a bad link, say.
	Wrap func(endpoint.Transport) endpoint.Transport
	// Filter, if set, filters the packets arriving from the tunnel, both
	// forwarded and addressed to the stack, statefully (see filter.go and
	// Filter); nil (the default) lets every packet in. New reads it once.
	Filter *Filter
	// Conn, if set, is used instead of opening a socket from Transport and
	// Local: a socket bound before New (see "Ephemeral outer ports" in the
	// package doc), or an in-memory or impaired transport for tests and
	// benchmarks. The stack owns it from New on.
	Conn endpoint.Transport
}

// Config configures a Stack.
type Config struct {
	// Tunnels are the stack's NICs. At least one is required.
	Tunnels []Tunnel
	// TCP tunes the stack's TCP; its zero value is the tuned default.
	TCP TCPOptions
	// Forwarding makes the stack a router between its NICs.
	Forwarding bool
	// Routes are further routes, added after the tunnels' own (see
	// Route and Stack.AddRoute).
	Routes []Route
	// Logger receives the stack's logs; nil discards them.
	Logger *slog.Logger
	// ReassemblyTimeout is how long the fragments of an incomplete IP
	// datagram are kept after the first of them arrived, for IPv4 and
	// IPv6 alike; then they are dropped, with ICMP Time Exceeded (code 1)
	// to the source if fragment zero was among them. 0 keeps gVisor's
	// defaults, 30 s for IPv4 and 60 s for IPv6 (RFC 8200 section 4.5);
	// otherwise 1 ms to 1 h.
	ReassemblyTimeout time.Duration
	// DNS are the DNS servers that Resolver, LookupNetIP and a Dial by
	// host name ask, through the tunnels (10.99.0.2:53); they are tried in
	// order (see Resolver). Nil (the default) means no DNS: a host name
	// then fails with ErrNoDNS, and the host's resolver is never asked.
	DNS []netip.AddrPort
	// ReassemblyMemory bounds the memory each family's IP reassembly
	// holds, counted as whole fragment packets plus gVisor's bookkeeping;
	// past it the oldest incomplete datagrams are dropped until a quarter
	// is free. 0 means 4 MiB; otherwise 128 KiB to 1 GiB. See
	// Stack.ReassemblyBytes.
	ReassemblyMemory int
	// UDPReceiveBuffer is the default receive buffer of the stack's UDP
	// (and ICMP and raw) sockets, in bytes; 0 means 4 MiB. gVisor's own
	// default, 212 KiB, overflows whenever the reading goroutine is not
	// scheduled for a moment while the stack delivers a burst.
	UDPReceiveBuffer int
}

// DefaultUDPReceiveBuffer is Config.UDPReceiveBuffer's default.
const DefaultUDPReceiveBuffer = 4 << 20

// nicQueueLen is the length of each tunnel NIC's queue, in packets. A UDP
// socket blocks its writer once its send buffer (212 KiB, charged at about
// 100 bytes per small datagram) is in flight; the queue must hold more
// than that, or a fast writer's datagrams are dropped at the queue instead
// of the writer being held back.
const nicQueueLen = 4096

// Defaults of TCPOptions' zero values. The daemon's configuration leaves
// them to these, so that the library and the daemon share one set.
const (
	// DefaultCongestionControl is gVisor's (and Linux's) default. Against
	// reno, BenchmarkTCPStream (bench/, loopback, 3 runs of 2 s on a
	// busy 2-core machine) measured within the noise: medians 3.3 vs 2.2
	// Gbit/s over UDP at MTU 1472, 2.1 vs 2.7 at MTU 65000, 0.6 vs 1.0
	// raw, 2.9 vs 3.2 in memory. Cubic grows its window faster on the
	// longer paths a tunnel often crosses, where reno's linear growth
	// shows.
	DefaultCongestionControl = "cubic"
	// DefaultTCPBuffer is the largest a TCP socket's send or receive
	// buffer grows to, from 1 MiB (or less, if it is lower) at the start.
	// gVisor's own maximum is 4 MiB.
	DefaultTCPBuffer = 8 << 20
	// DefaultTCPMinRTO is the lowest retransmission timeout (see
	// TCPOptions.MinRTO).
	DefaultTCPMinRTO = 20 * time.Millisecond
)

// TCPOptions tune gVisor's TCP. Zero values pick the defaults noted.
type TCPOptions struct {
	// DisableSACK turns selective acknowledgements off (on by default).
	DisableSACK bool
	// CongestionControl is "reno" or "cubic"; "" means
	// DefaultCongestionControl.
	CongestionControl string
	// SendBuffer and ReceiveBuffer are the maximum socket buffer sizes,
	// which auto-tuning grows a socket's buffer to from 1 MiB (or the
	// maximum, if lower); 0 means DefaultTCPBuffer (8 MiB).
	SendBuffer, ReceiveBuffer int
	// DisableModerateReceiveBuffer turns receive buffer auto-tuning off
	// (on by default).
	DisableModerateReceiveBuffer bool
	// MinRTO is the lowest retransmission timeout; 0 means
	// DefaultTCPMinRTO (20 ms).
	// gVisor's own floor, 200 ms like Linux's, leaves TCP waiting on
	// timers after losses on the short paths a tunnel often is: at 1 %
	// loss over loopback it moved 25 Mbit/s, against 150 with 20 ms.
	MinRTO time.Duration
	// Keepalive, if positive, turns TCP keepalive on for every connection
	// that Dial makes and that a Listen listener accepts: after Keepalive
	// without traffic the stack probes the peer, every Keepalive/3 (at
	// least a second), and resets the connection after KeepaliveCount
	// probes go unanswered, as a peer that restarted and lost the
	// connection does (it answers with a reset, which ends the connection
	// at once). 0 (the default) leaves keepalive off, as gVisor does.
	Keepalive time.Duration
}

// KeepaliveCount is how many unanswered TCP keepalive probes reset a
// connection (see TCPOptions.Keepalive); Linux's default is 9.
const KeepaliveCount = 3

// Stack is a userspace TCP/IP stack whose NICs are IPIP tunnels. Its
// methods are safe for concurrent use.
type Stack struct {
	gv         *gvstack.Stack
	log        *slog.Logger
	forwarding bool
	keepalive  time.Duration // TCPOptions.Keepalive; read-only after New
	reasm      reassembly    // set in New, then read-only
	dns        resolver      // resolve.go; set in New, then read-only
	fwd        forwarding    // forward.go

	// mu guards the fields below.
	mu      sync.Mutex
	tunnels []*tunnel
	links   []gvstack.LinkEndpoint // added by AddLink
	nextNIC tcpip.NICID
	closed  bool
	// linkNICs names the NICs added by AddLink, and linkEPs their link
	// endpoints as gVisor has them (wrapped for forwarding, say).
	linkNICs map[string]tcpip.NICID
	linkEPs  map[string]gvstack.LinkEndpoint

	// tunnelChange serializes AddTunnel and RemoveTunnel (tunnels.go),
	// which take mu and routeMu themselves.
	tunnelChange sync.Mutex

	// routeMu guards the route table (route.go). It is not held with mu.
	routeMu sync.Mutex
	// routes is every route of the stack, by prefix (route.go).
	routes routeTable

	// sharedMu guards shared, the outer sockets tunnels share
	// (shared.go), and sharedClosed, set once Close closed them. It is
	// not held with mu.
	sharedMu     sync.Mutex
	shared       map[sharedKey]*sharedSocket
	sharedClosed bool
}

type tunnel struct {
	name   string
	nic    tcpip.NICID
	ep     *endpoint.Endpoint
	filter *tunnelFilter // nil without Tunnel.Filter
	addrs  []netip.Prefix
	routes []netip.Prefix
	// link is the NIC's link endpoint as gVisor has it (ep wrapped for
	// capture and forwarding), for RemoveTunnel.
	link gvstack.LinkEndpoint
	// shared is the socket the tunnel joined (shared.go); nil if it has
	// a transport of its own.
	shared *sharedSocket
}

// New builds a stack with one NIC per tunnel and starts it. On error
// nothing is left open: every Tunnel.Conn given is closed, whichever step
// failed.
func New(cfg Config) (_ *Stack, err error) {
	if len(cfg.Tunnels) == 0 {
		return nil, errors.New("stack: no tunnels configured")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	gv := gvstack.New(gvstack.Options{
		NetworkProtocols:   []gvstack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
		TransportProtocols: []gvstack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4, icmp.NewProtocol6},
		HandleLocal:        true,
		// Raw ICMP endpoints, for Traceroute to read Time Exceeded; only
		// code in this process can open one.
		RawFactory: raw.EndpointFactory{},
	})
	s := &Stack{gv: gv, log: log, forwarding: cfg.Forwarding, keepalive: cfg.TCP.Keepalive}
	// handed counts the tunnels given to addTunnel, which closes their
	// Conn itself on error; the Conns of the others are closed here.
	handed := 0
	defer func() {
		if err != nil {
			closeConns(cfg.Tunnels[handed:])
			s.Close()
		}
	}()
	if err := s.setupResolver(cfg.DNS); err != nil {
		return nil, err
	}
	if err := s.setupReassembly(&cfg, findFragState); err != nil {
		return nil, err
	}
	if err := s.setUDPReceiveBuffer(cfg.UDPReceiveBuffer); err != nil {
		return nil, err
	}
	if err := s.tuneTCP(cfg.TCP); err != nil {
		return nil, err
	}
	for _, p := range []tcpip.NetworkProtocolNumber{ipv4.ProtocolNumber, ipv6.ProtocolNumber} {
		if terr := gv.SetForwardingDefaultAndAllNICs(p, cfg.Forwarding); terr != nil {
			return nil, fmt.Errorf("stack: forwarding: %s", terr)
		}
	}
	names := map[string]bool{}
	for i := range cfg.Tunnels {
		t := &cfg.Tunnels[i]
		if t.Name == "" {
			return nil, fmt.Errorf("stack: tunnel %d has no name", i)
		}
		if names[t.Name] {
			return nil, fmt.Errorf("stack: tunnel %q defined twice", t.Name)
		}
		names[t.Name] = true
		s.nextNIC++
		handed++
		if err := s.addTunnel(t, s.nextNIC); err != nil {
			return nil, err
		}
	}
	for _, r := range cfg.Routes {
		if err := s.AddRoute(r); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// closeConns closes the caller-supplied transports of tunnels that New
// did not get to, when it fails: the stack owns every Conn from New on.
func closeConns(tunnels []Tunnel) {
	for i := range tunnels {
		if c := tunnels[i].Conn; c != nil {
			c.Close()
		}
	}
}

func (s *Stack) tuneTCP(o TCPOptions) error {
	sack := tcpip.TCPSACKEnabled(!o.DisableSACK)
	cc := tcpip.CongestionControlOption(o.CongestionControl)
	if cc == "" {
		cc = DefaultCongestionControl
	}
	if cc != "reno" && cc != "cubic" {
		return fmt.Errorf("stack: congestion control %q: want reno or cubic", o.CongestionControl)
	}
	sndMax, rcvMax := o.SendBuffer, o.ReceiveBuffer
	if sndMax == 0 {
		sndMax = DefaultTCPBuffer
	}
	if rcvMax == 0 {
		rcvMax = DefaultTCPBuffer
	}
	moderate := tcpip.TCPModerateReceiveBufferOption(!o.DisableModerateReceiveBuffer)
	minRTO := tcpip.TCPMinRTOOption(o.MinRTO)
	if minRTO <= 0 {
		minRTO = tcpip.TCPMinRTOOption(DefaultTCPMinRTO)
	}
	opts := []tcpip.SettableTransportProtocolOption{
		&sack, &cc, &moderate, &minRTO,
		&tcpip.TCPSendBufferSizeRangeOption{Min: 4096, Default: min(1<<20, sndMax), Max: sndMax},
		&tcpip.TCPReceiveBufferSizeRangeOption{Min: 4096, Default: min(1<<20, rcvMax), Max: rcvMax},
	}
	for _, opt := range opts {
		if terr := s.gv.SetTransportProtocolOption(tcp.ProtocolNumber, opt); terr != nil {
			return fmt.Errorf("stack: TCP option %T: %s", opt, terr)
		}
	}
	return nil
}

// setUDPReceiveBuffer sets the default receive buffer of non-TCP sockets.
func (s *Stack) setUDPReceiveBuffer(n int) error {
	if n == 0 {
		n = DefaultUDPReceiveBuffer
	}
	if n < gvstack.MinBufferSize || n > maxUDPReceiveBuffer {
		return fmt.Errorf("stack: UDP receive buffer %d bytes: want %d to %d", n, gvstack.MinBufferSize, maxUDPReceiveBuffer)
	}
	opt := tcpip.ReceiveBufferSizeOption{Min: gvstack.MinBufferSize, Default: n, Max: max(n, gvstack.DefaultMaxBufferSize)}
	if terr := s.gv.SetOption(opt); terr != nil {
		return fmt.Errorf("stack: UDP receive buffer: %s", terr)
	}
	return nil
}

// maxUDPReceiveBuffer bounds Config.UDPReceiveBuffer.
const maxUDPReceiveBuffer = 256 << 20

// addTunnel opens (or takes t.Conn as, or joins the shared socket of
// t.Local for) the tunnel's transport and adds its NIC. On error the
// transport is closed already, or belongs to a tunnel that s.Close closes.
func (s *Stack) addTunnel(t *Tunnel, nic tcpip.NICID) (err error) {
	tr := t.Conn
	var shared *sharedSocket // shared.go
	registered := false
	defer func() {
		// Once registered, removeTunnel or Close leaves the socket.
		if err != nil && shared != nil && !registered {
			s.leaveShared(shared, t.Name)
		}
	}()
	if tr == nil {
		var err error
		sockOpts := endpoint.SocketOptions{Buffer: t.SocketBuffer, DontFragment: t.Policy.DF != encap.DFClear,
			NoGSO: t.DisableGSO, NoGRO: t.DisableGRO, ZeroChecksum: t.ZeroUDPChecksum}
		switch {
		case sharesSocket(t):
			tr, shared, err = s.joinShared(t, sockOpts)
		case t.Transport == UDP:
			tr, err = endpoint.ListenUDP(t.Local, sockOpts)
		case t.Transport == Raw:
			sockOpts.Peer = rawPeer(t)
			tr, err = endpoint.ListenRaw(t.Local.Addr(), sockOpts)
		default:
			err = fmt.Errorf("unknown transport %v", t.Transport)
		}
		if err != nil {
			return fmt.Errorf("stack: tunnel %q: %w", t.Name, err)
		}
	}
	if t.Wrap != nil {
		tr = t.Wrap(tr)
	}
	allowed := t.AllowedSources
	if allowed == nil && !t.DefaultRoute {
		for _, a := range t.Addresses {
			allowed = append(allowed, a.Masked())
		}
		allowed = append(allowed, t.Routes...)
	}
	ep, err := endpoint.New(endpoint.Options{
		Name:           t.Name,
		Transport:      tr,
		Remote:         t.Remote,
		MTU:            uint32(t.MTU),
		PathMTU:        t.PathMTU,
		PathMTUExpiry:  t.PathMTUExpiry,
		IPv4Only:       ipv4Only(t, s.forwarding),
		Policy:         t.Policy,
		AllowedSources: allowed,
		OnLink:         t.Addresses,
		Roaming:        t.Roaming,
		AnySourcePort:  t.AnySourcePort,
		MaxNesting:     t.MaxNesting,
		DisableGSO:     t.DisableGSO,
		DisableGRO:     t.DisableGRO || s.forwarding,
		Logger:         s.log,
	})
	if err != nil {
		tr.Close()
		return fmt.Errorf("stack: tunnel %q: %w", t.Name, err)
	}
	hasV6 := false
	for _, a := range t.Addresses {
		if a.Addr().Is6() {
			hasV6 = true
		}
	}
	if hasV6 && ep.MTU() < endpoint.MinIPv6MTU {
		ep.Close()
		return fmt.Errorf("stack: tunnel %q: MTU %d is below IPv6's minimum of %d", t.Name, ep.MTU(), endpoint.MinIPv6MTU)
	}
	var link gvstack.LinkEndpoint = ep
	if t.Capture != nil {
		// gVisor's sniffer also logs every packet as text unless told
		// not to; the pcap is what the user asked for.
		sniffer.LogPackets.Store(0)
		sn, err := sniffer.NewWithWriter(ep, t.Capture, uint32(endpoint.MaxMTU))
		if err != nil {
			ep.Close()
			return fmt.Errorf("stack: tunnel %q: capture: %w", t.Name, err)
		}
		link = sn
	}
	var filter *tunnelFilter
	if t.Filter != nil {
		if filter, err = newTunnelFilter(t.Filter, t.Name, s.log); err != nil {
			ep.Close()
			return fmt.Errorf("stack: tunnel %q: filter: %w", t.Name, err)
		}
		// Outside the capture, which sees what the peer sent; inside
		// the forwarding workarounds, which then see only what passed.
		link = wrapFilter(link, filter) // filter.go
	}
	link = s.wrapForwarding(link) // forward.go
	// One FIFO queue per NIC batches packets from many writers into one
	// WritePackets call; when it is full, packets are dropped (counted in
	// TunnelStats.QueueDrops) and TCP retransmits, as on a real NIC. It
	// runs a goroutine only while it holds packets (queue.go).
	q := newLazyQueue(link, nicQueueLen)
	if terr := s.gv.CreateNICWithOptions(nic, link, gvstack.NICOptions{Name: t.Name, QDisc: q}); terr != nil {
		ep.Close()
		return fmt.Errorf("stack: tunnel %q: create NIC: %s", t.Name, terr)
	}
	tun := &tunnel{name: t.Name, nic: nic, ep: ep, filter: filter, addrs: t.Addresses, routes: t.Routes, link: link, shared: shared}
	s.mu.Lock()
	if s.closed {
		// Close ran since AddTunnel checked: it did not see this
		// tunnel, so it is closed here.
		s.mu.Unlock()
		ep.Close()
		s.gv.RemoveNIC(nic)
		return fmt.Errorf("stack: tunnel %q: %w", t.Name, ErrClosed)
	}
	s.tunnels = append(s.tunnels, tun)
	s.mu.Unlock()
	registered = true
	if err := s.addAddresses("tunnel "+t.Name, t.Name, nic, t.Addresses); err != nil {
		return err
	}
	for _, r := range t.Routes {
		s.addSystemRoute(t.Name, nic, r)
	}
	if t.DefaultRoute {
		has4, has6 := false, false
		for _, a := range t.Addresses {
			has4, has6 = has4 || a.Addr().Is4(), has6 || a.Addr().Is6()
		}
		if has4 {
			s.addSystemRoute(t.Name, nic, netip.MustParsePrefix("0.0.0.0/0"))
		}
		if has6 {
			s.addSystemRoute(t.Name, nic, netip.MustParsePrefix("::/0"))
		}
	}
	s.log.Info("tunnel up", "tunnel", t.Name, "transport", t.Transport.String(), "local", ep.LocalAddr(),
		"remote", ep.Remote(), "mtu", ep.MTU(), "addresses", fmt.Sprint(t.Addresses))
	return nil
}

// rawPeer is the outer address the raw sockets of t receive from: its
// peer's, so that raw tunnels sharing a local address do not see each
// other's packets, or any address (the zero value) if the peer may roam.
func rawPeer(t *Tunnel) netip.Addr {
	if t.Roaming {
		return netip.Addr{}
	}
	return t.Remote.Addr()
}

// ipv4Only reports whether no inner IPv6 can cross t: it has no IPv6
// address or route, and the stack does not forward (a router may send
// IPv6 over a tunnel of IPv4 addresses). Only then may its MTU follow the
// outer path below IPv6's minimum (endpoint.Options.IPv4Only).
func ipv4Only(t *Tunnel, forwarding bool) bool {
	if forwarding {
		return false
	}
	for _, a := range t.Addresses {
		if a.Addr().Is6() {
			return false
		}
	}
	for _, r := range t.Routes {
		if r.Addr().Is6() {
			return false
		}
	}
	return true
}

// Close stops the stack: every connection and listener of it fails, every
// tunnel socket is closed and every goroutine it started has returned.
func (s *Stack) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	tunnels, links := s.tunnels, s.links
	s.mu.Unlock()
	// Close the tunnels first: that stops their receive goroutines, which
	// gVisor's Wait waits for before it closes link endpoints itself.
	for _, t := range tunnels {
		t.ep.Close()
	}
	s.closeShared() // shared.go: the sockets the tunnels shared
	for _, l := range links {
		l.Close()
	}
	s.gv.Close()
	s.gv.Wait()
	return nil
}

// GVisor returns the underlying gVisor stack, for what this API does not
// cover (adding a TUN NIC, say). Changes made through it are the caller's
// to keep consistent.
func (s *Stack) GVisor() *gvstack.Stack { return s.gv }

// TunnelStats is a tunnel's name, MTU and counters.
type TunnelStats struct {
	Name  string
	MTU   uint32
	Local netip.AddrPort
	endpoint.Stats
	// QueueDrops counts the packets that the queue in front of the
	// tunnel (nicQueueLen packets) dropped because it was full: gVisor's
	// TxPacketsDroppedNoBufferSpace of the tunnel's NIC. They never
	// reached the endpoint, so Drops does not count them.
	QueueDrops uint64
	// Filter counts what the tunnel's filter did; its Denied is also in
	// Drops[encap.Filtered]. Zero without a filter.
	Filter FilterStats
}

// Stats returns the counters of every tunnel, in configuration order.
func (s *Stack) Stats() []TunnelStats {
	nics := s.gv.NICInfo() // before mu: gVisor's locks are never taken under it
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]TunnelStats, 0, len(s.tunnels))
	for _, t := range s.tunnels {
		ts := TunnelStats{Name: t.name, MTU: t.ep.MTU(), Local: t.ep.LocalAddr(), Stats: t.ep.Stats()}
		ts.Filter = t.filter.stats()
		ts.Drops[encap.Filtered] += ts.Filter.Denied
		if info, ok := nics[t.nic]; ok {
			ts.QueueDrops = info.Stats.TxPacketsDroppedNoBufferSpace.Value()
		}
		out = append(out, ts)
	}
	return out
}

// Endpoint returns the link endpoint of the named tunnel, or nil.
func (s *Stack) Endpoint(name string) *endpoint.Endpoint {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, t := range s.tunnels {
		if t.name == name {
			return t.ep
		}
	}
	return nil
}

func protoOf(a netip.Addr) tcpip.NetworkProtocolNumber {
	if a.Is4() || a.Is4In6() {
		return ipv4.ProtocolNumber
	}
	return ipv6.ProtocolNumber
}

func tcpipAddr(a netip.Addr) tcpip.Address {
	if a.Is4() || a.Is4In6() {
		return tcpip.AddrFrom4(a.Unmap().As4())
	}
	return tcpip.AddrFrom16(a.As16())
}

func subnet(p netip.Prefix) tcpip.Subnet {
	p = p.Masked()
	sn, err := tcpip.NewSubnet(tcpipAddr(p.Addr()), tcpip.MaskFromBytes(maskBytes(p)))
	if err != nil {
		panic(fmt.Sprintf("stack: subnet %v: %v", p, err)) // a masked prefix is always valid
	}
	return sn
}

func maskBytes(p netip.Prefix) []byte {
	n := 4
	if p.Addr().Is6() {
		n = 16
	}
	m := make([]byte, n)
	for i := 0; i < p.Bits(); i++ {
		m[i/8] |= 0x80 >> (i % 8)
	}
	return m
}

// AddLink adds a NIC of the caller's, such as a TUN device, to the stack:
// addrs are its addresses (with the on-link prefix, which becomes a route)
// and routes further prefixes reached through it. The stack owns ep from
// then on and closes it in Close or RemoveLink, even if AddLink fails.
// name must not be that of a tunnel or of another link (ErrLinkExists);
// once RemoveLink has removed a link, its name is free again. With
// Config.Forwarding set, packets are routed between it and the tunnels.
func (s *Stack) AddLink(name string, ep gvstack.LinkEndpoint, addrs, routes []netip.Prefix) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ep.Close()
		return fmt.Errorf("stack: add link %q: %w", name, ErrClosed)
	}
	if s.nameTakenLocked(name) {
		s.mu.Unlock()
		ep.Close()
		return fmt.Errorf("stack: add link %q: %w", name, ErrLinkExists)
	}
	s.nextNIC++
	nic := s.nextNIC
	s.links = append(s.links, ep)
	if s.linkNICs == nil {
		s.linkNICs = map[string]tcpip.NICID{}
		s.linkEPs = map[string]gvstack.LinkEndpoint{}
	}
	s.linkNICs[name] = nic
	link := s.wrapForwarding(ep)
	s.linkEPs[name] = link
	s.mu.Unlock()
	if terr := s.gv.CreateNICWithOptions(nic, link, gvstack.NICOptions{Name: name}); terr != nil {
		return fmt.Errorf("stack: add link %q: %s", name, terr)
	}
	if err := s.addAddresses(name, name, nic, addrs); err != nil {
		return err
	}
	for _, r := range routes {
		s.addSystemRoute(name, nic, r)
	}
	return nil
}

// addAddresses assigns addrs to nic and adds their on-link routes, which
// point at the tunnel or link named route.
func (s *Stack) addAddresses(name, route string, nic tcpip.NICID, addrs []netip.Prefix) error {
	for _, a := range addrs {
		if !a.IsValid() {
			return fmt.Errorf("stack: %q: invalid address", name)
		}
		pa := tcpip.ProtocolAddress{
			Protocol:          protoOf(a.Addr()),
			AddressWithPrefix: tcpip.AddressWithPrefix{Address: tcpipAddr(a.Addr()), PrefixLen: a.Bits()},
		}
		if terr := s.gv.AddProtocolAddress(nic, pa, gvstack.AddressProperties{}); terr != nil {
			return fmt.Errorf("stack: %q: address %v: %s", name, a, terr)
		}
		s.addSystemRoute(route, nic, a)
	}
	return nil
}
