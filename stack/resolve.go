package stack

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strconv"
	"sync/atomic"
	"time"
)

// ErrNoDNS is the error for a host name given to a stack without
// Config.DNS: it has nobody to ask, and never asks the host's resolver.
var ErrNoDNS = errors.New("stack: no DNS servers configured (Config.DNS); use an IP address")

// fallbackDelay is how long a dial by name waits for the addresses of the
// first family before it also tries the other's, as net.Dialer's default
// FallbackDelay (RFC 8305, Happy Eyeballs).
const fallbackDelay = 300 * time.Millisecond

// minAttempt is the least time one address of a name is given while the
// context leaves more, as net.Dialer does: a long list of addresses does not
// shrink each attempt below it.
const minAttempt = 2 * time.Second

// resolver asks the servers of Config.DNS through the stack. It is set in
// New and read-only after; preferred, the index of the server asked first,
// moves on when that server leaves a query unanswered.
type resolver struct {
	servers   []netip.AddrPort
	preferred atomic.Uint32
	net       *net.Resolver
}

func (s *Stack) setupResolver(servers []netip.AddrPort) error {
	for _, ap := range servers {
		if !ap.IsValid() || ap.Port() == 0 || ap.Addr().IsUnspecified() || ap.Addr().Zone() != "" {
			return errors.New("stack: DNS server " + ap.String() + ": want an IP address and a non-zero port, such as 10.99.0.2:53")
		}
	}
	s.dns.servers = append([]netip.AddrPort(nil), servers...)
	for i := range s.dns.servers {
		s.dns.servers[i] = netip.AddrPortFrom(s.dns.servers[i].Addr().Unmap(), s.dns.servers[i].Port())
	}
	s.dns.net = &net.Resolver{PreferGo: true, Dial: s.dialDNS}
	return nil
}

// Resolver returns a resolver that asks the servers of Config.DNS through
// the stack's tunnels, never the host's: the standard library's DNS client
// (PreferGo) with a Dial into the stack. It sends each query over UDP to one
// server and repeats it over TCP when the answer comes back truncated. The
// first server is asked first; once a query to it goes unanswered, the next
// attempt, and the queries after it, go to the next server, and so on round
// the list. A TCP query goes to the server the UDP query went to, or, if it
// refuses, to the next that accepts.
//
// The context bounds every lookup. Other settings come from the host's
// /etc/resolv.conf as for any Go resolver: attempts per lookup (2 by
// default), the time each waits (5 s), ndots and search domains, which are
// appended to names queried through the tunnel; names in /etc/hosts are
// answered from there. Without Config.DNS every lookup of a name fails with
// ErrNoDNS.
func (s *Stack) Resolver() *net.Resolver { return s.dns.net }

// LookupNetIP looks host up through the stack's DNS servers (see Resolver)
// and returns its addresses, IPv4 ones unmapped. network is "ip", "ip4" or
// "ip6". An IP literal is returned as is, without DNS. Without Config.DNS a
// name fails with ErrNoDNS.
func (s *Stack) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	if a, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{a.Unmap()}, nil
	}
	if len(s.dns.servers) == 0 {
		return nil, ErrNoDNS
	}
	addrs, err := s.dns.net.LookupNetIP(ctx, network, host)
	for i := range addrs {
		addrs[i] = addrs[i].Unmap()
	}
	return addrs, err
}

// dialDNS is the Dial of Resolver: the address the Go resolver took from
// the host's resolv.conf is ignored, and the query goes to a server of
// Config.DNS instead.
func (s *Stack) dialDNS(ctx context.Context, network, _ string) (net.Conn, error) {
	servers := s.dns.servers
	if len(servers) == 0 {
		return nil, ErrNoDNS
	}
	start := int(s.dns.preferred.Load()) % len(servers)
	var first error
	for i := range servers {
		idx := (start + i) % len(servers)
		c, err := s.DialContext(ctx, network, servers[idx].String())
		if err == nil {
			if uc, ok := c.(*UDPConn); ok {
				return &dnsUDPConn{UDPConn: uc, r: &s.dns, idx: uint32(idx)}, nil
			}
			return c, nil
		}
		if first == nil {
			first = err
		}
		if ctx.Err() != nil {
			break
		}
	}
	return nil, first
}

// dnsUDPConn is the UDP conn of one DNS query to server idx. A read that
// times out makes the next server the preferred one.
type dnsUDPConn struct {
	*UDPConn
	r   *resolver
	idx uint32
}

// Read implements net.Conn.Read.
func (c *dnsUDPConn) Read(b []byte) (int, error) {
	n, err := c.UDPConn.Read(b)
	var ne net.Error
	if err != nil && errors.As(err, &ne) && ne.Timeout() {
		next := (c.idx + 1) % uint32(len(c.r.servers))
		c.r.preferred.CompareAndSwap(c.idx, next)
	}
	return n, err
}

// hostName returns the host and port of address if its host is a name
// rather than an IP literal or empty.
func hostName(address string) (host, port string, ok bool) {
	host, port, err := net.SplitHostPort(address)
	if err != nil || host == "" {
		return "", "", false
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return "", "", false
	}
	return host, port, true
}

// dialName dials host:port for DialContext: it looks host up through the
// stack's DNS and tries its addresses as net.Dialer does. The addresses
// of the family of the first are tried one after another; if they have not
// connected after fallbackDelay, those of the other family are tried too,
// in parallel, and the first connection made wins. Each address gets an
// equal share of the time the context leaves, but at least minAttempt.
func (s *Stack) dialName(ctx context.Context, network, address, host, port string) (net.Conn, error) {
	opErr := func(err error) error {
		return &net.OpError{Op: "dial", Net: network, Addr: strAddr{network, address}, Err: err}
	}
	if len(s.dns.servers) == 0 {
		return nil, opErr(ErrNoDNS)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		lp, lerr := net.LookupPort(network, port)
		if lerr != nil {
			return nil, opErr(&net.AddrError{Err: "invalid port", Addr: address})
		}
		p = uint64(lp)
	}
	if p == 0 {
		return nil, opErr(&net.AddrError{Err: "missing port", Addr: address})
	}
	lookup := "ip"
	switch network[len(network)-1] {
	case '4':
		lookup = "ip4"
	case '6':
		lookup = "ip6"
	}
	addrs, err := s.LookupNetIP(ctx, lookup, host)
	if err != nil {
		return nil, opErr(err)
	}
	if len(addrs) == 0 {
		return nil, opErr(&net.AddrError{Err: "no suitable address found", Addr: host})
	}
	var primary, fallback []netip.AddrPort
	for _, a := range addrs {
		ap := netip.AddrPortFrom(a, uint16(p))
		if a.Is4() == addrs[0].Is4() {
			primary = append(primary, ap)
		} else {
			fallback = append(fallback, ap)
		}
	}
	if network[0] == 'u' || len(fallback) == 0 {
		return s.dialSerial(ctx, network, append(primary, fallback...))
	}
	return s.dialParallel(ctx, network, primary, fallback)
}

// dialSerial tries addrs in order and returns the first connection made,
// or the first error.
func (s *Stack) dialSerial(ctx context.Context, network string, addrs []netip.AddrPort) (net.Conn, error) {
	var first error
	for i, ap := range addrs {
		actx := ctx
		if d, ok := ctx.Deadline(); ok {
			share := time.Until(d) / time.Duration(len(addrs)-i)
			if share < minAttempt {
				share = min(minAttempt, time.Until(d))
			}
			var cancel context.CancelFunc
			actx, cancel = context.WithDeadline(ctx, time.Now().Add(share))
			defer cancel()
		}
		c, err := s.DialContext(actx, network, ap.String())
		if err == nil {
			return c, nil
		}
		if first == nil {
			first = err
		}
		if ctx.Err() != nil {
			break
		}
	}
	return nil, first
}

// dialParallel races the primary addresses against the fallback ones,
// which start fallbackDelay later, or as soon as the primary ones failed.
func (s *Stack) dialParallel(ctx context.Context, network string, primary, fallback []netip.AddrPort) (net.Conn, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		c       net.Conn
		err     error
		primary bool
	}
	results := make(chan result, 2) // never blocks a racer
	race := func(addrs []netip.AddrPort, isPrimary bool) {
		c, err := s.dialSerial(ctx, network, addrs)
		results <- result{c, err, isPrimary}
	}
	go race(primary, true)
	pending := 1
	timer := time.NewTimer(fallbackDelay)
	defer timer.Stop()
	startFallback := func() {
		if fallback != nil {
			go race(fallback, false)
			fallback = nil
			pending++
		}
	}
	var primaryErr, fallbackErr error
	for {
		select {
		case <-timer.C:
			startFallback()
		case r := <-results:
			pending--
			if r.err == nil {
				// The loser's connection, if it makes one, is closed.
				for ; pending > 0; pending-- {
					go func() {
						if l := <-results; l.c != nil {
							l.c.Close()
						}
					}()
				}
				return r.c, nil
			}
			if r.primary {
				primaryErr = r.err
				startFallback()
			} else {
				fallbackErr = r.err
			}
			if pending == 0 {
				if primaryErr != nil {
					return nil, primaryErr
				}
				return nil, fallbackErr
			}
		}
	}
}
