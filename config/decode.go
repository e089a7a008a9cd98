package config

import (
	"fmt"
	"math"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
)

func attrs(names ...string) []hcl.AttributeSchema {
	out := make([]hcl.AttributeSchema, len(names))
	for i, n := range names {
		required := strings.HasPrefix(n, "!")
		out[i] = hcl.AttributeSchema{Name: strings.TrimPrefix(n, "!"), Required: required}
	}
	return out
}

// Schemas. A leading "!" marks a required attribute.
var (
	rootSchema = &hcl.BodySchema{Blocks: []hcl.BlockHeaderSchema{
		{Type: "log"},
		{Type: "status"},
		{Type: "stack"},
		{Type: "tunnel", LabelNames: []string{"name"}},
		{Type: "forward", LabelNames: []string{"name"}},
		{Type: "reverse", LabelNames: []string{"name"}},
		{Type: "socks5", LabelNames: []string{"name"}},
		{Type: "http_proxy", LabelNames: []string{"name"}},
		{Type: "tun"},
		{Type: "dns"},
	}}
	logSchema    = &hcl.BodySchema{Attributes: attrs("level", "format")}
	statusSchema = &hcl.BodySchema{Attributes: attrs("listen")}
	stackSchema  = &hcl.BodySchema{Attributes: attrs(
		"tcp_sack", "tcp_congestion", "tcp_send_buffer", "tcp_receive_buffer",
		"tcp_moderate_receive_buffer", "tcp_min_rto", "forwarding", "reassembly_timeout", "reassembly_memory",
		"tcp_keepalive")}
	tunnelSchema = &hcl.BodySchema{Attributes: attrs(
		"transport", "!local", "!remote", "!addresses", "routes", "default_route",
		"allowed_sources", "mtu", "path_mtu", "ttl", "tos", "df", "encap_limit", "roaming", "any_source_port", "capture",
		"keepalive", "peer_address"),
		Blocks: []hcl.BlockHeaderSchema{{Type: "impair"}, {Type: "filter"}}}
	impairSchema = &hcl.BodySchema{Attributes: attrs(
		"loss", "reorder", "duplicate", "corrupt", "delay", "jitter", "rate", "seed")}
	forwardSchema = &hcl.BodySchema{Attributes: attrs(
		"protocol", "!listen", "!target", "idle_timeout", "dial_timeout", "max_connections", "max_sessions_per_source")}
	socks5Schema = &hcl.BodySchema{Attributes: attrs("!listen", "username", "password", "max_connections", "max_connections_per_client", "dial_timeout", "resolve")}
	dnsSchema    = &hcl.BodySchema{Attributes: attrs("!servers")}
	tunSchema    = &hcl.BodySchema{Attributes: attrs("name", "addresses", "routes", "mtu")}
)

// nameRE is what block labels may look like: they name NICs, log fields and
// metric labels.
var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`)

// Source positions kept for the checks that span several blocks.
type (
	tunnelSrc struct {
		block     *hcl.Block
		attrs     hcl.Attributes
		addrRngs  []hcl.Range
		routeRngs []hcl.Range
	}
	blockSrc struct {
		block *hcl.Block
		attrs hcl.Attributes
	}
	sources struct {
		tunnels  []tunnelSrc
		forwards []blockSrc
		reverses []blockSrc
		socks5   []blockSrc
		status   *blockSrc
		tun      *tunnelSrc // addrRngs and routeRngs as for a tunnel

		httpProxies []blockSrc // httpproxy.go
	}
)

func (d *decoder) content(b *hcl.Block, schema *hcl.BodySchema) hcl.Attributes {
	c, diags := b.Body.Content(schema)
	d.diags = append(d.diags, diags...)
	return c.Attributes
}

// at formats a range's start for "declared at" details.
func at(r hcl.Range) string { return fmt.Sprintf("%s:%d", r.Filename, r.Start.Line) }

func (d *decoder) decodeFile(body hcl.Body) *Config {
	content, diags := body.Content(rootSchema)
	d.diags = append(d.diags, diags...)

	cfg := &Config{}
	src := &sources{}
	singles := map[string]*hcl.Block{}
	seenNames := map[string]*hcl.Block{}
	for _, b := range content.Blocks {
		if len(b.Labels) == 0 {
			if prev := singles[b.Type]; prev != nil {
				d.errorf(b.DefRange, nil, "Duplicate "+b.Type+" block",
					"Only one %s block is allowed; the first is at %s.", b.Type, at(prev.DefRange))
				continue
			}
			singles[b.Type] = b
			continue
		}
		name := b.Labels[0]
		if !nameRE.MatchString(name) {
			d.errorf(b.LabelRanges[0], &b.DefRange, "Invalid name",
				"%q is not a valid %s name: names are 1 to 63 letters, digits, '_', '.' or '-', starting with a letter or digit.", name, b.Type)
		}
		key := b.Type + "\x00" + name
		if prev := seenNames[key]; prev != nil {
			d.errorf(b.LabelRanges[0], &b.DefRange, "Duplicate "+b.Type+" name",
				"A %s block named %q is already declared at %s; %s names must be unique.", b.Type, name, at(prev.DefRange), b.Type)
		} else {
			seenNames[key] = b
		}
	}

	if b := singles["log"]; b != nil {
		cfg.Log = d.decodeLog(b)
	}
	if b := singles["status"]; b != nil {
		cfg.Status, src.status = d.decodeStatus(b)
	}
	cfg.Stack = d.decodeStack(singles["stack"])
	if b := singles["dns"]; b != nil {
		cfg.DNS = d.decodeDNS(b) // dns.go
	}
	for _, b := range content.Blocks {
		if len(b.Labels) == 0 {
			continue // a single block, or a label HCL already reported missing
		}
		switch b.Type {
		case "tunnel":
			t, ts := d.decodeTunnel(b)
			cfg.Tunnels = append(cfg.Tunnels, t)
			src.tunnels = append(src.tunnels, ts)
		case "forward":
			f, a := d.decodeForward(b)
			cfg.Forwards = append(cfg.Forwards, Forward(f))
			src.forwards = append(src.forwards, blockSrc{b, a})
		case "reverse":
			f, a := d.decodeForward(b)
			cfg.Reverses = append(cfg.Reverses, Reverse(f))
			src.reverses = append(src.reverses, blockSrc{b, a})
		case "socks5":
			s, a := d.decodeSOCKS5(b)
			cfg.SOCKS5 = append(cfg.SOCKS5, s)
			src.socks5 = append(src.socks5, blockSrc{b, a})
		case "http_proxy":
			p, a := d.decodeHTTPProxy(b)
			cfg.HTTPProxies = append(cfg.HTTPProxies, p)
			src.httpProxies = append(src.httpProxies, blockSrc{b, a})
		}
	}
	if len(cfg.Tunnels) == 0 && !diags.HasErrors() {
		d.errorf(endOf(body), nil, "No tunnel",
			"The configuration declares no tunnel block; at least one is required, like\n\n"+
				"  tunnel \"peer1\" {\n    local     = \"127.0.0.1:4700\"\n    remote    = \"127.0.0.1:4701\"\n    addresses = [\"10.99.0.1/30\"]\n  }")
	}
	if b := singles["tun"]; b != nil {
		cfg.TUN, src.tun = d.decodeTUN(b)
	}

	// The checks across blocks compare values that must all be valid;
	// running them after an error would mostly repeat it.
	if !d.diags.HasErrors() {
		d.crossCheck(cfg, src)
	}
	return cfg
}

// endOf returns an empty range at the end of body, where a missing block
// would go.
func endOf(body hcl.Body) hcl.Range {
	if b, ok := body.(*hclsyntax.Body); ok {
		return hcl.Range{Filename: b.SrcRange.Filename, Start: b.SrcRange.End, End: b.SrcRange.End}
	}
	return body.MissingItemRange()
}

func (d *decoder) decodeLog(b *hcl.Block) Log {
	a := d.content(b, logSchema)
	var l Log
	if i, ok := d.enum(a["level"], "debug", "info", "warn", "error"); ok {
		l.Level = []LogLevel{LogDebug, LogInfo, LogWarn, LogError}[i]
	}
	if i, ok := d.enum(a["format"], logFormats...); ok {
		l.Format = LogFormat(i)
	}
	return l
}

func (d *decoder) decodeStatus(b *hcl.Block) (Status, *blockSrc) {
	a := d.content(b, statusSchema)
	s := Status{Listen: netip.MustParseAddrPort(DefaultStatusListen)}
	if ap, ok := d.hostAddrPort(a["listen"]); ok {
		s.Listen = ap
	}
	return s, &blockSrc{b, a}
}

func (d *decoder) decodeStack(b *hcl.Block) Stack {
	s := Stack{
		TCPSACK:                  true,
		TCPModerateReceiveBuffer: true,
		ReassemblyTimeout:        DefaultReassemblyTimeout,
		ReassemblyMemory:         DefaultReassemblyMemory,
		TCPKeepalive:             DefaultTCPKeepalive,
	}
	if b == nil {
		return s
	}
	a := d.content(b, stackSchema)
	if v, ok := d.boolean(a["tcp_sack"]); ok {
		s.TCPSACK = v
	}
	if i, ok := d.enum(a["tcp_congestion"], congestions[CongestionReno:]...); ok {
		s.TCPCongestion = CongestionReno + Congestion(i)
	}
	const bufWhy = " bytes (4 KiB to 1 GiB)"
	if v, ok := d.integer(a["tcp_send_buffer"], minBufferSize, maxBufferSize, bufWhy); ok {
		s.TCPSendBuffer = v
	}
	if v, ok := d.integer(a["tcp_receive_buffer"], minBufferSize, maxBufferSize, bufWhy); ok {
		s.TCPReceiveBuffer = v
	}
	if v, ok := d.boolean(a["tcp_moderate_receive_buffer"]); ok {
		s.TCPModerateReceiveBuffer = v
	}
	if v, ok := d.duration(a["tcp_min_rto"]); ok {
		if v < time.Millisecond || v > time.Minute {
			d.attrError(a["tcp_min_rto"], "Value out of range", "tcp_min_rto must be between 1ms and 1m, not %v.", v)
		} else {
			s.TCPMinRTO = v
		}
	}
	if v, ok := d.boolean(a["forwarding"]); ok {
		s.Forwarding = v
	}
	if v, ok := d.duration(a["reassembly_timeout"]); ok {
		if v < time.Millisecond || v > time.Hour {
			d.attrError(a["reassembly_timeout"], "Value out of range", "reassembly_timeout must be between 1ms and 1h, not %v.", v)
		} else {
			s.ReassemblyTimeout = v
		}
	}
	if v, ok := d.integer(a["reassembly_memory"], minReassemblyMemory, maxBufferSize,
		" bytes (128 KiB, so that one maximal datagram fits, to 1 GiB)"); ok {
		s.ReassemblyMemory = v
	}
	if v, ok := d.durationOrOff(a["tcp_keepalive"], time.Second, 2*time.Hour); ok {
		s.TCPKeepalive = v
	}
	return s
}

// hostAddrPort decodes an address:port on the host or in the stack.
func (d *decoder) hostAddrPort(a *hcl.Attribute) (netip.AddrPort, bool) {
	s, ok := d.str(a)
	if !ok {
		return netip.AddrPort{}, false
	}
	ap, p := parseAddrPort(s)
	if p != nil {
		d.problemAt(p, a.Expr.Range(), &a.Range)
		return netip.AddrPort{}, false
	}
	return ap, true
}

// prefixList decodes a list of prefixes; canonical ones must have no host
// bits (routes), the others are addresses with their on-link prefix.
func (d *decoder) prefixList(a *hcl.Attribute, canonical bool) ([]netip.Prefix, []hcl.Range, bool) {
	strs, rngs, ok := d.strList(a)
	if !ok {
		return nil, nil, false
	}
	out := make([]netip.Prefix, 0, len(strs))
	outRngs := make([]hcl.Range, 0, len(strs))
	seen := map[netip.Prefix]int{}
	for i, s := range strs {
		p, prob := parsePrefix(s, canonical)
		if prob == nil && !canonical {
			switch addr := p.Addr(); {
			case addr.IsUnspecified(), addr.IsMulticast():
				prob = &problem{"Invalid address", fmt.Sprintf(
					"%q cannot be an interface address: it is the unspecified or a multicast address.", s)}
			case p.Bits() == 0:
				prob = &problem{"Invalid prefix length", fmt.Sprintf(
					"%q would put every address on-link; give the real on-link prefix, and use routes or default_route for the rest.", s)}
			}
		}
		if prob != nil {
			d.problemAt(prob, rngs[i], &a.Range)
			ok = false
			continue
		}
		key := p
		if !canonical {
			key = netip.PrefixFrom(p.Addr(), p.Addr().BitLen()) // duplicates by address
		}
		if j, dup := seen[key]; dup {
			d.errorf(rngs[i], &a.Range, "Duplicate list element",
				"%q repeats element %d (%q) of %s.", s, j, strs[j], a.Name)
			ok = false
			continue
		}
		seen[key] = i
		out = append(out, p)
		outRngs = append(outRngs, rngs[i])
	}
	return out, outRngs, ok
}

func (d *decoder) decodeTunnel(b *hcl.Block) (Tunnel, tunnelSrc) {
	errs := d.errorCount()
	body, diags := b.Body.Content(tunnelSchema)
	d.diags = append(d.diags, diags...)
	a := body.Attributes
	t := Tunnel{
		Name:       b.Labels[0],
		PathMTU:    DefaultPathMTU,
		EncapLimit: EncapLimitNone,
	}
	ts := tunnelSrc{block: b, attrs: a}

	transportOK := true
	if at := a["transport"]; at != nil {
		i, ok := d.enum(at, transports...)
		t.Transport, transportOK = Transport(i), ok
	}
	localOK, remoteOK := false, false
	if transportOK {
		t.Local, localOK = d.outerAddr(a["local"], t.Transport)
		t.Remote, remoteOK = d.outerAddr(a["remote"], t.Transport)
	}
	if localOK && t.Local.Addr().IsMulticast() {
		d.attrError(a["local"], "Invalid local address", "%s is a multicast address; local must be a unicast address of this host, or unspecified (0.0.0.0 or ::) to use any.", t.Local.Addr())
		localOK = false
	}
	if remoteOK && (t.Remote.Addr().IsUnspecified() || t.Remote.Addr().IsMulticast()) {
		d.attrError(a["remote"], "Invalid remote address", "%s is not a unicast address; remote is the peer's outer address.", t.Remote.Addr())
		remoteOK = false
	}
	if localOK && remoteOK && t.Local.Addr().Is4() != t.Remote.Addr().Is4() {
		d.attrError(a["remote"], "Address family mismatch",
			"remote is %s but local is %s; the outer header has a single family, so local and remote must both be IPv4 or both IPv6.",
			family(t.Remote.Addr()), family(t.Local.Addr()))
		remoteOK = false
	}
	outerOK := transportOK && localOK && remoteOK

	var addrsOK bool
	t.Addresses, ts.addrRngs, addrsOK = d.prefixList(a["addresses"], false)
	if addrsOK && len(t.Addresses) == 0 {
		d.attrError(a["addresses"], "No inner address", "A tunnel needs at least one inner address with its on-link prefix, like \"10.99.0.1/30\".")
		addrsOK = false
	}
	if ra := a["routes"]; ra != nil {
		t.Routes, ts.routeRngs, _ = d.prefixList(ra, true)
	}
	if v, ok := d.boolean(a["default_route"]); ok {
		t.DefaultRoute = v
	}
	if sa := a["allowed_sources"]; sa != nil {
		if p, _, ok := d.prefixList(sa, true); ok {
			if len(p) == 0 {
				d.attrError(sa, "Empty allowed_sources", "An empty list would drop every packet from the peer. Remove allowed_sources to accept the on-link prefixes and routes, or list the prefixes to accept.")
			}
			t.AllowedSources = p
		}
	}

	if v, ok := d.integer(a["path_mtu"], minIPv4MTU, maxMTU, ""); ok {
		t.PathMTU = v
		if localOK && t.OuterIPv6() && v < minIPv6MTU {
			d.attrError(a["path_mtu"], "Value out of range", "path_mtu must be at least 1280 for an IPv6 outer path (RFC 8200 section 5), not %d.", v)
		}
	}
	mtuAttr := a["mtu"]
	if v, ok := d.integer(mtuAttr, 0, maxMTU, ""); ok {
		switch {
		case v != 0 && v < minIPv4MTU:
			d.attrError(mtuAttr, "Value out of range", "mtu must be 0 (derive it from path_mtu) or between 68 and 65535, not %d: 68 is the smallest MTU IPv4 allows (RFC 791).", v)
		case v != 0 && addrsOK && t.HasIPv6Inner() && v < minIPv6MTU:
			d.attrError(mtuAttr, "MTU too small for IPv6", "mtu must be at least 1280 because the tunnel has an IPv6 inner address (RFC 8200 section 5 requires 1280), not %d.", v)
		default:
			t.MTU = v
		}
	}

	if n, inherit, ok := d.intOrKeyword(a["ttl"], "inherit", 1, 255); ok && !inherit {
		t.TTL = TTL(n)
	}
	if n, inherit, ok := d.intOrKeyword(a["tos"], "inherit", 0, 255); ok {
		t.TOS = TOS(n)
		if inherit {
			t.TOS = TOSInherit
		}
	}
	if i, ok := d.enum(a["df"], dfPolicies...); ok {
		t.DF = DF(i)
	}
	if outerOK && t.Transport == TransportRaw && t.OuterIPv6() {
		t.EncapLimit = DefaultEncapLimit
	}
	if ea := a["encap_limit"]; ea != nil {
		n, none, ok := d.intOrKeyword(ea, "none", 0, 255)
		switch {
		case !ok || !outerOK:
		case t.Transport != TransportRaw || !t.OuterIPv6():
			d.errorf(ea.NameRange, &ea.Range, "encap_limit not applicable",
				"encap_limit is the RFC 2473 option of an IPv6 outer header built by this process; it applies only to transport = \"raw\" with IPv6 local and remote addresses, and this tunnel is %s over %s.",
				t.Transport, family(t.Local.Addr()))
		case none:
			t.EncapLimit = EncapLimitNone
		default:
			t.EncapLimit = n
		}
	}
	if v, ok := d.boolean(a["roaming"]); ok {
		t.Roaming = v
	}
	if aa := a["any_source_port"]; aa != nil {
		if v, ok := d.boolean(aa); ok {
			if v && outerOK && t.Transport != TransportUDP {
				d.attrError(aa, "any_source_port not applicable",
					"any_source_port accepts UDP datagrams from the peer's address on any source port (Linux FOU with encap-sport auto); it applies only to transport = \"udp\".")
			}
			t.AnySourcePort = v
		}
	}
	if ca := a["capture"]; ca != nil {
		if s, ok := d.str(ca); ok {
			if s == "" || strings.ContainsRune(s, 0) {
				d.attrError(ca, "Invalid capture path", "capture must be a file path for the pcap output; remove the attribute to disable capture.")
			} else {
				t.Capture = s
			}
		}
	}

	d.decodeKeepalive(a, &t)

	for _, ib := range body.Blocks {
		if ib.Type == "filter" {
			d.tunnelFilter(&t, ib) // filter.go
			continue
		}
		if t.Impair != nil {
			d.errorf(ib.DefRange, nil, "Duplicate impair block",
				"Only one impair block is allowed in a tunnel; merge it with the first.")
			continue
		}
		t.Impair = d.decodeImpair(ib)
	}

	if ra := a["roaming"]; ra != nil && t.Roaming && acceptsAnySource(t) {
		d.report(hcl.DiagWarning, ra.Expr.Range(), &ra.Range, "Roaming with a catch-all allowed_sources",
			"roaming lets the peer's outer address change, and this tunnel accepts any inner source (allowed_sources holds a /0, or default_route without allowed_sources): anyone who can reach its local port can send packets into the stack from any inner address, and, once its address answers the echo request the tunnel sends it, receive the tunnel's traffic. IPIP and FOU authenticate nothing but the outer address. Narrow allowed_sources to the networks behind the peer, or pin the peer with roaming = false.")
	}

	// Inner MTU checks that need the outer family, transport and path MTU.
	if outerOK && addrsOK && d.errorCount() == errs {
		eff := t.EffectiveMTU()
		pa := a["path_mtu"]
		switch {
		case t.MTU == 0 && eff < minIPv4MTU:
			d.errorf(subjectOr(pa, b), rangePtr(pa), "MTU too small",
				"The inner MTU would be path_mtu %d minus %d bytes of %s encapsulation = %d, below the IPv4 minimum of 68.", t.PathMTU, t.Overhead(), t.Transport, eff)
		case t.MTU == 0 && t.HasIPv6Inner() && eff < minIPv6MTU:
			d.errorf(subjectOr(pa, b), rangePtr(pa), "MTU too small for IPv6",
				"The inner MTU would be path_mtu %d minus %d bytes of %s encapsulation = %d, but the tunnel has an IPv6 inner address, which needs 1280 (RFC 8200 section 5). Raise path_mtu, or set mtu = 1280 to let outer packets be fragmented.", t.PathMTU, t.Overhead(), t.Transport, eff)
		case t.MTU > t.PathMTU-t.Overhead() && t.DF == DFSet:
			d.report(hcl.DiagWarning, mtuAttr.Expr.Range(), &mtuAttr.Range, "Inner MTU exceeds the path",
				fmt.Sprintf("mtu %d plus %d bytes of %s encapsulation exceeds path_mtu %d, and df = \"set\" forbids fragmenting the outer packet, so full-size inner packets will be dropped. Lower mtu to %d or set df = \"clear\".",
					t.MTU, t.Overhead(), t.Transport, t.PathMTU, t.PathMTU-t.Overhead()))
		}
	}
	return t, ts
}

// acceptsAnySource reports whether t accepts every inner source address of
// a family: an allowed /0, or a default route that sets the default
// allowed sources.
func acceptsAnySource(t Tunnel) bool {
	if len(t.AllowedSources) == 0 {
		return t.DefaultRoute
	}
	for _, p := range t.AllowedSources {
		if p.Bits() == 0 {
			return true
		}
	}
	return false
}

// subjectOr returns a's value range, or b's header if a is absent.
func subjectOr(a *hcl.Attribute, b *hcl.Block) hcl.Range {
	if a != nil {
		return a.Expr.Range()
	}
	return b.DefRange
}

func rangePtr(a *hcl.Attribute) *hcl.Range {
	if a == nil {
		return nil
	}
	return &a.Range
}

// outerAddr decodes local or remote: address:port for UDP, a bare address
// for raw IP.
func (d *decoder) outerAddr(a *hcl.Attribute, tr Transport) (netip.AddrPort, bool) {
	s, ok := d.str(a)
	if !ok {
		return netip.AddrPort{}, false
	}
	if tr == TransportRaw {
		addr, p := parseBareAddr(s, `transport = "raw" carries IP protocol 4 or 41 directly and has no ports`)
		if p != nil {
			d.problemAt(p, a.Expr.Range(), &a.Range)
			return netip.AddrPort{}, false
		}
		return netip.AddrPortFrom(addr, 0), true
	}
	ap, p := parseAddrPort(s)
	if p != nil {
		if p.summary == "Missing port" {
			p.detail = fmt.Sprintf("%q has no port, but transport = \"udp\" needs one: write address:port, %s.", s, exampleAddrPort)
		}
		d.problemAt(p, a.Expr.Range(), &a.Range)
		return netip.AddrPort{}, false
	}
	return ap, true
}

// decodeForward decodes a forward or reverse block; they share a schema.
func (d *decoder) decodeForward(b *hcl.Block) (Forward, hcl.Attributes) {
	a := d.content(b, forwardSchema)
	f := Forward{Name: b.Labels[0], MaxConnections: DefaultMaxConnections, DialTimeout: DefaultDialTimeout}
	if i, ok := d.enum(a["protocol"], protocols...); ok {
		f.Protocol = Protocol(i)
	}
	if f.Protocol == UDP {
		f.IdleTimeout = DefaultUDPIdleTimeout
	}
	where := "inside the tunnels"
	if b.Type == "reverse" {
		where = "on the host"
	}
	listen, listenOK := d.hostAddrPort(a["listen"])
	var target netip.AddrPort
	targetOK := false
	if ts, ok := d.str(a["target"]); ok {
		if b.Type == "forward" && isTargetName(ts) { // dns.go
			f.TargetName = ts
		} else if ap, p := parseAddrPort(ts); p != nil {
			d.problemAt(p, a["target"].Expr.Range(), &a["target"].Range)
		} else {
			target, targetOK = ap, true
		}
	}
	f.Listen, f.Target = listen, target
	if listenOK && listen.Addr().IsMulticast() {
		d.attrError(a["listen"], "Invalid listen address", "%s is a multicast address; listen on a unicast address, or on 0.0.0.0 or [::] for all.", listen.Addr())
	}
	if targetOK && (target.Addr().IsUnspecified() || target.Addr().IsMulticast()) {
		d.attrError(a["target"], "Invalid target address", "%s is not a unicast address; target is the address %s that connections are relayed to.", target.Addr(), where)
	}
	if v, ok := d.duration(a["idle_timeout"]); ok {
		f.IdleTimeout = v
	}
	if v, ok := d.duration(a["dial_timeout"]); ok {
		f.DialTimeout = v
	}
	if v, ok := d.integer(a["max_connections"], 1, maxConnectionsLimit, ""); ok {
		f.MaxConnections = v
	}
	if ma := a["max_sessions_per_source"]; ma != nil && f.Protocol != UDP {
		d.attrError(ma, "Not a UDP forward", "max_sessions_per_source bounds UDP sessions; set protocol = \"udp\", or remove it.")
	} else if v, ok := d.integer(ma, 1, maxConnectionsLimit, ""); ok {
		f.MaxSessionsPerSource = v
	}
	return f, a
}

func (d *decoder) decodeSOCKS5(b *hcl.Block) (SOCKS5, hcl.Attributes) {
	a := d.content(b, socks5Schema)
	s := SOCKS5{Name: b.Labels[0], MaxConnections: DefaultMaxConnections, DialTimeout: DefaultDialTimeout}
	if ap, ok := d.hostAddrPort(a["listen"]); ok {
		s.Listen = ap
		if ap.Addr().IsMulticast() {
			d.attrError(a["listen"], "Invalid listen address", "%s is a multicast address; listen on a unicast address, or on 0.0.0.0 or [::] for all.", ap.Addr())
		}
	}
	cred := func(name string) (string, bool) {
		ca := a[name]
		v, ok := d.str(ca)
		if ok && (len(v) < 1 || len(v) > maxSOCKS5CredentialLength) {
			d.attrError(ca, "Invalid "+name, "The SOCKS5 %s must be 1 to 255 bytes long (RFC 1929), not %d.", name, len(v))
			return "", false
		}
		return v, ok
	}
	if user, pass, ok := d.credentials(a, "RFC 1929", cred); ok {
		s.Username, s.Password = user, pass
	}
	if v, ok := d.integer(a["max_connections"], 1, maxConnectionsLimit, ""); ok {
		s.MaxConnections = v
	}
	if v, ok := d.integer(a["max_connections_per_client"], 1, maxConnectionsLimit, ""); ok {
		s.MaxConnectionsPerClient = v
	}
	if v, ok := d.duration(a["dial_timeout"]); ok {
		s.DialTimeout = v
	}
	if i, ok := d.enum(a["resolve"], "tunnel", "host"); ok {
		s.ResolveOnHost = i == 1
	}
	return s, a
}

// badIfnameChars are the bytes Linux rejects in interface names
// (net/core/dev.c dev_valid_name).
const badIfnameChars = "/: \t\n\r\v\f"

func (d *decoder) decodeTUN(b *hcl.Block) (*TUN, *tunnelSrc) {
	a := d.content(b, tunSchema)
	t := &TUN{Name: DefaultTUNName}
	ts := &tunnelSrc{block: b, attrs: a}
	if na := a["name"]; na != nil {
		if s, ok := d.str(na); ok {
			if s == "" || len(s) > maxInterfaceName || s == "." || s == ".." || strings.ContainsAny(s, badIfnameChars) {
				d.attrError(na, "Invalid interface name",
					"%q is not a valid Linux interface name: names are 1 to 15 bytes without '/', ':' or white space, and not \".\" or \"..\".", s)
			} else {
				t.Name = s
			}
		}
	}
	if aa := a["addresses"]; aa != nil {
		t.Addresses, ts.addrRngs, _ = d.prefixList(aa, false)
	}
	if ra := a["routes"]; ra != nil {
		t.Routes, ts.routeRngs, _ = d.prefixList(ra, true)
	}
	if ma := a["mtu"]; ma != nil {
		if v, ok := d.integer(ma, minIPv4MTU, maxMTU, ""); ok {
			t.MTU = v
			for _, p := range t.Addresses {
				if p.Addr().Is6() && v < minIPv6MTU {
					d.attrError(ma, "MTU too small for IPv6", "mtu must be at least 1280 because the device has an IPv6 address (RFC 8200 section 5), not %d.", v)
					break
				}
			}
		}
	}
	return t, ts
}

// decodeImpair decodes a tunnel's impair block.
func (d *decoder) decodeImpair(b *hcl.Block) *Impair {
	a := d.content(b, impairSchema)
	im := &Impair{}
	for _, f := range []struct {
		name string
		dst  *float64
	}{{"loss", &im.Loss}, {"reorder", &im.Reorder}, {"duplicate", &im.Duplicate}, {"corrupt", &im.Corrupt}} {
		if v, ok := d.fraction(a[f.name]); ok {
			*f.dst = v
		}
	}
	if v, ok := d.duration(a["delay"]); ok {
		im.Delay = v
	}
	if v, ok := d.duration(a["jitter"]); ok {
		im.Jitter = v
	}
	if ra := a["rate"]; ra != nil {
		if s, ok := d.str(ra); ok {
			r, p := parseRate(s)
			if p != nil {
				d.problemAt(p, ra.Expr.Range(), &ra.Range)
			} else {
				im.Rate = r
			}
		}
	}
	if v, ok := d.integer(a["seed"], 0, math.MaxInt32, ""); ok {
		im.Seed = uint64(v)
	}
	if la := a["loss"]; la != nil && im.Loss == 1 {
		d.report(hcl.DiagWarning, la.Expr.Range(), &la.Range, "Tunnel drops everything",
			"loss = 1 drops every datagram this end sends; nothing will reach the peer.")
	}
	return im
}

// fraction returns a number in 0..1 (a probability).
func (d *decoder) fraction(a *hcl.Attribute) (float64, bool) {
	if a == nil {
		return 0, false
	}
	v, ok := d.value(a.Expr, &a.Range)
	if !ok {
		return 0, false
	}
	if v.Type() == cty.String && strings.HasSuffix(strings.TrimSpace(v.AsString()), "%") {
		d.attrError(a, "Invalid probability",
			"%s is a fraction from 0 to 1, not a percentage: write 0.05 for 5%%, not %q.", a.Name, v.AsString())
		return 0, false
	}
	if v, ok = d.convertTo(a, a.Expr, v, cty.Number, attrWhat(a)); !ok {
		return 0, false
	}
	f, _ := v.AsBigFloat().Float64()
	if !(f >= 0 && f <= 1) {
		d.attrError(a, "Value out of range",
			"%s is a probability and must be between 0 and 1 (0.05 is 5%%), not %s.", a.Name, numberText(v.AsBigFloat()))
		return 0, false
	}
	return f, true
}

// rateUnits are the units of a rate, in bits per second, as tc writes them.
var rateUnits = []struct {
	suffix string
	mult   float64
}{{"gbit", 1e9}, {"mbit", 1e6}, {"kbit", 1e3}, {"bit", 1}}

// Bounds of a rate limit, in bits per second.
const (
	minRate = 8000 // 1 kB/s
	maxRate = 1e12
)

// parseRate parses a rate such as "100Mbit" or "1.5Gbit" (k, M and G are
// powers of 1000, as in tc).
func parseRate(s string) (int64, *problem) {
	low := strings.ToLower(strings.TrimSpace(s))
	bad := func(why string) *problem {
		return &problem{"Invalid rate", fmt.Sprintf("%q is not a rate: %s Write a number with a unit of bits per second (bit, kbit, Mbit, Gbit), like \"100Mbit\".", s, why)}
	}
	for _, u := range rateUnits {
		num, ok := strings.CutSuffix(low, u.suffix)
		if !ok {
			continue
		}
		f, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
		if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
			return 0, bad("the number is not valid.")
		}
		r := f * u.mult
		if r < minRate || r > maxRate {
			return 0, &problem{"Value out of range", fmt.Sprintf("rate must be between 8kbit and 1000Gbit, not %q.", s)}
		}
		return int64(r), nil
	}
	for _, suf := range []string{"bps", "b/s", "bytes", "b"} {
		if strings.HasSuffix(low, suf) {
			return 0, bad("rates are in bits per second, not bytes.")
		}
	}
	return 0, bad("it has no unit.")
}

// formatRate writes r with the largest unit that keeps it whole.
func formatRate(r int64) string {
	for _, u := range []struct {
		name string
		mult int64
	}{{"Gbit", 1e9}, {"Mbit", 1e6}, {"kbit", 1e3}} {
		if r%u.mult == 0 {
			return strconv.FormatInt(r/u.mult, 10) + u.name
		}
	}
	return strconv.FormatInt(r, 10) + "bit"
}

// credentials decodes a block's username and password, each with cred,
// and reports them when both are given; one without the other is an error
// that names scheme ("RFC 1929", "Basic").
func (d *decoder) credentials(a hcl.Attributes, scheme string, cred func(name string) (string, bool)) (user, pass string, ok bool) {
	user, userOK := cred("username")
	pass, passOK := cred("password")
	switch ua, pa := a["username"], a["password"]; {
	case ua != nil && pa == nil:
		d.errorf(ua.NameRange, &ua.Range, "Username without password",
			"%s authentication needs both a username and a password; add password, or remove username to accept clients without authentication.", scheme)
	case pa != nil && ua == nil:
		d.errorf(pa.NameRange, &pa.Range, "Password without username",
			"%s authentication needs both a username and a password; add username, or remove password to accept clients without authentication.", scheme)
	case userOK && passOK:
		return user, pass, true
	}
	return "", "", false
}
