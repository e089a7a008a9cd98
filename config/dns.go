package config

import (
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/hashicorp/hcl/v2"
)

// decodeDNS decodes the dns block: servers, IP addresses with an optional
// port (53 if omitted).
func (d *decoder) decodeDNS(b *hcl.Block) *DNS {
	a := d.content(b, dnsSchema)
	strs, rngs, ok := d.strList(a["servers"])
	if !ok {
		return &DNS{}
	}
	out := &DNS{}
	for i, s := range strs {
		if addr, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")); err == nil && checkPlainAddr(s, addr) == nil {
			s = netip.AddrPortFrom(addr, 53).String()
		}
		ap, p := parseAddrPort(s)
		if p == nil && (ap.Addr().IsUnspecified() || ap.Addr().IsMulticast()) {
			p = &problem{"Invalid DNS server", ap.Addr().String() + " is not a unicast address; a DNS server is an address inside the tunnels, such as 10.99.0.2:53."}
		}
		if p != nil {
			d.problemAt(p, rngs[i], &a["servers"].Range)
			continue
		}
		out.Servers = append(out.Servers, ap)
	}
	if len(strs) == 0 {
		d.attrError(a["servers"], "No DNS server", "servers lists no server; add one, such as servers = [\"10.99.0.2:53\"], or remove the dns block.")
	}
	return out
}

// isTargetName reports whether s is a host name with a valid port
// ("db.internal:5432"), which a forward block may have as its target.
func isTargetName(s string) bool {
	host, port, err := net.SplitHostPort(s)
	if err != nil || !isHostName(host) {
		return false
	}
	n, err := strconv.ParseUint(port, 10, 16)
	return err == nil && n != 0
}

// isHostName reports whether s looks like a DNS host name (RFC 1123
// labels), and not like an IP address.
func isHostName(s string) bool {
	s = strings.TrimSuffix(s, ".")
	if s == "" || len(s) > 253 {
		return false
	}
	if _, err := netip.ParseAddr(s); err == nil {
		return false
	}
	letter := false
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, c := range label {
			switch {
			case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z':
				letter = true
			case c >= '0' && c <= '9', c == '-', c == '_':
			default:
				return false
			}
		}
	}
	return letter
}
