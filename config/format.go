package config

import (
	"net/netip"
	"time"

	"github.com/hashicorp/hcl/v2/hclwrite"
	"github.com/zclconf/go-cty/cty"
)

// HCL returns c as an HCL file with every value written out, defaults
// included and env() calls replaced by their values (so secrets appear in
// clear). Parsing the result yields a Config equal to c, provided c came
// from Parse.
func (c *Config) HCL() []byte {
	f := hclwrite.NewEmptyFile()
	root := f.Body()

	b := root.AppendNewBlock("log", nil).Body()
	b.SetAttributeValue("level", cty.StringVal(c.Log.Level.String()))
	b.SetAttributeValue("format", cty.StringVal(c.Log.Format.String()))

	if c.Status.Enabled() {
		root.AppendNewline()
		b = root.AppendNewBlock("status", nil).Body()
		b.SetAttributeValue("listen", str(c.Status.Listen))
	}

	root.AppendNewline()
	s := &c.Stack
	b = root.AppendNewBlock("stack", nil).Body()
	b.SetAttributeValue("tcp_sack", cty.BoolVal(s.TCPSACK))
	if s.TCPCongestion != CongestionDefault {
		b.SetAttributeValue("tcp_congestion", cty.StringVal(s.TCPCongestion.String()))
	}
	if s.TCPSendBuffer != 0 {
		b.SetAttributeValue("tcp_send_buffer", num(s.TCPSendBuffer))
	}
	if s.TCPReceiveBuffer != 0 {
		b.SetAttributeValue("tcp_receive_buffer", num(s.TCPReceiveBuffer))
	}
	b.SetAttributeValue("tcp_moderate_receive_buffer", cty.BoolVal(s.TCPModerateReceiveBuffer))
	if s.TCPMinRTO != 0 {
		b.SetAttributeValue("tcp_min_rto", dur(s.TCPMinRTO))
	}
	b.SetAttributeValue("forwarding", cty.BoolVal(s.Forwarding))
	b.SetAttributeValue("reassembly_timeout", dur(s.ReassemblyTimeout))
	b.SetAttributeValue("reassembly_memory", num(s.ReassemblyMemory))
	if s.TCPKeepalive == 0 {
		b.SetAttributeValue("tcp_keepalive", cty.StringVal("off"))
	} else {
		b.SetAttributeValue("tcp_keepalive", dur(s.TCPKeepalive))
	}

	for i := range c.Tunnels {
		t := &c.Tunnels[i]
		root.AppendNewline()
		b = root.AppendNewBlock("tunnel", []string{t.Name}).Body()
		b.SetAttributeValue("transport", cty.StringVal(t.Transport.String()))
		if t.Transport == TransportRaw {
			b.SetAttributeValue("local", str(t.Local.Addr()))
			b.SetAttributeValue("remote", str(t.Remote.Addr()))
		} else {
			b.SetAttributeValue("local", str(t.Local))
			b.SetAttributeValue("remote", str(t.Remote))
		}
		b.SetAttributeValue("addresses", prefixes(t.Addresses))
		if len(t.Routes) > 0 {
			b.SetAttributeValue("routes", prefixes(t.Routes))
		}
		b.SetAttributeValue("default_route", cty.BoolVal(t.DefaultRoute))
		if t.AllowedSources != nil {
			b.SetAttributeValue("allowed_sources", prefixes(t.AllowedSources))
		}
		b.SetAttributeValue("mtu", num(t.MTU))
		b.SetAttributeValue("path_mtu", num(t.PathMTU))
		b.SetAttributeValue("ttl", numOrWord(int(t.TTL), t.TTL == TTLInherit, "inherit"))
		b.SetAttributeValue("tos", numOrWord(int(t.TOS), t.TOS == TOSInherit, "inherit"))
		b.SetAttributeValue("df", cty.StringVal(t.DF.String()))
		if t.Transport == TransportRaw && t.OuterIPv6() {
			b.SetAttributeValue("encap_limit", numOrWord(t.EncapLimit, t.EncapLimit == EncapLimitNone, "none"))
		}
		b.SetAttributeValue("roaming", cty.BoolVal(t.Roaming))
		b.SetAttributeValue("any_source_port", cty.BoolVal(t.AnySourcePort))
		if t.Capture != "" {
			b.SetAttributeValue("capture", cty.StringVal(t.Capture))
		}
		if t.Keepalive != 0 {
			b.SetAttributeValue("keepalive", dur(t.Keepalive))
		}
		if t.PeerAddress.IsValid() {
			b.SetAttributeValue("peer_address", cty.StringVal(t.PeerAddress.String()))
		}
		if im := t.Impair; im != nil {
			ib := b.AppendNewBlock("impair", nil).Body()
			ib.SetAttributeValue("loss", cty.NumberFloatVal(im.Loss))
			ib.SetAttributeValue("reorder", cty.NumberFloatVal(im.Reorder))
			ib.SetAttributeValue("duplicate", cty.NumberFloatVal(im.Duplicate))
			ib.SetAttributeValue("corrupt", cty.NumberFloatVal(im.Corrupt))
			if im.Delay != 0 {
				ib.SetAttributeValue("delay", dur(im.Delay))
			}
			if im.Jitter != 0 {
				ib.SetAttributeValue("jitter", dur(im.Jitter))
			}
			if im.Rate != 0 {
				ib.SetAttributeValue("rate", cty.StringVal(formatRate(im.Rate)))
			}
			ib.SetAttributeValue("seed", cty.NumberUIntVal(im.Seed))
		}
		if t.Filter != nil {
			writeFilter(b, t.Filter) // filter.go
		}
	}
	for _, fw := range c.Forwards {
		root.AppendNewline()
		writeForward(root.AppendNewBlock("forward", []string{fw.Name}).Body(), fw)
	}
	for _, r := range c.Reverses {
		root.AppendNewline()
		writeForward(root.AppendNewBlock("reverse", []string{r.Name}).Body(), Forward(r))
	}
	for _, p := range c.SOCKS5 {
		root.AppendNewline()
		b = root.AppendNewBlock("socks5", []string{p.Name}).Body()
		b.SetAttributeValue("listen", str(p.Listen))
		if p.AuthRequired() {
			b.SetAttributeValue("username", cty.StringVal(p.Username))
			b.SetAttributeValue("password", cty.StringVal(p.Password))
		}
		b.SetAttributeValue("max_connections", num(p.MaxConnections))
		if p.MaxConnectionsPerClient != 0 {
			b.SetAttributeValue("max_connections_per_client", num(p.MaxConnectionsPerClient))
		}
		if p.DialTimeout != 0 {
			b.SetAttributeValue("dial_timeout", dur(p.DialTimeout))
		}
		if p.ResolveOnHost {
			b.SetAttributeValue("resolve", cty.StringVal("host"))
		}
	}
	if c.DNS != nil {
		root.AppendNewline()
		b = root.AppendNewBlock("dns", nil).Body()
		servers := make([]cty.Value, len(c.DNS.Servers))
		for i, s := range c.DNS.Servers {
			servers[i] = str(s)
		}
		b.SetAttributeValue("servers", cty.ListVal(servers))
	}
	writeHTTPProxies(root, c) // httpproxy.go
	if t := c.TUN; t != nil {
		root.AppendNewline()
		b = root.AppendNewBlock("tun", nil).Body()
		b.SetAttributeValue("name", cty.StringVal(t.Name))
		if len(t.Addresses) > 0 {
			b.SetAttributeValue("addresses", prefixes(t.Addresses))
		}
		if len(t.Routes) > 0 {
			b.SetAttributeValue("routes", prefixes(t.Routes))
		}
		b.SetAttributeValue("mtu", num(t.MTU))
	}
	return f.Bytes()
}

func writeForward(b *hclwrite.Body, f Forward) {
	b.SetAttributeValue("protocol", cty.StringVal(f.Protocol.String()))
	b.SetAttributeValue("listen", str(f.Listen))
	if f.TargetName != "" {
		b.SetAttributeValue("target", cty.StringVal(f.TargetName))
	} else {
		b.SetAttributeValue("target", str(f.Target))
	}
	if f.IdleTimeout != 0 {
		b.SetAttributeValue("idle_timeout", dur(f.IdleTimeout))
	}
	if f.DialTimeout != 0 {
		b.SetAttributeValue("dial_timeout", dur(f.DialTimeout))
	}
	b.SetAttributeValue("max_connections", num(f.MaxConnections))
	if f.MaxSessionsPerSource != 0 {
		b.SetAttributeValue("max_sessions_per_source", num(f.MaxSessionsPerSource))
	}
}

func str[T interface{ String() string }](v T) cty.Value { return cty.StringVal(v.String()) }

func num(n int) cty.Value { return cty.NumberIntVal(int64(n)) }

func dur(d time.Duration) cty.Value { return cty.StringVal(d.String()) }

func numOrWord(n int, isWord bool, word string) cty.Value {
	if isWord {
		return cty.StringVal(word)
	}
	return num(n)
}

func prefixes(ps []netip.Prefix) cty.Value {
	if len(ps) == 0 {
		return cty.ListValEmpty(cty.String)
	}
	vals := make([]cty.Value, len(ps))
	for i, p := range ps {
		vals[i] = cty.StringVal(p.String())
	}
	return cty.ListVal(vals)
}
