package config

import (
	"net/netip"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"
)

// Bounds of a tunnel's keepalive interval.
const (
	minKeepalive = time.Second
	maxKeepalive = time.Hour
)

// decodeKeepalive decodes a tunnel's keepalive and peer_address, once its
// addresses are decoded.
func (d *decoder) decodeKeepalive(a hcl.Attributes, t *Tunnel) {
	if pa := a["peer_address"]; pa != nil {
		if s, ok := d.str(pa); ok {
			ip, err := netip.ParseAddr(s)
			switch {
			case err != nil || ip.Zone() != "":
				d.attrError(pa, "Invalid peer_address", "peer_address is the peer's inner address as an IP literal without prefix, like \"10.99.0.2\", not %q.", s)
			case ip.IsUnspecified() || ip.IsMulticast():
				d.attrError(pa, "Invalid peer_address", "peer_address must be the peer's unicast inner address, not %s.", ip)
			default:
				t.PeerAddress = ip.Unmap()
			}
		}
	}
	ka := a["keepalive"]
	v, ok := d.duration(ka)
	if !ok {
		return
	}
	if v < minKeepalive || v > maxKeepalive {
		d.attrError(ka, "Value out of range", "keepalive must be between 1s and 1h, not %v.", v)
		return
	}
	t.Keepalive = v
	if len(t.Addresses) > 0 && !t.PeerInner().IsValid() {
		d.attrError(ka, "No peer address to probe",
			"keepalive sends ICMP echo requests to the peer's inner address, which is derived only from a point-to-point prefix (/30 or /31 for IPv4, /127 for IPv6) of addresses; set peer_address = \"...\" to the peer's inner address.")
	}
}

// durationOrOff decodes a duration between lo and hi, or the word "off",
// which is 0.
func (d *decoder) durationOrOff(a *hcl.Attribute, lo, hi time.Duration) (time.Duration, bool) {
	if a == nil {
		return 0, false
	}
	if v, diags := a.Expr.Value(d.ctx); !diags.HasErrors() && v.IsWhollyKnown() && !v.IsNull() {
		if v, _ = v.UnmarkDeep(); v.Type() == cty.String && v.AsString() == "off" {
			return 0, true
		}
	}
	v, ok := d.duration(a)
	if !ok {
		return 0, false
	}
	if v < lo || v > hi {
		d.attrError(a, "Value out of range", "%s must be between %v and %v, or \"off\", not %v.", a.Name, lo, hi, v)
		return 0, false
	}
	return v, true
}
