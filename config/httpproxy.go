package config

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclwrite"
	"github.com/zclconf/go-cty/cty"
)

// HTTPProxy is an http_proxy block: a forward HTTP proxy (CONNECT to any
// port, and absolute-URI requests for plain HTTP) on the host whose
// connections are dialed inside the stack.
type HTTPProxy struct {
	// Name is the block label, unique among http_proxy blocks.
	Name string
	// Listen is the host address to listen on, with a non-zero port.
	Listen netip.AddrPort
	// Username and Password enable Basic authentication through the
	// Proxy-Authorization header; both are set (1..255 bytes, and no ':'
	// in the username, RFC 7617) or both are "" (the default: no
	// authentication).
	Username string
	Password string
	// MaxConnections bounds concurrent client connections. Default
	// DefaultMaxConnections (1024).
	MaxConnections int
	// MaxConnectionsPerClient bounds the concurrent connections of one
	// client IP address. Default 0: a quarter of MaxConnections.
	MaxConnectionsPerClient int
}

// AuthRequired reports whether clients must authenticate.
func (p *HTTPProxy) AuthRequired() bool { return p.Username != "" }

var httpProxySchema = &hcl.BodySchema{Attributes: attrs("!listen", "username", "password", "max_connections", "max_connections_per_client")}

// maxHTTPProxyCredentialLength bounds username and password: nothing in
// Basic authentication limits them, but a proxy's header limit does.
const maxHTTPProxyCredentialLength = 255

func (d *decoder) decodeHTTPProxy(b *hcl.Block) (HTTPProxy, hcl.Attributes) {
	a := d.content(b, httpProxySchema)
	p := HTTPProxy{Name: b.Labels[0], MaxConnections: DefaultMaxConnections}
	if ap, ok := d.hostAddrPort(a["listen"]); ok {
		p.Listen = ap
		if ap.Addr().IsMulticast() {
			d.attrError(a["listen"], "Invalid listen address", "%s is a multicast address; listen on a unicast address, or on 0.0.0.0 or [::] for all.", ap.Addr())
		}
	}
	cred := func(name string) (string, bool) {
		ca := a[name]
		v, ok := d.str(ca)
		switch {
		case ok && (len(v) < 1 || len(v) > maxHTTPProxyCredentialLength):
			d.attrError(ca, "Invalid "+name, "The http_proxy %s must be 1 to %d bytes long, not %d.", name, maxHTTPProxyCredentialLength, len(v))
			return "", false
		case ok && name == "username" && strings.Contains(v, ":"):
			d.attrError(ca, "Invalid username", "A Basic authentication username cannot contain ':' (RFC 7617 §2): the client sends \"username:password\". Choose a username without ':'.")
			return "", false
		}
		return v, ok
	}
	if user, pass, ok := d.credentials(a, "Basic", cred); ok {
		p.Username, p.Password = user, pass
	}
	if v, ok := d.integer(a["max_connections"], 1, maxConnectionsLimit, ""); ok {
		p.MaxConnections = v
	}
	if v, ok := d.integer(a["max_connections_per_client"], 1, maxConnectionsLimit, ""); ok {
		p.MaxConnectionsPerClient = v
	}
	return p, a
}

// httpProxyListeners are the host listeners of cfg's http_proxy blocks,
// for the duplicate check.
func httpProxyListeners(cfg *Config, src *sources) []listener {
	var out []listener
	for i, p := range cfg.HTTPProxies {
		out = append(out, listener{fmt.Sprintf("http_proxy %q", p.Name), TCP, p.Listen, src.httpProxies[i].attrs["listen"], src.httpProxies[i].block})
	}
	return out
}

// checkExposedHTTPProxies warns about http_proxy blocks without
// authentication on a non-loopback address (see checkExposed).
func (d *decoder) checkExposedHTTPProxies(cfg *Config, src *sources) {
	for i, p := range cfg.HTTPProxies {
		if a := src.httpProxies[i].attrs["listen"]; a != nil && !isLoopback(p.Listen) && p.Username == "" {
			d.attrWarning(a, "Open HTTP proxy",
				"HTTP proxy %q listens on %s, which is not a loopback address, without authentication: anyone who can reach it can connect to any address through the tunnels. Listen on 127.0.0.1:%d (or [::1]), or set username and password.",
				p.Name, p.Listen, p.Listen.Port())
		}
	}
}

// writeHTTPProxies appends cfg's http_proxy blocks to root (Format).
func writeHTTPProxies(root *hclwrite.Body, c *Config) {
	for _, p := range c.HTTPProxies {
		root.AppendNewline()
		b := root.AppendNewBlock("http_proxy", []string{p.Name}).Body()
		b.SetAttributeValue("listen", str(p.Listen))
		if p.AuthRequired() {
			b.SetAttributeValue("username", cty.StringVal(p.Username))
			b.SetAttributeValue("password", cty.StringVal(p.Password))
		}
		b.SetAttributeValue("max_connections", num(p.MaxConnections))
		if p.MaxConnectionsPerClient != 0 {
			b.SetAttributeValue("max_connections_per_client", num(p.MaxConnectionsPerClient))
		}
	}
}
