package config

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclwrite"
	"github.com/zclconf/go-cty/cty"
)

// A tunnel's filter block:
//
//	filter {
//	  default   = "deny"   # or "allow"; default "deny"
//	  max_flows = 65536    # flow table bound; default 65536
//	  rule {
//	    action       = "allow"            # required: "allow" or "deny"
//	    protocol     = "tcp"              # "tcp", "udp", "icmp" or "any" (default)
//	    destinations = ["10.1.0.0/16"]    # default: any destination
//	    ports        = ["22", "8000-8080"] # tcp and udp only; default: any port
//	  }
//	}
//
// It filters the inner packets arriving from the tunnel, forwarded or
// addressed to the stack, statefully: replies to flows that left through
// the tunnel pass (see stack.Filter).

var (
	filterSchema = &hcl.BodySchema{Attributes: attrs("default", "max_flows"),
		Blocks: []hcl.BlockHeaderSchema{{Type: "rule"}}}
	ruleSchema = &hcl.BodySchema{Attributes: attrs("!action", "protocol", "destinations", "ports")}
)

// maxFilterFlows bounds max_flows, like stack.MaxFlows.
const maxFilterFlows = 1 << 24

// Filter is a tunnel's filter block. The daemon maps it onto stack.Filter.
type Filter struct {
	// Default is the action when no rule matches. Zero value (and the
	// default when the attribute is absent): FilterDeny.
	Default FilterAction
	// MaxFlows bounds the flow table; 0 (the default) is the stack's
	// default, 65536.
	MaxFlows int
	// Rules are tried in order; the first that matches decides.
	Rules []FilterRule
}

// FilterRule is one rule block of a filter.
type FilterRule struct {
	Action FilterAction
	// Protocol is FilterAny (the default) or the protocol matched.
	Protocol FilterProtocol
	// Destinations are the destination prefixes matched; nil matches any.
	Destinations []netip.Prefix
	// Ports are the destination ports matched (TCP and UDP only); nil
	// matches any.
	Ports []PortRange
}

// PortRange is an inclusive range of ports, First <= Last.
type PortRange struct {
	First, Last uint16
}

func (p PortRange) String() string {
	if p.First == p.Last {
		return strconv.Itoa(int(p.First))
	}
	return fmt.Sprintf("%d-%d", p.First, p.Last)
}

// FilterAction is what a filter does with a packet.
type FilterAction int

// Filter actions.
const (
	FilterDeny FilterAction = iota
	FilterAllow
)

var filterActions = []string{"deny", "allow"}

func (a FilterAction) String() string { return enumName("FilterAction", filterActions, int(a)) }

// FilterProtocol is the protocol a rule matches.
type FilterProtocol int

// Filter protocols. FilterICMP matches ICMP and ICMPv6.
const (
	FilterAny FilterProtocol = iota
	FilterTCP
	FilterUDP
	FilterICMP
)

var filterProtocols = []string{"any", "tcp", "udp", "icmp"}

func (p FilterProtocol) String() string { return enumName("FilterProtocol", filterProtocols, int(p)) }

// tunnelFilter decodes the filter block b of t, refusing a second one.
func (d *decoder) tunnelFilter(t *Tunnel, b *hcl.Block) {
	if t.Filter != nil {
		d.errorf(b.DefRange, nil, "Duplicate filter block",
			"Only one filter block is allowed in a tunnel; put all its rules in the first, in the order they should be tried.")
		return
	}
	t.Filter = d.decodeFilter(b)
}

// decodeFilter decodes a tunnel's filter block.
func (d *decoder) decodeFilter(b *hcl.Block) *Filter {
	body, diags := b.Body.Content(filterSchema)
	d.diags = append(d.diags, diags...)
	a := body.Attributes
	f := &Filter{}
	if da := a["default"]; da != nil {
		if i, ok := d.enum(da, filterActions...); ok {
			f.Default = FilterAction(i)
		}
	}
	if ma := a["max_flows"]; ma != nil {
		if v, ok := d.integer(ma, 1, maxFilterFlows, " (flows in the table)"); ok {
			f.MaxFlows = v
		}
	}
	for _, rb := range body.Blocks {
		f.Rules = append(f.Rules, d.decodeRule(rb))
	}
	return f
}

// decodeRule decodes a rule block of a filter.
func (d *decoder) decodeRule(b *hcl.Block) FilterRule {
	a := d.content(b, ruleSchema)
	var r FilterRule
	if aa := a["action"]; aa != nil {
		if i, ok := d.enum(aa, filterActions...); ok {
			r.Action = FilterAction(i)
		}
	}
	protoOK := true
	if pa := a["protocol"]; pa != nil {
		i, ok := d.enum(pa, filterProtocols...)
		r.Protocol, protoOK = FilterProtocol(i), ok
	}
	if da := a["destinations"]; da != nil {
		ps, _, ok := d.prefixList(da, true)
		if ok && len(ps) > 0 {
			r.Destinations = ps
		}
	}
	if pa := a["ports"]; pa != nil {
		if protoOK && r.Protocol != FilterTCP && r.Protocol != FilterUDP {
			d.errorf(pa.NameRange, &pa.Range, "Ports without a protocol",
				"ports match TCP and UDP destination ports only, and this rule's protocol is %q: set protocol = \"tcp\" or \"udp\" (one rule each for both), or remove ports.", r.Protocol)
		}
		strs, rngs, ok := d.strList(pa)
		if ok {
			for i, s := range strs {
				pr, prob := parsePortRange(s)
				if prob != nil {
					d.problemAt(prob, rngs[i], &pa.Range)
					continue
				}
				r.Ports = append(r.Ports, pr)
			}
		}
	}
	return r
}

// parsePortRange parses "443" or "8000-8080".
func parsePortRange(s string) (PortRange, *problem) {
	lo, hi, isRange := strings.Cut(strings.TrimSpace(s), "-")
	first, err1 := strconv.ParseUint(strings.TrimSpace(lo), 10, 16)
	last, err2 := first, error(nil)
	if isRange {
		last, err2 = strconv.ParseUint(strings.TrimSpace(hi), 10, 16)
	}
	switch {
	case err1 != nil || err2 != nil:
		return PortRange{}, &problem{"Invalid port", fmt.Sprintf(
			"%q is not a port or port range: write a port from 1 to 65535, like \"443\", or a range, like \"8000-8080\".", s)}
	case first == 0:
		return PortRange{}, &problem{"Invalid port", fmt.Sprintf(
			"%q starts at port 0, which no connection uses: ports go from 1 to 65535.", s)}
	case first > last:
		return PortRange{}, &problem{"Empty port range", fmt.Sprintf(
			"%q is empty: write the lower port first, like \"%d-%d\".", s, last, first)}
	}
	return PortRange{uint16(first), uint16(last)}, nil
}

// writeFilter writes f as a filter block into b.
func writeFilter(b *hclwrite.Body, f *Filter) {
	fb := b.AppendNewBlock("filter", nil).Body()
	fb.SetAttributeValue("default", cty.StringVal(f.Default.String()))
	if f.MaxFlows != 0 {
		fb.SetAttributeValue("max_flows", num(f.MaxFlows))
	}
	for _, r := range f.Rules {
		rb := fb.AppendNewBlock("rule", nil).Body()
		rb.SetAttributeValue("action", cty.StringVal(r.Action.String()))
		rb.SetAttributeValue("protocol", cty.StringVal(r.Protocol.String()))
		if len(r.Destinations) > 0 {
			rb.SetAttributeValue("destinations", prefixes(r.Destinations))
		}
		if len(r.Ports) > 0 {
			ps := make([]cty.Value, len(r.Ports))
			for i, p := range r.Ports {
				ps[i] = cty.StringVal(p.String())
			}
			rb.SetAttributeValue("ports", cty.ListVal(ps))
		}
	}
}
