// Package config loads the HCL configuration file of the ipipstack daemon
// and turns it into validated, typed values: [netip.Addr], [netip.Prefix],
// [netip.AddrPort], [time.Duration], integers and typed enums.
//
// It builds nothing that runs: the daemon maps a [Config] onto the options of
// the stack, endpoint and service packages. It never imports gVisor.
//
// # Usage
//
//	var p config.Parser
//	cfg, diags := p.Load("/etc/ipipstack.hcl")
//	if len(diags) > 0 {
//		p.WriteDiagnostics(os.Stderr, diags, term.IsTerminal(2))
//	}
//	if diags.HasErrors() {
//		os.Exit(1)
//	}
//
// Every problem is reported as an [*hcl.Diagnostic] whose Subject points at
// the offending attribute, list element, label or block (file:line:col);
// loading never panics and never returns a bare Go error. Parse returns a nil
// *Config exactly when the diagnostics contain an error; warnings may
// accompany a valid Config.
//
// The file format, with every block, attribute and default, is documented in
// examples/README.md. Besides literals, attribute values may call env("NAME")
// or env("NAME", "default") to read the environment, and a few standard
// functions: format, join, concat, lower, upper, trimspace, min and max.
//
// A file larger than [MaxFileSize], nested deeper than [MaxNesting] or with
// an expression chaining more than [MaxChain] operators is refused with one
// diagnostic before HCL parses it, so that no file can crash or starve the
// process; [WriteDiagnostics] prints at most [MaxPrintedDiagnostics].
//
// Parse fills in every default that is a constant, so a field holds what the
// daemon should use; values that depend on other fields are computed by
// methods such as [Tunnel.EffectiveMTU] and [Tunnel.AllowedSourcePrefixes].
// The exception is the TCP tuning of [Stack]: an absent tcp_congestion,
// tcp_send_buffer, tcp_receive_buffer or tcp_min_rto stays zero, which the
// daemon passes on to package stack as "its default", so that the library
// and the daemon share one definition of them (stack.DefaultTCPMinRTO and
// the rest; this package may not import stack).
package config

import (
	"log/slog"
	"net/netip"
	"strconv"
	"time"
)

// Defaults applied by Parse when an attribute is absent.
const (
	DefaultStatusListen   = "127.0.0.1:9100"
	DefaultPathMTU        = 1500
	DefaultEncapLimit     = 4 // RFC 2473 section 6.7 recommends 4; Linux ip6tnl uses it too.
	DefaultMaxConnections = 1024
	DefaultUDPIdleTimeout = 60 * time.Second
	// DefaultDialTimeout bounds each dial of a forward, reverse forward
	// or SOCKS5 CONNECT: a peer that is not running answers nothing.
	DefaultDialTimeout        = 10 * time.Second
	DefaultReassemblyTimeout  = 30 * time.Second // Linux net.ipv4.ipfrag_time
	DefaultReassemblyMemory   = 4 << 20          // Linux net.ipv4.ipfrag_high_thresh
	DefaultTUNName            = "ipip0"
	DefaultTCPKeepalive       = 30 * time.Second
	DefaultTCPKeepaliveCount  = 3
	EncapLimitNone            = -1   // Tunnel.EncapLimit value: no encapsulation limit option.
	minIPv4MTU                = 68   // RFC 791: every IPv4 module must forward 68 octets unfragmented.
	minIPv6MTU                = 1280 // RFC 8200 section 5.
	maxMTU                    = 65535
	ipv4OuterOverhead         = 20 // IPv4 header without options.
	ipv6OuterOverhead         = 40 // IPv6 fixed header.
	encapLimitOptionOverhead  = 8  // Destination options header carrying the RFC 2473 option.
	udpOverhead               = 8
	maxConnectionsLimit       = 1 << 20
	minBufferSize             = 4 << 10
	maxBufferSize             = 1 << 30
	minReassemblyMemory       = 128 << 10 // one maximal datagram must fit, as gVisor counts it.
	maxSOCKS5CredentialLength = 255       // RFC 1929: ULEN and PLEN are one octet.
	maxInterfaceName          = 15        // Linux IFNAMSIZ minus the NUL.
)

// Config is a whole ipipstack configuration file. Parse returns it fully
// validated: names are unique, addresses do not collide, every forward target
// is reachable through a tunnel and every reverse listener is on one of the
// stack's addresses.
type Config struct {
	// Log configures the daemon's logger. Default: info level, text format.
	Log Log
	// Status configures the HTTP status server. Default: disabled.
	Status Status
	// Stack tunes gVisor's TCP/IP stack. See Stack for the defaults.
	Stack Stack
	// Tunnels are the tunnel interfaces, in file order. There is at least one.
	Tunnels []Tunnel
	// Forwards are local forwards (host listener → address inside the
	// tunnels), in file order. Default: none.
	Forwards []Forward
	// Reverses are reverse forwards (listener inside the stack → host
	// address), in file order. Default: none.
	Reverses []Reverse
	// SOCKS5 are SOCKS5 proxies on the host that dial inside the stack, in
	// file order. Default: none.
	SOCKS5 []SOCKS5
	// HTTPProxies are HTTP proxies on the host that dial inside the stack,
	// in file order. Default: none.
	HTTPProxies []HTTPProxy
	// TUN is the host TUN device bridged into the stack. nil (the default)
	// means no TUN device.
	TUN *TUN
	// DNS is the dns block: the DNS servers, inside the tunnels, that
	// host names given to SOCKS5 and forward targets are resolved with.
	// nil (the default) means none: SOCKS5 refuses names (unless its
	// resolve = "host") and forward targets must be IP literals.
	DNS *DNS
}

// DNS is the dns block.
type DNS struct {
	// Servers are the DNS servers' addresses inside the tunnels, each
	// reached through some tunnel; port 53 if omitted. At least one.
	Servers []netip.AddrPort
}

// Log is the log block.
type Log struct {
	// Level is the minimum level logged. Zero value: LogInfo.
	Level LogLevel
	// Format is the output format. Zero value: LogText.
	Format LogFormat
}

// LogLevel is a log severity. Its values equal those of [slog.Level], so the
// zero value is LogInfo.
type LogLevel int

// Log levels, as in log/slog.
const (
	LogDebug LogLevel = -4
	LogInfo  LogLevel = 0
	LogWarn  LogLevel = 4
	LogError LogLevel = 8
)

// SlogLevel returns l as a [slog.Level].
func (l LogLevel) SlogLevel() slog.Level { return slog.Level(l) }

func (l LogLevel) String() string {
	switch l {
	case LogDebug:
		return "debug"
	case LogInfo:
		return "info"
	case LogWarn:
		return "warn"
	case LogError:
		return "error"
	}
	return "LogLevel(" + strconv.Itoa(int(l)) + ")"
}

// LogFormat is the log output format.
type LogFormat int

// Log formats.
const (
	LogText LogFormat = iota // slog.TextHandler
	LogJSON                  // slog.JSONHandler
)

// logFormats are the LogFormat names, in order, as the file spells them.
var logFormats = []string{"text", "json"}

func (f LogFormat) String() string { return enumName("LogFormat", logFormats, int(f)) }

// Status is the status block: an HTTP server with JSON at /status and
// Prometheus metrics at /metrics.
type Status struct {
	// Listen is the host address of the server. The zero value (no status
	// block) disables the server; a status block without listen uses
	// DefaultStatusListen.
	Listen netip.AddrPort
}

// Enabled reports whether the status server should run.
func (s Status) Enabled() bool { return s.Listen.IsValid() }

// Stack is the stack block: TCP/IP tuning applied to the whole stack.
type Stack struct {
	// TCPSACK enables TCP selective acknowledgements (RFC 2018). Default true.
	TCPSACK bool
	// TCPCongestion is the TCP congestion control algorithm. Zero value
	// (absent): CongestionDefault, the library's default,
	// stack.DefaultCongestionControl (cubic).
	TCPCongestion Congestion
	// TCPSendBuffer is the maximum TCP send buffer size in bytes, which
	// auto-tuning grows a socket's buffer to from 1 MiB (or this, if
	// lower). 0 (absent) means the library's default,
	// stack.DefaultTCPBuffer (8 MiB).
	TCPSendBuffer int
	// TCPReceiveBuffer is the maximum TCP receive buffer size in bytes,
	// like TCPSendBuffer. 0 (absent) means stack.DefaultTCPBuffer (8 MiB).
	TCPReceiveBuffer int
	// TCPModerateReceiveBuffer enables receive buffer auto-tuning, like
	// Linux net.ipv4.tcp_moderate_rcvbuf. Default true.
	TCPModerateReceiveBuffer bool
	// TCPMinRTO is the lowest TCP retransmission timeout. 0 (absent)
	// means the library's default, stack.DefaultTCPMinRTO (20ms): gVisor's
	// own 200ms floor makes TCP crawl after losses on the short paths
	// tunnels often are.
	TCPMinRTO time.Duration
	// Forwarding makes the stack route packets between its tunnels (and the
	// TUN device) instead of dropping packets not addressed to it. Default
	// false.
	Forwarding bool
	// ReassemblyTimeout bounds how long fragments wait for the rest of
	// their datagram, 1ms to 1h; a datagram whose first fragment came
	// then gets ICMP Time Exceeded. Default DefaultReassemblyTimeout
	// (30s), which leaves IPv6 at RFC 8200's 60s; other values apply to
	// both families.
	ReassemblyTimeout time.Duration
	// ReassemblyMemory bounds the bytes held by IP reassembly, per
	// family; past it the oldest incomplete datagrams are dropped.
	// Default DefaultReassemblyMemory (4 MiB).
	ReassemblyMemory int
	// TCPKeepalive is the idle time after which a forwarded TCP
	// connection (forward, reverse, SOCKS5), on its side inside the
	// stack, starts sending keepalive probes; after DefaultTCPKeepaliveCount
	// unanswered probes, one every TCPKeepalive/3 (at least 1s), the
	// connection is reset, so that one whose peer restarted does not hang
	// forever. Default DefaultTCPKeepalive (30s); 0 ("off") disables it.
	TCPKeepalive time.Duration
}

// Congestion is a TCP congestion control algorithm.
type Congestion int

// TCP congestion control algorithms gVisor implements. CongestionDefault
// leaves the choice to the library (stack.DefaultCongestionControl).
const (
	CongestionDefault Congestion = iota
	CongestionReno
	CongestionCubic
)

// congestions are the Congestion names, in order; the file spells all but
// the first (CongestionDefault is leaving the attribute out).
var congestions = []string{"default", "reno", "cubic"}

func (c Congestion) String() string { return enumName("Congestion", congestions, int(c)) }

// Tunnel is a tunnel block: one point-to-point IPIP link to a peer, which
// becomes one NIC of the stack.
type Tunnel struct {
	// Name is the block label, unique among tunnels.
	Name string
	// Transport carries the outer datagrams. Zero value: TransportUDP.
	Transport Transport
	// Local is the outer local address. Its port is 0 for TransportRaw. An
	// unspecified address (0.0.0.0, ::) binds every host address.
	Local netip.AddrPort
	// Remote is the outer address of the peer, in the same family as Local.
	// Its port is 0 for TransportRaw.
	Remote netip.AddrPort
	// Addresses are the stack's inner addresses on this tunnel, each with
	// the length of its on-link prefix (10.99.0.1/30). At least one.
	Addresses []netip.Prefix
	// Routes are extra masked prefixes reached through this tunnel.
	// Default: none.
	Routes []netip.Prefix
	// DefaultRoute adds the default routes 0.0.0.0/0 and ::/0 through this
	// tunnel. Default false.
	DefaultRoute bool
	// AllowedSources are the masked prefixes that inner source addresses
	// from this peer must fall in. nil (the default) means
	// AllowedSourcePrefixes' default.
	AllowedSources []netip.Prefix
	// MTU is the inner MTU. 0 (the default) means PathMTU minus Overhead;
	// use EffectiveMTU.
	MTU int
	// PathMTU is the MTU of the outer path. Default DefaultPathMTU (1500).
	PathMTU int
	// TTL is the outer TTL or hop limit. Zero value: TTLInherit.
	TTL TTL
	// TOS is the outer ToS or traffic class. Zero value: 0, with the inner
	// ECN bits copied (RFC 6040 normal mode).
	TOS TOS
	// DF is the outer don't-fragment policy. Zero value: DFSet.
	DF DF
	// EncapLimit is the RFC 2473 tunnel encapsulation limit sent in a
	// destination options header, 0..255, for TransportRaw with an IPv6
	// outer only: default DefaultEncapLimit (4). It is EncapLimitNone (-1)
	// when disabled and on every other tunnel.
	EncapLimit int
	// Roaming accepts the peer from a new outer address (and port) and
	// sends to wherever it was last heard from. Default false.
	Roaming bool
	// AnySourcePort accepts UDP datagrams from the peer's address whatever
	// their source port, as Linux FOU with encap-sport auto sends them
	// (one port per flow); replies still go to the remote port. UDP only.
	// Default false.
	AnySourcePort bool
	// Capture is the path of a pcap file receiving the inner packets, as
	// given (relative paths are relative to the daemon's working directory).
	// "" (the default) disables capture.
	Capture string
	// Impair degrades the tunnel's outgoing datagrams on purpose, for tests
	// and demos. nil (no impair block, the default) sends them unimpaired.
	Impair *Impair
	// Filter filters the inner packets arriving from the tunnel (see
	// filter.go). nil (no filter block, the default) lets every packet
	// in, as before filters existed.
	Filter *Filter
	// Keepalive is the interval of the echo requests the daemon sends to
	// the peer's inner address (PeerInner), which keep NAT state alive
	// and tell whether the peer is up; 1s to 1h. 0 (the default) sends
	// none.
	Keepalive time.Duration
	// PeerAddress is the peer's inner address, which keepalive probes.
	// The zero value (the default) means the one PeerInner derives from
	// a point-to-point prefix of Addresses.
	PeerAddress netip.Addr
}

// PeerInner returns the peer's inner address: PeerAddress if set, else
// the other host of the first address of Addresses whose prefix is a
// point-to-point link: /31 or /127 (the other address, RFC 3021), or /30
// (the other of its two host addresses). It returns the zero Addr if
// there is none.
func (t *Tunnel) PeerInner() netip.Addr {
	if t.PeerAddress.IsValid() {
		return t.PeerAddress
	}
	for _, a := range t.Addresses {
		bits, total := a.Bits(), a.Addr().BitLen()
		switch {
		case total-bits == 1: // /31, /127: the other of two
			first := a.Masked().Addr()
			if a.Addr() == first {
				return first.Next()
			}
			return first
		case total == 32 && bits == 30: // network, two hosts, broadcast
			first := a.Masked().Addr().Next()
			switch a.Addr() {
			case first:
				return first.Next()
			case first.Next():
				return first
			}
		}
	}
	return netip.Addr{}
}

// Impair is a tunnel's impair block: loss, reordering, duplication,
// corruption, delay and a rate limit applied to the datagrams this end
// sends (the daemon wraps the tunnel's transport with endpoint/impair).
// Every field's zero value disables its impairment.
type Impair struct {
	// Loss, Reorder, Duplicate and Corrupt are per-datagram probabilities,
	// 0..1: drop it, hold it back behind the next one, send it twice,
	// flip one random bit of it.
	Loss, Reorder, Duplicate, Corrupt float64
	// Delay is added to every datagram, varied uniformly by ±Jitter.
	Delay, Jitter time.Duration
	// Rate limits the bits per second sent (a token bucket that queues,
	// then drops); 0 means no limit.
	Rate int64
	// Seed seeds the random decisions, so that a run can be repeated.
	Seed uint64
}

// Transport is how a tunnel's outer datagrams travel.
type Transport int

// Transports.
const (
	// TransportUDP sends each inner packet as the payload of a UDP datagram
	// (Linux FOU direct encapsulation). It needs no privileges.
	TransportUDP Transport = iota
	// TransportRaw sends real IP-in-IP (IP protocol 4 or 41) over a raw
	// socket. It needs CAP_NET_RAW.
	TransportRaw
)

// transports are the Transport names, in order, as the file spells them.
var transports = []string{"udp", "raw"}

func (t Transport) String() string { return enumName("Transport", transports, int(t)) }

// TTL is an outer TTL (IPv4) or hop limit (IPv6): 1..255, or TTLInherit.
type TTL uint8

// TTLInherit copies the inner packet's TTL or hop limit, like Linux ipip
// with "ttl inherit" (its default).
const TTLInherit TTL = 0

func (t TTL) String() string {
	if t == TTLInherit {
		return "inherit"
	}
	return strconv.Itoa(int(t))
}

// TOS is an outer IPv4 ToS or IPv6 traffic class: 0..255, or TOSInherit.
// With a number, the inner ECN bits are still copied to the outer header
// (RFC 6040 normal mode) and the number's own ECN bits are ignored.
type TOS int

// TOSInherit copies the inner packet's DSCP and ECN bits.
const TOSInherit TOS = -1

func (t TOS) String() string {
	if t == TOSInherit {
		return "inherit"
	}
	return strconv.Itoa(int(t))
}

// DF is the don't-fragment policy of the outer header.
type DF int

// DF policies.
const (
	// DFSet always sets DF on an IPv4 outer header and never fragments an
	// IPv6 outer packet; an inner packet that does not fit is answered with
	// ICMP "fragmentation needed" / "packet too big".
	DFSet DF = iota
	// DFInherit copies DF from an inner IPv4 header (an inner IPv6 packet
	// counts as DF set).
	DFInherit
	// DFClear lets the outer packet be fragmented.
	DFClear
)

// dfPolicies are the DF names, in order, as the file spells them.
var dfPolicies = []string{"set", "inherit", "clear"}

func (d DF) String() string { return enumName("DF", dfPolicies, int(d)) }

// OuterIPv6 reports whether the tunnel's outer header is IPv6.
func (t *Tunnel) OuterIPv6() bool { return t.Local.Addr().Is6() }

// Overhead returns the bytes the encapsulation adds to each inner packet:
// 20 for an IPv4 outer header or 40 for IPv6, plus 8 for the RFC 2473
// encapsulation limit option (raw IPv6 only, as Linux ip6tnl), plus 8 for
// TransportUDP.
func (t *Tunnel) Overhead() int {
	o := ipv4OuterOverhead
	if t.OuterIPv6() {
		o = ipv6OuterOverhead
		if t.Transport == TransportRaw && t.EncapLimit >= 0 {
			o += encapLimitOptionOverhead
		}
	}
	if t.Transport == TransportUDP {
		o += udpOverhead
	}
	return o
}

// EffectiveMTU returns the inner MTU: MTU if set, otherwise PathMTU (1500 if
// 0) minus Overhead. For a 1500-byte path that is 1480 for raw over IPv4,
// 1472 for UDP over IPv4, 1452 for raw over IPv6 with an encapsulation limit
// (1460 without) and 1452 for UDP over IPv6.
func (t *Tunnel) EffectiveMTU() int {
	if t.MTU != 0 {
		return t.MTU
	}
	p := t.PathMTU
	if p == 0 {
		p = DefaultPathMTU
	}
	return p - t.Overhead()
}

// OnLinkPrefixes returns the masked prefixes of Addresses.
func (t *Tunnel) OnLinkPrefixes() []netip.Prefix {
	out := make([]netip.Prefix, 0, len(t.Addresses))
	for _, a := range t.Addresses {
		out = append(out, a.Masked())
	}
	return out
}

var (
	defaultRoute4 = netip.MustParsePrefix("0.0.0.0/0")
	defaultRoute6 = netip.MustParsePrefix("::/0")
)

// RoutePrefixes returns every prefix routed through the tunnel: the on-link
// prefixes, Routes, and 0.0.0.0/0 and ::/0 if DefaultRoute is set.
func (t *Tunnel) RoutePrefixes() []netip.Prefix {
	out := append(t.OnLinkPrefixes(), t.Routes...)
	if t.DefaultRoute {
		out = append(out, defaultRoute4, defaultRoute6)
	}
	return out
}

// Reaches reports whether a packet to addr would be routed through the
// tunnel (by any of RoutePrefixes, not necessarily the longest match).
func (t *Tunnel) Reaches(addr netip.Addr) bool {
	for _, p := range t.RoutePrefixes() {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// AllowedSourcePrefixes returns the prefixes inner source addresses from the
// peer must fall in: AllowedSources if set, otherwise RoutePrefixes (the
// on-link prefixes, the routes, and anything if DefaultRoute is set).
func (t *Tunnel) AllowedSourcePrefixes() []netip.Prefix {
	if t.AllowedSources != nil {
		return append([]netip.Prefix(nil), t.AllowedSources...)
	}
	return t.RoutePrefixes()
}

// HasIPv6Inner reports whether the tunnel has an inner IPv6 address.
func (t *Tunnel) HasIPv6Inner() bool {
	for _, a := range t.Addresses {
		if a.Addr().Is6() {
			return true
		}
	}
	return false
}

// Protocol is the transport protocol of a forward.
type Protocol int

// Protocols.
const (
	TCP Protocol = iota
	UDP
)

// protocols are the Protocol names, in order, as the file spells them.
var protocols = []string{"tcp", "udp"}

func (p Protocol) String() string { return enumName("Protocol", protocols, int(p)) }

// enumName returns names[i], the name of value i of an iota enum type
// named typ, or "typ(i)" for a value without a name.
func enumName(typ string, names []string, i int) string {
	if i >= 0 && i < len(names) {
		return names[i]
	}
	return typ + "(" + strconv.Itoa(i) + ")"
}

// Forward is a forward block: a listener on the host whose connections (TCP)
// or sessions (UDP) are relayed to Target inside the tunnels.
type Forward struct {
	// Name is the block label, unique among forwards.
	Name string
	// Protocol is TCP or UDP. Zero value: TCP.
	Protocol Protocol
	// Listen is the host address to listen on, with a non-zero port.
	Listen netip.AddrPort
	// Target is the address inside the tunnels to relay to; some tunnel
	// reaches it. Zero when TargetName is set.
	Target netip.AddrPort
	// TargetName is the target when it is a host name ("db.internal:5432"),
	// looked up through the dns block's servers at each dial; "" when
	// Target is an IP address. Needs a dns block.
	TargetName string
	// IdleTimeout closes a connection or UDP session idle this long.
	// Default DefaultUDPIdleTimeout (60s) for UDP, 0 (never) for TCP.
	IdleTimeout time.Duration
	// DialTimeout bounds each dial of Target; a connection whose dial
	// fails is closed (a UDP datagram dropped) and the failure logged.
	// Default DefaultDialTimeout (10s).
	DialTimeout time.Duration
	// MaxConnections bounds concurrent connections or UDP sessions.
	// Default DefaultMaxConnections (1024).
	MaxConnections int
	// MaxSessionsPerSource bounds the concurrent UDP sessions of one
	// client IP address (UDP only). Default 0: a quarter of
	// MaxConnections.
	MaxSessionsPerSource int
}

// Reverse is a reverse block: a listener inside the stack whose connections
// or sessions are relayed to Target on the host.
type Reverse struct {
	// Name is the block label, unique among reverses.
	Name string
	// Protocol is TCP or UDP. Zero value: TCP.
	Protocol Protocol
	// Listen is the address inside the stack, with a non-zero port: one of
	// the tunnels' inner addresses, or unspecified (0.0.0.0 or ::) for all
	// of them in that family.
	Listen netip.AddrPort
	// Target is the host address to relay to.
	Target netip.AddrPort
	// TargetName is always "": a reverse target is an IP address on the
	// host. (It makes Reverse convertible to and from Forward.)
	TargetName string
	// IdleTimeout closes a connection or UDP session idle this long.
	// Default DefaultUDPIdleTimeout (60s) for UDP, 0 (never) for TCP.
	IdleTimeout time.Duration
	// DialTimeout bounds each dial of Target; a connection whose dial
	// fails is closed (a UDP datagram dropped) and the failure logged.
	// Default DefaultDialTimeout (10s).
	DialTimeout time.Duration
	// MaxConnections bounds concurrent connections or UDP sessions.
	// Default DefaultMaxConnections (1024).
	MaxConnections int
	// MaxSessionsPerSource bounds the concurrent UDP sessions of one
	// client IP address (UDP only). Default 0: a quarter of
	// MaxConnections.
	MaxSessionsPerSource int
}

// SOCKS5 is a socks5 block: a SOCKS5 proxy (RFC 1928, CONNECT and UDP
// ASSOCIATE) on the host whose connections are dialed inside the stack.
type SOCKS5 struct {
	// Name is the block label, unique among socks5 blocks.
	Name string
	// Listen is the host address to listen on, with a non-zero port.
	Listen netip.AddrPort
	// Username and Password enable RFC 1929 authentication; both are set
	// (1..255 bytes) or both are "" (the default: no authentication).
	Username string
	Password string
	// MaxConnections bounds concurrent client connections. Default
	// DefaultMaxConnections (1024).
	MaxConnections int
	// MaxConnectionsPerClient bounds the concurrent connections of one
	// client IP address. Default 0: a quarter of MaxConnections.
	MaxConnectionsPerClient int
	// DialTimeout bounds each CONNECT's dial (and name resolution);
	// the client gets an error reply when it runs out. Default
	// DefaultDialTimeout (10s).
	DialTimeout time.Duration
	// ResolveOnHost (resolve = "host") resolves the host names clients ask
	// for with the host's resolver, which sees them. The default (resolve =
	// "tunnel") resolves them through the dns block's servers, and without
	// a dns block refuses them (reply 4, host unreachable).
	ResolveOnHost bool
}

// AuthRequired reports whether clients must authenticate.
func (s *SOCKS5) AuthRequired() bool { return s.Username != "" }

// TUN is the tun block: a host TUN device whose packets enter the stack and
// are routed into the tunnels. It needs CAP_NET_ADMIN.
type TUN struct {
	// Name is the interface name. Default DefaultTUNName ("ipip0").
	Name string
	// Addresses are host-side addresses given to the device, with their
	// prefix lengths. Default: none.
	Addresses []netip.Prefix
	// Routes are masked prefixes the host routes into the device. Default:
	// none.
	Routes []netip.Prefix
	// MTU is the device MTU. Default: the smallest EffectiveMTU of the
	// tunnels, so that host packets need no fragmentation in the stack.
	MTU int
}
