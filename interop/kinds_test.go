//go:build linux && interop

package interop

import (
	"fmt"
	"net/netip"

	"github.com/ipipstack/ipipstack/endpoint/encap"
	"github.com/ipipstack/ipipstack/stack"
)

// A kind is one Linux tunnel configuration in the VM and the stack tunnel
// that is its peer. Every kind has its own VM outer address and inner
// prefixes, so that all of them are configured at once in one VM: Linux
// picks a tunnel device by (local, remote) outer address
// (net/ipv4/ip_tunnel.c ip_tunnel_lookup, ip6_tunnel.c ip6_tnl_lookup).
type kind struct {
	name string
	idx  int // 1.., picks the addresses and ports
	// outer6 selects IPv6 outer headers; inner6 the inner family.
	outer6, inner6 bool
	// fou carries the inner packet in UDP (Linux `encap fou`), with the
	// UDP checksum on (csum) or off, and a fixed or hashed (autoSport)
	// source port.
	fou, csum, autoSport bool
	// encapLimit: ip6tnl's default destination option (limit 4), or
	// `encaplimit none`.
	encapLimit bool
}

// Outer addresses: ours is always the first; the VM has one per kind.
var (
	usOuter4 = netip.MustParseAddr("192.0.2.1")
	usOuter6 = netip.MustParseAddr("2001:db8::1")
)

// kinds is every tunnel kind the VM runs.
var kinds = func() []kind {
	ks := []kind{
		{name: "ipip"},
		{name: "sit", inner6: true},
		{name: "ip6tnl-ipip6", outer6: true, encapLimit: true},
		{name: "ip6tnl-ip6ip6", outer6: true, inner6: true, encapLimit: true},
		{name: "ip6tnl-ipip6-encaplimit-none", outer6: true},
		{name: "ip6tnl-ip6ip6-encaplimit-none", outer6: true, inner6: true},
		{name: "fou4-ipip-csum-fixedsport", fou: true, csum: true},
		{name: "fou4-ipip-nocsum-autosport", fou: true, autoSport: true},
		{name: "fou4-sit-nocsum-fixedsport", fou: true, inner6: true},
		{name: "fou4-sit-csum-autosport", fou: true, inner6: true, csum: true, autoSport: true},
		// ip6tnl over FOU with `encaplimit none`: with the default limit
		// Linux puts the destination option between the UDP header and
		// the inner packet, which no FOU receiver (Linux's included)
		// parses.
		{name: "fou6-ipip6-csum-fixedsport", fou: true, outer6: true, csum: true},
		{name: "fou6-ipip6-nocsum-autosport", fou: true, outer6: true, autoSport: true},
		{name: "fou6-ip6ip6-nocsum-fixedsport", fou: true, outer6: true, inner6: true},
		{name: "fou6-ip6ip6-csum-autosport", fou: true, outer6: true, inner6: true, csum: true, autoSport: true},
	}
	for i := range ks {
		ks[i].idx = i + 1
	}
	return ks
}()

func (k kind) dev() string { return fmt.Sprintf("t%d", k.idx) }

// vmOuter and usOuter are the outer addresses of the two ends.
func (k kind) vmOuter() netip.Addr {
	if k.outer6 {
		return netip.MustParseAddr(fmt.Sprintf("2001:db8::%d", 10+k.idx))
	}
	return netip.AddrFrom4([4]byte{192, 0, 2, byte(10 + k.idx)})
}

func (k kind) usOuter() netip.Addr {
	if k.outer6 {
		return usOuter6
	}
	return usOuter4
}

// fouPort is the VM's FOU port (and its fixed source port); usPort is
// the stack's UDP port.
func (k kind) fouPort() uint16 { return uint16(5500 + k.idx) }
func (k kind) usPort() uint16  { return uint16(6500 + k.idx) }

// Inner addresses: 10.0.IDX.1/30 and fd00:0:0:IDX::1/64 are ours, .2 and
// ::2 the VM's.
func (k kind) usInner() netip.Prefix {
	if k.inner6 {
		return netip.MustParsePrefix(fmt.Sprintf("fd00:0:0:%d::1/64", k.idx))
	}
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, byte(k.idx), 1}), 30)
}

func (k kind) vmInner() netip.Prefix {
	if k.inner6 {
		return netip.MustParsePrefix(fmt.Sprintf("fd00:0:0:%d::2/64", k.idx))
	}
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, byte(k.idx), 2}), 30)
}

// vmSetup returns the VM's shell commands that make this kind's tunnel.
func (k kind) vmSetup() []string {
	var cmds []string
	typ := "ipip"
	switch {
	case k.outer6 && k.inner6:
		typ = "ip6tnl mode ip6ip6"
	case k.outer6:
		typ = "ip6tnl mode ipip6"
	case k.inner6:
		typ = "sit"
	}
	link := fmt.Sprintf("ip link add %s type %s local %s remote %s", k.dev(), typ, k.vmOuter(), k.usOuter())
	if k.outer6 && !k.encapLimit {
		link += " encaplimit none"
	}
	if k.fou {
		proto, fam := 4, ""
		if k.inner6 {
			proto = 41
		}
		if k.outer6 {
			fam = " -6"
		}
		cmds = append(cmds, fmt.Sprintf("ip fou add port %d ipproto %d%s", k.fouPort(), proto, fam))
		sport := fmt.Sprint(k.fouPort())
		if k.autoSport {
			sport = "auto"
		}
		csum := "noencap-csum"
		if k.csum {
			csum = "encap-csum"
		}
		link += fmt.Sprintf(" encap fou encap-sport %s encap-dport %d %s", sport, k.usPort(), csum)
	}
	cmds = append(cmds, link,
		fmt.Sprintf("ip addr add %s dev %s", k.vmInner(), k.dev()),
		fmt.Sprintf("ip link set %s up", k.dev()))
	return cmds
}

// tunnel is the stack's side of the kind.
func (k kind) tunnel() stack.Tunnel {
	t := stack.Tunnel{
		Name:      k.name,
		Transport: stack.Raw,
		Local:     netip.AddrPortFrom(k.usOuter(), 0),
		Remote:    netip.AddrPortFrom(k.vmOuter(), 0),
		Addresses: []netip.Prefix{k.usInner()},
	}
	if k.outer6 && k.encapLimit {
		t.Policy = encap.Policy{UseEncapLimit: true, EncapLimit: encap.DefaultEncapLimit}
	}
	if k.fou {
		t.Transport = stack.UDP
		t.Local = netip.AddrPortFrom(k.usOuter(), k.usPort())
		t.Remote = netip.AddrPortFrom(k.vmOuter(), k.fouPort())
		t.AnySourcePort = k.autoSport
		t.ZeroUDPChecksum = !k.csum && !k.outer6
	}
	return t
}
