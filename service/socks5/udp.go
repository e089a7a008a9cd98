package socks5

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"

	"github.com/ipipstack/ipipstack/service"
)

// MaxDatagram is the largest UDP datagram relayed, header included.
const MaxDatagram = 65535

// maxNameCache bounds an association's cache of resolved names.
const maxNameCache = 256

// association is one UDP ASSOCIATE (RFC 1928 §7).
//
// The relay socket on ClientNetwork receives the client's datagrams;
// clientLoop strips the header and sends the payload from one of two
// sockets on Network, one per address family, opened on first use with an
// explicit family and wildcard address ("udp4" 0.0.0.0:0, "udp6" [::]:0)
// because the tunnel stack has no dual-stack socket. A replyLoop per such
// socket wraps whatever arrives on it in a header naming the sender and
// sends it to the client. The association ends when the control
// connection does.
type association struct {
	s        *Server
	ctx      context.Context // cancelled by close; bounds name resolution
	cancel   context.CancelFunc
	log      *slog.Logger
	relay    net.PacketConn // on ClientNetwork; owned by the association
	clientIP netip.Addr     // the only source IP relayed, unmapped; see associate
	port     uint16         // the only source port relayed, or 0 to learn it
	wg       sync.WaitGroup // clientLoop and the replyLoops

	// Used by clientLoop only.
	learnt bool
	names  map[string]netip.Addr

	mu sync.Mutex
	// The fields below are guarded by mu.
	client     net.Addr       // where replies go; nil until the first datagram
	out4, out6 net.PacketConn // on Network; nil until first used
	closed     bool
}

// associate serves UDP ASSOCIATE on control connection c. The request's
// DST.ADDR and DST.PORT name where the client will send from (RFC 1928 §7:
// the server may use them to limit access), or are zeros if the client
// does not know: a non-zero address (an IP, or a name that is an IP
// literal) is the only source IP relayed, zeros or another name mean the
// control connection's IP; a non-zero port is the only source port
// relayed, zero means the port of the first datagram from that IP. Every
// other datagram is dropped and counted in Stats.UDPForeign.
func (s *Server) associate(c net.Conn, dst Addr, log *slog.Logger) {
	local, ok1 := service.AddrPort(c.LocalAddr())
	remote, ok2 := service.AddrPort(c.RemoteAddr())
	if !ok1 || !ok2 {
		log.Debug("udp associate: control connection has no IP addresses")
		s.reply(c, ReplyGeneralFailure, Addr{})
		return
	}
	bind := netip.AddrPortFrom(local.Addr(), 0).String()
	relay, err := service.OrHost(s.ClientNetwork).ListenPacket(service.NetworkFor("udp", bind), bind)
	if err != nil {
		log.Debug("udp associate: binding the relay socket", "err", err)
		s.reply(c, ReplyGeneralFailure, Addr{})
		return
	}
	a := &association{s: s, log: log, relay: relay, clientIP: remote.Addr(), port: dst.Port, names: make(map[string]netip.Addr)}
	if ip, ok := dst.literalIP(); ok && !ip.IsUnspecified() {
		a.clientIP = ip
	}
	a.ctx, a.cancel = context.WithCancel(s.life.Context())
	if err := s.reply(c, ReplySucceeded, AddrFromNetAddr(relay.LocalAddr())); err != nil {
		a.close()
		return
	}
	s.stats.associations.Add(1)
	a.wg.Add(1)
	go a.clientLoop(c)
	// A client has nothing more to say on the control connection; reading
	// it tells us when it closes (or when Close closes it).
	io.Copy(io.Discard, c)
	a.close()
}

func (a *association) close() {
	a.mu.Lock()
	a.closed = true
	outs := []net.PacketConn{a.out4, a.out6}
	a.mu.Unlock()
	a.cancel()
	a.relay.Close()
	for _, pc := range outs {
		if pc != nil {
			pc.Close()
		}
	}
	a.wg.Wait()
}

// literalIP returns the IP of a, or of its name if that is an IP literal
// (with or without brackets), unmapped.
func (a Addr) literalIP() (netip.Addr, bool) {
	if a.Name == "" {
		return a.IP.Unmap(), a.IP.IsValid()
	}
	ip, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(a.Name, "["), "]"))
	return ip.Unmap(), err == nil
}

func (a *association) drop(reason string, args ...any) {
	a.s.stats.udpDropped.Add(1)
	a.log.Debug("udp datagram dropped: "+reason, args...)
}

// clientLoop relays datagrams from the client towards their destinations.
// If the relay socket fails it closes the control connection c, which ends
// the association.
func (a *association) clientLoop(c net.Conn) {
	defer a.wg.Done()
	clientPort := a.port // 0 until learnt, if the request did not name it
	buf := make([]byte, MaxDatagram)
	for {
		n, from, err := a.relay.ReadFrom(buf)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				a.log.Debug("udp relay read failed", "err", err)
			}
			c.Close()
			return
		}
		src, ok := service.AddrPort(from)
		if !ok || src.Addr() != a.clientIP || (clientPort != 0 && src.Port() != clientPort) {
			a.s.stats.udpForeign.Add(1)
			a.drop("not from the client", "from", from, "client", netip.AddrPortFrom(a.clientIP, clientPort))
			continue
		}
		if !a.learnt {
			a.learnt, clientPort = true, src.Port()
			a.mu.Lock()
			a.client = from
			a.mu.Unlock()
		}
		h, hl, err := ParseUDPHeader(buf[:n])
		if err != nil {
			a.drop("bad header", "err", err)
			continue
		}
		if h.Frag != 0 {
			// Fragmentation is optional (RFC 1928 §7); unsupported, so drop.
			a.s.stats.udpFrags.Add(1)
			continue
		}
		ip, err := a.destination(h.Addr)
		if err != nil {
			a.drop("resolving destination", "dst", h.Addr, "err", err)
			continue
		}
		out, err := a.outFor(ip)
		if err != nil {
			a.drop("opening outbound socket", "err", err)
			continue
		}
		dst := net.UDPAddrFromAddrPort(netip.AddrPortFrom(ip, h.Addr.Port))
		if _, err := out.WriteTo(buf[hl:n], dst); err != nil {
			a.drop("sending", "dst", dst, "err", err)
			continue
		}
		a.s.stats.udpToTarget.Add(1)
		a.s.stats.udpBytesToTarget.Add(uint64(n - hl))
	}
}

// destination returns the IP for dst, resolving and caching names.
func (a *association) destination(dst Addr) (netip.Addr, error) {
	if dst.Name == "" {
		return dst.IP.Unmap(), nil
	}
	if ip, ok := a.names[dst.Name]; ok {
		return ip, nil
	}
	ctx, cancel := context.WithTimeout(a.ctx, a.s.dialTimeout())
	ips, err := a.s.resolve(ctx, dst)
	cancel()
	if err != nil {
		return netip.Addr{}, err
	}
	if len(a.names) >= maxNameCache {
		clear(a.names)
	}
	a.names[dst.Name] = ips[0]
	return ips[0], nil
}

// outFor returns the outbound socket for ip's family, opening it (and its
// replyLoop) on first use.
func (a *association) outFor(ip netip.Addr) (net.PacketConn, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return nil, net.ErrClosed
	}
	out, network, wildcard := &a.out4, "udp4", "0.0.0.0:0"
	if ip.Is6() {
		out, network, wildcard = &a.out6, "udp6", "[::]:0"
	}
	if *out == nil {
		pc, err := service.OrHost(a.s.Network).ListenPacket(network, wildcard)
		if err != nil {
			return nil, err
		}
		*out = pc
		a.wg.Add(1)
		go a.replyLoop(pc)
	}
	return *out, nil
}

// replyLoop relays datagrams arriving on outbound socket pc back to the
// client, each behind a header naming its sender.
func (a *association) replyLoop(pc net.PacketConn) {
	defer a.wg.Done()
	// The payload is read in place after room for the largest IP header,
	// which is then written just in front of it.
	buf := make([]byte, maxIPUDPHeaderLen+MaxDatagram)
	hdr := make([]byte, 0, maxIPUDPHeaderLen)
	for {
		n, from, err := pc.ReadFrom(buf[maxIPUDPHeaderLen:])
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				a.log.Debug("udp outbound read failed", "err", err)
			}
			return
		}
		src, ok := service.AddrPort(from)
		if !ok {
			a.drop("reply from a non-IP address", "from", from)
			continue
		}
		hdr, _ = AppendUDPHeader(hdr[:0], UDPHeader{Addr: Addr{IP: src.Addr(), Port: src.Port()}})
		start := maxIPUDPHeaderLen - len(hdr)
		copy(buf[start:], hdr)
		a.mu.Lock()
		client := a.client
		a.mu.Unlock()
		if _, err := a.relay.WriteTo(buf[start:maxIPUDPHeaderLen+n], client); err != nil {
			a.drop("sending to the client", "err", err)
			continue
		}
		a.s.stats.udpFromTarget.Add(1)
		a.s.stats.udpBytesFromTarget.Add(uint64(n))
	}
}
