package config

import "github.com/hashicorp/hcl/v2"

// Tunnels that name the same outer local address (and port, for UDP)
// share one set of sockets, as Linux's FOU port or ipip device serves
// every peer (issue 14): the stack hands each datagram to the tunnel whose
// peer sent it. So two tunnels of one socket may not have the same peer,
// nor can both accept a peer that moves (roaming), and they must agree on
// the socket's options. A tunnel with an impair block wraps a socket of its
// own, so it cannot share one.

// checkSharedSocket checks tunnel t against the earlier tunnel u of the
// same transport and reports whether it found an error.
func (d *decoder) checkSharedSocket(t, u *Tunnel, ts, us *tunnelSrc) bool {
	la := ts.attrs["local"]
	if t.Local != u.Local {
		if t.Transport == TransportUDP && t.Local.Port() == u.Local.Port() && addrOverlap(t.Local.Addr(), u.Local.Addr()) {
			d.attrError(la, "Local address already in use",
				"Tunnel %q (%s) already binds %s, which overlaps %s; UDP tunnels share a socket only when they name the same local address and port. Write the same local in both, or give each its own port.",
				u.Name, at(us.block.DefRange), u.Local, t.Local)
			return true
		}
		if t.Transport == TransportRaw && t.Remote == u.Remote && addrOverlap(t.Local.Addr(), u.Local.Addr()) {
			d.attrError(ts.attrs["remote"], "Duplicate raw tunnel",
				"Tunnel %q (%s) already connects local %s to remote %s; raw tunnels are told apart by their outer addresses, so each pair may be used once.",
				u.Name, at(us.block.DefRange), u.Local.Addr(), u.Remote.Addr())
			return true
		}
		return false
	}
	// From here on, t and u share a socket.
	other := func() string { return "Tunnel \"" + u.Name + "\" (" + at(us.block.DefRange) + ")" }
	switch {
	case t.Transport == TransportRaw && t.Remote == u.Remote:
		d.attrError(ts.attrs["remote"], "Duplicate raw tunnel",
			"%s already connects local %s to remote %s; raw tunnels are told apart by their outer addresses, so each pair may be used once.",
			other(), u.Local.Addr(), u.Remote.Addr())
	case t.Remote == u.Remote:
		d.attrError(ts.attrs["remote"], "Duplicate peer on a shared socket",
			"%s on the same local %s already has the peer %s; tunnels sharing a socket are told apart by their peer's address and port, so each needs a peer of its own.",
			other(), u.Local, u.Remote)
	case (t.AnySourcePort || u.AnySourcePort) && t.Remote.Addr() == u.Remote.Addr():
		d.attrError(ts.attrs["remote"], "Duplicate peer on a shared socket",
			"%s on the same local %s has a peer on %s too, and with any_source_port a tunnel takes every port of its peer's address, so the two could not be told apart. Give one of them another local port.",
			other(), u.Local, u.Remote.Addr())
	case t.Roaming && u.Roaming:
		d.attrError(ts.attrs["roaming"], "Two roaming tunnels on one socket",
			"%s on the same local %s already roams; datagrams from an unknown address go to the one roaming tunnel of a socket, so only one may roam. Give this tunnel another local port.",
			other(), u.Local)
	case socketDF(t.DF) != socketDF(u.DF):
		r, ctx := ts.block.DefRange, (*hcl.Range)(nil)
		if a := ts.attrs["df"]; a != nil {
			r, ctx = a.Expr.Range(), &a.Range
		}
		d.errorf(r, ctx, "Socket options differ",
			"%s on the same local %s has df = %q, this tunnel df = %q; tunnels sharing a socket must agree on it (\"clear\" lets the kernel fragment, \"set\" and \"inherit\" do not). Use the same df, or another local port.",
			other(), u.Local, u.DF, t.DF)
	case t.Impair != nil || u.Impair != nil:
		name := u.Name
		if t.Impair == nil {
			name = t.Name
		}
		d.errorf(ts.block.DefRange, nil, "Impaired tunnel on a shared socket",
			"%s uses the same local %s; tunnel %q has an impair block, which needs a socket of its own. Give the impaired tunnel another local port.",
			other(), u.Local, name)
	default:
		return false
	}
	return true
}

// socketDF is what a tunnel's df policy asks of its sockets: whether the
// kernel may fragment the outer packets (endpoint.SocketOptions.DontFragment).
func socketDF(df DF) bool { return df != DFClear }
