package config

import (
	"fmt"
	"net/netip"

	"github.com/hashicorp/hcl/v2"
)

// checkExposed warns about host listeners that other machines can reach:
// the status server, forwards, and SOCKS5 and HTTP proxies without authentication,
// on anything but a loopback address. They are valid (a gateway may mean
// them), so these are warnings at the listen attribute, not errors.
// Reverse forwards listen inside the tunnels, where the peers are meant to
// reach them, and are not checked.
func (d *decoder) checkExposed(cfg *Config, src *sources) {
	if cfg.Status.Enabled() && src.status != nil && !isLoopback(cfg.Status.Listen) {
		// Only with a listen attribute: the default is loopback.
		if a := src.status.attrs["listen"]; a != nil {
			d.attrWarning(a, "Status server reachable from other hosts",
				"The status server listens on %s, which is not a loopback address: anyone who can reach it can read /status and /metrics (tunnel endpoints, inner addresses, services and their counters). Listen on 127.0.0.1:%d (or [::1]) and reach it through SSH or a reverse proxy, or firewall the port.",
				cfg.Status.Listen, cfg.Status.Listen.Port())
		}
	}
	for i, f := range cfg.Forwards {
		if a := src.forwards[i].attrs["listen"]; a != nil && !isLoopback(f.Listen) {
			d.attrWarning(a, "Forward reachable from other hosts",
				"Forward %q listens on %s, which is not a loopback address: anyone who can reach it gets a %s connection to %s inside the tunnels, with no authentication. Listen on 127.0.0.1:%d (or [::1]) unless other hosts are meant to use it, and then firewall the port.",
				f.Name, f.Listen, f.Protocol, f.Target, f.Listen.Port())
		}
	}
	for i, s := range cfg.SOCKS5 {
		if a := src.socks5[i].attrs["listen"]; a != nil && !isLoopback(s.Listen) && s.Username == "" {
			d.attrWarning(a, "Open SOCKS5 proxy",
				"SOCKS5 proxy %q listens on %s, which is not a loopback address, without authentication: anyone who can reach it can connect to any address through the tunnels. Listen on 127.0.0.1:%d (or [::1]), or set username and password.",
				s.Name, s.Listen, s.Listen.Port())
		}
	}
	d.checkExposedHTTPProxies(cfg, src)
}

// isLoopback reports whether ap can only be reached from this host.
func isLoopback(ap netip.AddrPort) bool { return ap.Addr().Unmap().IsLoopback() }

// attrWarning reports a warning about the value of a.
func (d *decoder) attrWarning(a *hcl.Attribute, summary, format string, args ...any) {
	d.report(hcl.DiagWarning, a.Expr.Range(), &a.Range, summary, fmt.Sprintf(format, args...))
}
