package config

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/hashicorp/hcl/v2"
)

// crossCheck runs the checks that span blocks. Every value it reads was
// decoded without error.
func (d *decoder) crossCheck(cfg *Config, src *sources) {
	d.checkTunnels(cfg, src)
	d.checkForwards(cfg, src)
	d.checkReverses(cfg, src)
	d.checkListeners(cfg, src)
	d.checkTUN(cfg, src)
	if !d.diags.HasErrors() { // warnings are noise next to errors
		d.checkExposed(cfg, src)
	}
}

// addrOverlap reports whether two sockets bound to a and b (same port)
// would collide: equal addresses, or an unspecified one of the same family.
func addrOverlap(a, b netip.Addr) bool {
	if a.Is4() != b.Is4() {
		return false
	}
	return a == b || a.IsUnspecified() || b.IsUnspecified()
}

// owner is a prefix (or address) and where it came from.
type owner struct {
	prefix netip.Prefix
	tunnel int
	rng    hcl.Range
}

func (d *decoder) checkTunnels(cfg *Config, src *sources) {
	var (
		onLink []owner
		routed = map[netip.Prefix]owner{}
		addrs  = map[netip.Addr]owner{}
	)
	captures := map[string]int{}
	defaultRoute := -1
	for i := range cfg.Tunnels {
		t, ts := &cfg.Tunnels[i], &src.tunnels[i]
		// Outer endpoints: tunnels naming the same local share its
		// sockets (sharedsocket.go); other overlaps cannot bind.
		for j := range i {
			u, us := &cfg.Tunnels[j], &src.tunnels[j]
			if t.Transport != u.Transport {
				continue
			}
			if d.checkSharedSocket(t, u, ts, us) {
				break // one error per tunnel is enough
			}
		}
		// Inner addresses and on-link prefixes.
		for k, p := range t.Addresses {
			r := ts.addrRngs[k]
			aa := ts.attrs["addresses"]
			if o, dup := addrs[p.Addr()]; dup {
				d.errorf(r, &aa.Range, "Duplicate address",
					"%s is already an address of tunnel %q (%s); each inner address belongs to one tunnel.",
					p.Addr(), cfg.Tunnels[o.tunnel].Name, at(o.rng))
				continue
			}
			addrs[p.Addr()] = owner{p, i, r}
			m := p.Masked()
			for _, o := range onLink {
				if o.tunnel != i && o.prefix.Overlaps(m) {
					d.errorf(r, &aa.Range, "Overlapping on-link prefixes",
						"The on-link prefix %s (of %s) overlaps %s of tunnel %q (%s); on-link prefixes of different tunnels must be disjoint, or the stack could not tell which tunnel a neighbour is on.",
						m, p, o.prefix, cfg.Tunnels[o.tunnel].Name, at(o.rng))
					break
				}
			}
			onLink = append(onLink, owner{m, i, r})
		}
	}
	// Routes: the same prefix may not be routed through two tunnels (longer
	// or shorter prefixes through other tunnels are fine: longest match).
	for _, o := range onLink {
		if _, dup := routed[o.prefix]; !dup {
			routed[o.prefix] = o
		}
	}
	for i := range cfg.Tunnels {
		t, ts := &cfg.Tunnels[i], &src.tunnels[i]
		check := func(p netip.Prefix, r hcl.Range, ctx *hcl.Range, what string) {
			o, dup := routed[p]
			switch {
			case !dup:
				routed[p] = owner{p, i, r}
			case o.tunnel == i:
				d.errorf(r, ctx, "Redundant route",
					"%s is already on-link in this tunnel (from addresses, %s); remove it from %s.", p, at(o.rng), what)
			default:
				d.errorf(r, ctx, "Duplicate route",
					"%s is already routed through tunnel %q (%s); a prefix can be routed through one tunnel only.",
					p, cfg.Tunnels[o.tunnel].Name, at(o.rng))
			}
		}
		if ra := ts.attrs["routes"]; ra != nil {
			for k, p := range t.Routes {
				check(p, ts.routeRngs[k], &ra.Range, "routes")
			}
		}
		if t.DefaultRoute {
			da := ts.attrs["default_route"]
			if defaultRoute >= 0 {
				d.attrError(da, "Duplicate default route",
					"Tunnel %q (%s) already sets default_route; only one tunnel can carry the default routes.",
					cfg.Tunnels[defaultRoute].Name, at(src.tunnels[defaultRoute].block.DefRange))
			} else {
				defaultRoute = i
				check(defaultRoute4, da.Expr.Range(), &da.Range, "routes")
				check(defaultRoute6, da.Expr.Range(), &da.Range, "routes")
			}
		}
		if t.Capture != "" {
			ca := ts.attrs["capture"]
			if j, dup := captures[t.Capture]; dup {
				d.attrError(ca, "Duplicate capture file",
					"Tunnel %q (%s) already captures to %q; each tunnel needs its own pcap file.",
					cfg.Tunnels[j].Name, at(src.tunnels[j].block.DefRange), t.Capture)
			} else {
				captures[t.Capture] = i
			}
		}
	}
}

// describePrefixes lists the prefixes the tunnels route, for details.
func describePrefixes(cfg *Config) string {
	var parts []string
	for i := range cfg.Tunnels {
		t := &cfg.Tunnels[i]
		var ps []string
		for _, p := range t.RoutePrefixes() {
			ps = append(ps, p.String())
		}
		parts = append(parts, fmt.Sprintf("tunnel %q routes %s", t.Name, strings.Join(ps, ", ")))
	}
	const max = 4
	if len(parts) > max {
		parts = append(parts[:max], fmt.Sprintf("%d more tunnels", len(parts)-max))
	}
	return strings.Join(parts, "; ")
}

func (d *decoder) checkForwards(cfg *Config, src *sources) {
	for i, f := range cfg.Forwards {
		if f.TargetName != "" {
			if cfg.DNS == nil {
				d.attrError(src.forwards[i].attrs["target"], "Target name without DNS",
					"%q is a host name, which is looked up through the tunnels' DNS; add a dns block (servers = [\"10.99.0.2:53\"]), or write the target as an IP address.", f.TargetName)
			}
			continue
		}
		reached := false
		for k := range cfg.Tunnels {
			if cfg.Tunnels[k].Reaches(f.Target.Addr()) {
				reached = true
				break
			}
		}
		if !reached {
			d.attrError(src.forwards[i].attrs["target"], "Target not reachable",
				"No tunnel routes %s (%s). Add a prefix containing it to a tunnel's routes, or set default_route in one tunnel.",
				f.Target.Addr(), describePrefixes(cfg))
		}
	}
}

func (d *decoder) checkReverses(cfg *Config, src *sources) {
	var ours []string
	have := map[netip.Addr]bool{}
	has4, has6 := false, false
	for _, t := range cfg.Tunnels {
		for _, p := range t.Addresses {
			have[p.Addr()] = true
			ours = append(ours, p.Addr().String())
			has4 = has4 || p.Addr().Is4()
			has6 = has6 || p.Addr().Is6()
		}
	}
	for i, r := range cfg.Reverses {
		la := src.reverses[i].attrs["listen"]
		addr := r.Listen.Addr()
		switch {
		case addr.IsUnspecified() && (addr.Is4() && !has4 || addr.Is6() && !has6):
			d.attrError(la, "Listen address not in the stack",
				"%s listens on every %s address of the stack, but no tunnel has one; the stack's addresses are %s.",
				r.Listen, family(addr), strings.Join(ours, ", "))
		case !addr.IsUnspecified() && !have[addr]:
			d.attrError(la, "Listen address not in the stack",
				"A reverse forward listens inside the stack, and %s is not one of its addresses (%s). Use one of them, or 0.0.0.0 or [::] to listen on every address of a family.",
				addr, strings.Join(ours, ", "))
		}
	}
}

// listener is a socket the configuration binds, for duplicate checks.
type listener struct {
	what  string
	proto Protocol
	addr  netip.AddrPort
	attr  *hcl.Attribute
	block *hcl.Block
}

func (d *decoder) checkListeners(cfg *Config, src *sources) {
	var host []listener
	if cfg.Status.Enabled() && src.status != nil {
		// First in the list, so only ever the earlier of two listeners:
		// its listen attribute may be absent (the default).
		host = append(host, listener{"the status server", TCP, cfg.Status.Listen, src.status.attrs["listen"], src.status.block})
	}
	for i, f := range cfg.Forwards {
		host = append(host, listener{fmt.Sprintf("forward %q", f.Name), f.Protocol, f.Listen, src.forwards[i].attrs["listen"], src.forwards[i].block})
	}
	for i, s := range cfg.SOCKS5 {
		host = append(host, listener{fmt.Sprintf("socks5 %q", s.Name), TCP, s.Listen, src.socks5[i].attrs["listen"], src.socks5[i].block})
	}
	host = append(host, httpProxyListeners(cfg, src)...)
	d.checkDuplicateListeners(host, "on the host")

	var stack []listener
	for i, r := range cfg.Reverses {
		stack = append(stack, listener{fmt.Sprintf("reverse %q", r.Name), r.Protocol, r.Listen, src.reverses[i].attrs["listen"], src.reverses[i].block})
	}
	d.checkDuplicateListeners(stack, "inside the stack")
}

func (d *decoder) checkDuplicateListeners(ls []listener, where string) {
	for i, l := range ls {
		for _, m := range ls[:i] {
			if l.proto == m.proto && l.addr.Port() == m.addr.Port() && addrOverlap(l.addr.Addr(), m.addr.Addr()) {
				d.attrError(l.attr, "Duplicate listen address",
					"%s (%s) already listens on %s %s %s; two listeners cannot share an address and port.",
					upperFirst(m.what), at(m.block.DefRange), m.proto, m.addr, where)
				break
			}
		}
	}
}

func (d *decoder) checkTUN(cfg *Config, src *sources) {
	t := cfg.TUN
	if t == nil {
		return
	}
	ts := src.tun
	aa := ts.attrs["addresses"]
	for k, p := range t.Addresses {
	tunnels:
		for i := range cfg.Tunnels {
			for _, q := range cfg.Tunnels[i].Addresses {
				if p.Masked().Overlaps(q.Masked()) {
					d.errorf(ts.addrRngs[k], &aa.Range, "TUN address overlaps a tunnel",
						"The TUN device's prefix %s overlaps the on-link prefix %s of tunnel %q (%s); the host side of the TUN device needs a prefix of its own.",
						p.Masked(), q.Masked(), cfg.Tunnels[i].Name, at(src.tunnels[i].block.DefRange))
					break tunnels
				}
			}
		}
	}
	if t.MTU == 0 {
		t.MTU = maxMTU
		for i := range cfg.Tunnels {
			t.MTU = min(t.MTU, cfg.Tunnels[i].EffectiveMTU())
		}
		for _, p := range t.Addresses {
			if p.Addr().Is6() && t.MTU < minIPv6MTU {
				d.errorf(ts.block.DefRange, nil, "MTU too small for IPv6",
					"The TUN device's MTU defaults to the smallest tunnel MTU, %d, but the device has the IPv6 address %s, which needs 1280 (RFC 8200 section 5). Set mtu to at least 1280.", t.MTU, p)
				break
			}
		}
	}
}

func upperFirst(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}
