package stack

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"

	"github.com/ipipstack/ipipstack/endpoint"
)

// Shared outer sockets (issue 14). Tunnels whose Local is the same serve
// their peers from one set of sockets, an endpoint.Shared, as Linux's FOU
// receive port or ipip device serves every tunnel: UDP tunnels by local
// address and port, raw tunnels by local address. The Shared hands each
// datagram to the tunnel whose peer sent it (outer source address and
// port; address only with AnySourcePort or for raw tunnels) and counts
// those from no tunnel's peer once, as SocketStats.WrongPeer. A tunnel with
// Conn or Wrap, or a UDP Local with port 0, keeps a transport of its own.
//
// The registry is refcounted by the tunnels that joined each Shared: the
// first opens the sockets with its socket options, the others must ask
// for the same, and the last one removed closes them.

// sharedKey names one set of shared sockets: the transport kind and the
// local address, with port 0 for Raw.
type sharedKey struct {
	kind  TransportKind
	local netip.AddrPort
}

// sharedSocket is a Shared and the tunnels that joined it.
type sharedSocket struct {
	key  sharedKey
	sh   *endpoint.Shared
	opts endpoint.SocketOptions
	// members are the tunnels joined, in the order they joined. Guarded
	// by Stack.sharedMu.
	members []sharedMember
}

// sharedMember is one tunnel of a sharedSocket and what it joined with.
type sharedMember struct {
	name          string
	remote        netip.AddrPort
	anySourcePort bool
	roaming       bool
}

// sharesSocket reports whether t joins a shared socket rather than opening
// its own transport.
func sharesSocket(t *Tunnel) bool {
	if t.Conn != nil || t.Wrap != nil {
		return false
	}
	return t.Transport == Raw || t.Local.Port() != 0
}

// joinShared joins t to the Shared of its local address, opening it with
// opts if t is the first. It returns the tunnel's Transport, for
// endpoint.New, and the socket to leave when the tunnel goes.
func (s *Stack) joinShared(t *Tunnel, opts endpoint.SocketOptions) (endpoint.Transport, *sharedSocket, error) {
	key := sharedKey{kind: t.Transport, local: t.Local}
	if t.Transport == Raw {
		key.local = netip.AddrPortFrom(t.Local.Addr(), 0)
		// The Shared tells the peers apart, so its sockets take every
		// source (endpoint.SocketOptions.Peer).
		opts.Peer = netip.Addr{}
	}
	m := sharedMember{name: t.Name, remote: t.Remote, anySourcePort: t.AnySourcePort && t.Transport == UDP, roaming: t.Roaming}
	s.sharedMu.Lock()
	defer s.sharedMu.Unlock()
	if s.sharedClosed {
		return nil, nil, ErrClosed
	}
	ss := s.shared[key]
	if ss == nil {
		var tr endpoint.Transport
		var err error
		switch t.Transport {
		case UDP:
			tr, err = endpoint.ListenUDP(t.Local, opts)
		case Raw:
			tr, err = endpoint.ListenRaw(t.Local.Addr(), opts)
		default:
			err = fmt.Errorf("unknown transport %v", t.Transport)
		}
		if err != nil {
			return nil, nil, err
		}
		ss = &sharedSocket{key: key, sh: endpoint.NewShared(tr, s.log), opts: opts}
		if s.shared == nil {
			s.shared = map[sharedKey]*sharedSocket{}
		}
		s.shared[key] = ss
	} else if name, a, b := optionsDiffer(ss.opts, opts); name != "" {
		return nil, nil, fmt.Errorf("shares the %s socket %s with tunnel %q, but asks for %s %v where it has %v: tunnels sharing a socket need the same socket options",
			key.kind, key.local, ss.members[0].name, name, b, a)
	}
	tr, err := ss.sh.Join(m.remote, m.anySourcePort, m.roaming)
	if err != nil {
		if len(ss.members) == 0 {
			s.closeSharedLocked(ss)
		}
		if o, ok := ss.conflict(m); ok {
			return nil, nil, fmt.Errorf("shares the %s socket %s with tunnel %q (remote %s): %w", key.kind, key.local, o.name, o.remote, err)
		}
		return nil, nil, fmt.Errorf("%s socket %s: %w", key.kind, key.local, err)
	}
	ss.members = append(ss.members, m)
	return tr, ss, nil
}

// conflict returns the member that m cannot join next to: the roaming one
// if both roam, or the one with m's peer.
func (ss *sharedSocket) conflict(m sharedMember) (sharedMember, bool) {
	for _, o := range ss.members {
		samePeer := o.remote == m.remote ||
			(o.anySourcePort || m.anySourcePort) && o.remote.Addr() == m.remote.Addr()
		if samePeer || o.roaming && m.roaming {
			return o, true
		}
	}
	return sharedMember{}, false
}

// leaveShared takes the named tunnel out of ss once its transport (from
// Join) is closed, and closes the sockets when it was the last.
func (s *Stack) leaveShared(ss *sharedSocket, name string) {
	s.sharedMu.Lock()
	defer s.sharedMu.Unlock()
	ss.members = slices.DeleteFunc(ss.members, func(m sharedMember) bool { return m.name == name })
	if len(ss.members) == 0 && s.shared[ss.key] == ss {
		s.closeSharedLocked(ss)
	}
}

// closeSharedLocked closes ss and forgets it. s.sharedMu must be held.
func (s *Stack) closeSharedLocked(ss *sharedSocket) {
	delete(s.shared, ss.key)
	if err := ss.sh.Close(); err != nil {
		s.log.Warn("closing shared tunnel sockets failed", "transport", ss.key.kind.String(), "local", ss.key.local, "error", err)
	}
}

// closeShared closes every shared socket, in Close after the tunnels.
func (s *Stack) closeShared() {
	s.sharedMu.Lock()
	defer s.sharedMu.Unlock()
	s.sharedClosed = true
	for _, ss := range s.shared {
		s.closeSharedLocked(ss)
	}
}

// optionsDiffer returns the name of the first socket option in which a
// and b differ, and the two values; "" if they agree. Peer is not
// compared: shared raw sockets never connect.
func optionsDiffer(a, b endpoint.SocketOptions) (name string, av, bv any) {
	buf := func(n int) int {
		if n == 0 {
			return endpoint.DefaultSocketBuffer
		}
		return n
	}
	switch {
	case buf(a.Buffer) != buf(b.Buffer):
		return "socket buffer (SocketBuffer)", buf(a.Buffer), buf(b.Buffer)
	case a.DontFragment != b.DontFragment:
		return "don't fragment (Policy.DF clear or not)", a.DontFragment, b.DontFragment
	case a.NoGSO != b.NoGSO:
		return "GSO off (DisableGSO)", a.NoGSO, b.NoGSO
	case a.NoGRO != b.NoGRO:
		return "GRO off (DisableGRO)", a.NoGRO, b.NoGRO
	case a.ZeroChecksum != b.ZeroChecksum:
		return "zero UDP checksum (ZeroUDPChecksum)", a.ZeroChecksum, b.ZeroChecksum
	case a.BatchSize != b.BatchSize:
		return "batch size", a.BatchSize, b.BatchSize
	}
	return "", nil, nil
}

// SocketStats are the counters of one set of outer sockets that tunnels
// share (see Tunnel.Local).
type SocketStats struct {
	// Local is the sockets' local address (port 0 for Raw).
	Local netip.AddrPort
	// Transport is UDP or Raw.
	Transport TransportKind
	// Tunnels is how many tunnels use the sockets now.
	Tunnels int
	// WrongPeer counts the datagrams that came from no tunnel's peer
	// (and, for raw sockets, not addressed to Local); they are counted
	// here, once, and in no tunnel's Drops.
	WrongPeer uint64
	// Received counts every datagram the sockets read.
	Received uint64
}

// SocketStats returns the counters of every set of shared outer sockets,
// ordered by transport and local address. Tunnels with a socket of their
// own (Conn, Wrap, or a UDP Local with port 0) are not listed: their
// datagrams from a wrong peer count in their TunnelStats.Drops.
func (s *Stack) SocketStats() []SocketStats {
	s.sharedMu.Lock()
	out := make([]SocketStats, 0, len(s.shared))
	for _, ss := range s.shared {
		st := ss.sh.Stats()
		out = append(out, SocketStats{Local: ss.sh.LocalAddr(), Transport: ss.key.kind, Tunnels: ss.sh.Tunnels(),
			WrongPeer: st.WrongPeer, Received: st.Received})
	}
	s.sharedMu.Unlock()
	slices.SortFunc(out, func(a, b SocketStats) int {
		return cmp.Or(cmp.Compare(a.Transport, b.Transport), a.Local.Compare(b.Local))
	})
	return out
}
