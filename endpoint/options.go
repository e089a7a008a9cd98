package endpoint

import (
	"log/slog"
	"net/netip"
	"time"

	"github.com/ipipstack/ipipstack/endpoint/encap"
)

// MTU limits (RFC 791 §3.2, RFC 8200 §5).
const (
	MinMTU     = 68
	MinIPv6MTU = 1280
	MaxMTU     = 65535
)

// DefaultPathMTU is the outer path MTU assumed when none is given.
const DefaultPathMTU = 1500

// Overhead is the number of bytes the outer headers of a tunnel take:
// 20 for an IPv4 outer header, 40 for IPv6 (48 with the RFC 2473
// encapsulation limit option), plus 8 for UDP.
func Overhead(framing Framing, outerV6 bool, p encap.Policy) int {
	n := encap.IPv4HeaderLen
	if outerV6 {
		n = encap.IPv6HeaderLen
		if framing == FramingRawIPv6 && p.UseEncapLimit {
			n += encap.EncapLimitLen
		}
	}
	if framing == FramingUDP {
		n += encap.UDPHeaderLen
	}
	return n
}

// Options configure an Endpoint.
type Options struct {
	// Name identifies the tunnel in logs.
	Name string
	// Transport moves the outer datagrams. Required; the Endpoint owns it.
	Transport Transport
	// Remote is the peer's outer address (port 0 for raw transports).
	Remote netip.AddrPort
	// MTU is the inner MTU. 0 derives it: PathMTU minus Overhead.
	MTU uint32
	// PathMTU is the outer path MTU; 0 means DefaultPathMTU.
	PathMTU int
	// PathMTUExpiry is how long a lower outer path MTU learned from the
	// kernel holds the tunnel MTU down (pmtu.go); then the endpoint asks
	// the kernel again and goes back up as far as it allows. 0 means
	// DefaultPathMTUExpiry (RFC 1191 §6.3, Linux's mtu_expires).
	PathMTUExpiry time.Duration
	// IPv4Only says that the tunnel carries no inner IPv6, so its MTU may
	// follow the outer path below IPv6's minimum of 1280 bytes. Off (the
	// default), an MTU of 1280 or more is never lowered below 1280: outer
	// packets the path cannot carry leave without DF and are fragmented
	// on the way, as Linux sit does (pmtu.go).
	IPv4Only bool
	// Policy sets the outer TTL, ToS, DF and encapsulation limit; its zero
	// value is Linux ipip's default.
	Policy encap.Policy
	// AllowedSources are the inner source prefixes accepted from the peer;
	// packets from elsewhere are dropped as SpoofedSource. Nil accepts any
	// source that is not martian.
	AllowedSources []netip.Prefix
	// OnLink are the inner prefixes of the tunnel's own link (the local
	// inner addresses with their prefix lengths): a packet whose inner
	// source is in one of them was originated by the peer, not forwarded,
	// so a non-zero outer UDP checksum that the kernel verified covers
	// exactly the bytes the peer sent, and the endpoint need not verify
	// the inner checksum again. Every other packet is verified in
	// software (see rxcsum.go). Nil verifies everything in software.
	OnLink []netip.Prefix
	// MaxNesting is how many tunnel headers addressed back to this
	// endpoint (IP-in-IP, or FOU to its own UDP port, whose destination is
	// its outer address; see encap.NestingDepth) an inner packet may carry
	// inside it; packets nesting more are dropped as Recursion. 0 means
	// encap.DefaultMaxNesting (4); a negative value allows none. An inner
	// packet that is itself addressed to the outer address is always
	// dropped.
	MaxNesting int
	// Roaming lets the peer's outer address change: a valid packet from a
	// new address makes it the destination of what we send. Off, such
	// packets are dropped as WrongPeer.
	Roaming bool
	// AnySourcePort accepts UDP datagrams from the peer's address whatever
	// their source port (Linux FOU with encap-sport auto picks one per
	// flow). Replies still go to Remote's port.
	AnySourcePort bool
	// BatchSize is the number of datagrams read or written per system
	// call; 0 means 64.
	BatchSize int
	// DisableGSO stops the stack from handing the endpoint 64 KiB TCP
	// super-segments (host GSO), which the endpoint cuts into wire-size
	// packets and, where the transport has UDP GSO, sends in as few calls
	// as the kernel's limits of one UDP_SEGMENT send allow (64 datagrams,
	// 65,507 bytes). If the kernel refuses UDP GSO at run time, the
	// endpoint sends plain datagrams from then on (Stats.TxGSORefused).
	DisableGSO bool
	// DisableGRO turns off receive offloads: UDP GRO on the socket and
	// gVisor's coalescing of TCP segments before TCP.
	DisableGRO bool
	// Logger receives the endpoint's logs; nil discards them.
	Logger *slog.Logger
}
