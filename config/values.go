package config

import (
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/convert"
)

// decoder evaluates attributes and collects diagnostics. Each typed getter
// takes a possibly nil attribute and returns ok=false, with a diagnostic
// unless the attribute is absent or null, when it has no usable value; the
// caller then keeps the default.
type decoder struct {
	ctx   *hcl.EvalContext
	diags hcl.Diagnostics
}

// errorCount returns the number of errors reported so far.
func (d *decoder) errorCount() int {
	n := 0
	for _, diag := range d.diags {
		if diag.Severity == hcl.DiagError {
			n++
		}
	}
	return n
}

// problem is a diagnostic without a position, from the pure parse helpers.
type problem struct{ summary, detail string }

func (d *decoder) report(sev hcl.DiagnosticSeverity, subject hcl.Range, context *hcl.Range, summary, detail string) {
	s := subject
	var c *hcl.Range
	if context != nil && *context != subject {
		cc := *context
		c = &cc
	}
	d.diags = append(d.diags, &hcl.Diagnostic{
		Severity: sev,
		Summary:  summary,
		Detail:   detail,
		Subject:  &s,
		Context:  c,
	})
}

// errorf reports an error at subject, shown within context (may be nil).
func (d *decoder) errorf(subject hcl.Range, context *hcl.Range, summary, format string, args ...any) {
	d.report(hcl.DiagError, subject, context, summary, fmt.Sprintf(format, args...))
}

// attrError reports an error about the value of a.
func (d *decoder) attrError(a *hcl.Attribute, summary, format string, args ...any) {
	d.errorf(a.Expr.Range(), &a.Range, summary, format, args...)
}

func (d *decoder) problemAt(p *problem, subject hcl.Range, context *hcl.Range) {
	d.report(hcl.DiagError, subject, context, p.summary, p.detail)
}

// value evaluates expr. ok is false if it is null or on error.
func (d *decoder) value(expr hcl.Expression, context *hcl.Range) (cty.Value, bool) {
	v, diags := expr.Value(d.ctx)
	rewriteEnvDiags(diags)
	d.diags = append(d.diags, diags...)
	if diags.HasErrors() {
		return cty.NilVal, false
	}
	if v.IsNull() {
		return v, false
	}
	if !v.IsWhollyKnown() {
		d.errorf(expr.Range(), context, "Unknown value", "The value of this expression cannot be known when the configuration is loaded.")
		return cty.NilVal, false
	}
	v, _ = v.UnmarkDeep()
	return v, true
}

// convertTo converts v for attribute a, reporting HCL's usual type error.
func (d *decoder) convertTo(a *hcl.Attribute, expr hcl.Expression, v cty.Value, ty cty.Type, what string) (cty.Value, bool) {
	cv, err := convert.Convert(v, ty)
	if err != nil {
		d.errorf(expr.Range(), &a.Range, "Incorrect attribute value type",
			"Inappropriate value for %s: %s.", what, err.Error())
		return cty.NilVal, false
	}
	return cv, true
}

func attrWhat(a *hcl.Attribute) string { return fmt.Sprintf("attribute %q", a.Name) }

func (d *decoder) str(a *hcl.Attribute) (string, bool) {
	if a == nil {
		return "", false
	}
	v, ok := d.value(a.Expr, &a.Range)
	if !ok {
		return "", false
	}
	if v, ok = d.convertTo(a, a.Expr, v, cty.String, attrWhat(a)); !ok {
		return "", false
	}
	return v.AsString(), true
}

func (d *decoder) boolean(a *hcl.Attribute) (bool, bool) {
	if a == nil {
		return false, false
	}
	v, ok := d.value(a.Expr, &a.Range)
	if !ok {
		return false, false
	}
	if v, ok = d.convertTo(a, a.Expr, v, cty.Bool, attrWhat(a)); !ok {
		return false, false
	}
	return v.True(), true
}

// integer returns a whole number in [lo, hi]; why explains the range.
func (d *decoder) integer(a *hcl.Attribute, lo, hi int, why string) (int, bool) {
	if a == nil {
		return 0, false
	}
	v, ok := d.value(a.Expr, &a.Range)
	if !ok {
		return 0, false
	}
	if v, ok = d.convertTo(a, a.Expr, v, cty.Number, attrWhat(a)); !ok {
		return 0, false
	}
	return d.checkInt(a, v.AsBigFloat(), lo, hi, why)
}

func (d *decoder) checkInt(a *hcl.Attribute, f *big.Float, lo, hi int, why string) (int, bool) {
	if !f.IsInt() {
		d.attrError(a, "Invalid value", "%s must be a whole number, not %s.", a.Name, numberText(f))
		return 0, false
	}
	if f.Cmp(big.NewFloat(float64(lo))) < 0 || f.Cmp(big.NewFloat(float64(hi))) > 0 {
		d.attrError(a, "Value out of range", "%s must be between %d and %d%s, not %s.", a.Name, lo, hi, why, numberText(f))
		return 0, false
	}
	n, _ := f.Int64()
	return int(n), true
}

// numberText formats a number for a message, briefly if it is huge.
func numberText(f *big.Float) string {
	if n, acc := f.Int64(); acc == big.Exact {
		return strconv.FormatInt(n, 10)
	}
	return f.Text('g', 10)
}

// intOrKeyword accepts a whole number in [lo, hi] (as a number or a string
// of digits) or the string keyword. It returns keyword=true for the keyword.
func (d *decoder) intOrKeyword(a *hcl.Attribute, keyword string, lo, hi int) (n int, keywordSet, ok bool) {
	if a == nil {
		return 0, false, false
	}
	v, ok := d.value(a.Expr, &a.Range)
	if !ok {
		return 0, false, false
	}
	switch v.Type() {
	case cty.Number:
		n, ok := d.checkInt(a, v.AsBigFloat(), lo, hi, fmt.Sprintf(` or %q`, keyword))
		return n, false, ok
	case cty.String:
		s := v.AsString()
		if s == keyword {
			return 0, true, true
		}
		i, err := strconv.Atoi(s)
		if err != nil {
			d.attrError(a, "Invalid value", "%s must be %q or a number from %d to %d, not %q.", a.Name, keyword, lo, hi, s)
			return 0, false, false
		}
		n, ok := d.checkInt(a, new(big.Float).SetInt64(int64(i)), lo, hi, fmt.Sprintf(` or %q`, keyword))
		return n, false, ok
	}
	d.attrError(a, "Incorrect attribute value type", "Inappropriate value for %s: %q or a number is required.", attrWhat(a), keyword)
	return 0, false, false
}

// enum returns the index in names of a's string value.
func (d *decoder) enum(a *hcl.Attribute, names ...string) (int, bool) {
	s, ok := d.str(a)
	if !ok {
		return 0, false
	}
	for i, n := range names {
		if s == n {
			return i, true
		}
	}
	d.attrError(a, "Invalid value", "%s must be one of %s, not %q.", a.Name, quoteList(names), s)
	return 0, false
}

func quoteList(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = strconv.Quote(n)
	}
	if len(q) == 2 {
		return q[0] + " or " + q[1]
	}
	return strings.Join(q[:len(q)-1], ", ") + " or " + q[len(q)-1]
}

// duration returns a positive duration written as a Go duration string.
func (d *decoder) duration(a *hcl.Attribute) (time.Duration, bool) {
	if a == nil {
		return 0, false
	}
	v, ok := d.value(a.Expr, &a.Range)
	if !ok {
		return 0, false
	}
	if v.Type() == cty.Number {
		d.attrError(a, "Invalid duration", "%s must be a duration string with a unit, like \"30s\", \"1m30s\" or \"500ms\", not a bare number.", a.Name)
		return 0, false
	}
	if v, ok = d.convertTo(a, a.Expr, v, cty.String, attrWhat(a)); !ok {
		return 0, false
	}
	s := v.AsString()
	dur, err := time.ParseDuration(s)
	if err != nil {
		d.attrError(a, "Invalid duration", "%q is not a duration: write a number with a unit (ns, us, ms, s, m, h), like \"30s\" or \"1m30s\".", s)
		return 0, false
	}
	if dur <= 0 {
		d.attrError(a, "Invalid duration", "%s must be greater than zero, not %q.", a.Name, s)
		return 0, false
	}
	return dur, true
}

// strList returns the strings of a list attribute and, for each, the range
// to blame: the element's own range when the list is written literally.
func (d *decoder) strList(a *hcl.Attribute) ([]string, []hcl.Range, bool) {
	if a == nil {
		return nil, nil, false
	}
	exprs, diags := hcl.ExprList(a.Expr)
	if diags.HasErrors() {
		// Not a literal list (a function call, say): evaluate it whole.
		v, ok := d.value(a.Expr, &a.Range)
		if !ok {
			return nil, nil, false
		}
		if v, ok = d.convertTo(a, a.Expr, v, cty.List(cty.String), attrWhat(a)); !ok {
			return nil, nil, false
		}
		var out []string
		var rngs []hcl.Range
		for _, e := range v.AsValueSlice() {
			if e.IsNull() {
				d.attrError(a, "Invalid value", "The elements of %s must not be null.", a.Name)
				return nil, nil, false
			}
			out = append(out, e.AsString())
			rngs = append(rngs, a.Expr.Range())
		}
		if out == nil {
			out = []string{}
		}
		return out, rngs, true
	}
	out := make([]string, 0, len(exprs))
	rngs := make([]hcl.Range, 0, len(exprs))
	ok := true
	for i, e := range exprs {
		v, diags := e.Value(d.ctx)
		rewriteEnvDiags(diags)
		d.diags = append(d.diags, diags...)
		switch {
		case diags.HasErrors():
			ok = false
			continue
		case v.IsNull():
			d.errorf(e.Range(), &a.Range, "Invalid value", "The elements of %s must not be null.", a.Name)
			ok = false
			continue
		case !v.IsWhollyKnown():
			d.errorf(e.Range(), &a.Range, "Unknown value", "The value of this expression cannot be known when the configuration is loaded.")
			ok = false
			continue
		}
		v, _ = v.UnmarkDeep()
		v, vok := d.convertTo(a, e, v, cty.String, fmt.Sprintf("element %d of attribute %q", i, a.Name))
		if !vok {
			ok = false
			continue
		}
		out = append(out, v.AsString())
		rngs = append(rngs, e.Range())
	}
	return out, rngs, ok
}

// The pure parsers below return a problem describing why s is invalid.

var (
	exampleAddrPort = `like "127.0.0.1:4700" or "[fd00::1]:4700"`
	exampleAddr     = `like "192.0.2.1" or "2001:db8::1"`
)

func checkPlainAddr(s string, a netip.Addr) *problem {
	if a.Is4In6() {
		return &problem{"IPv4-mapped address", fmt.Sprintf(
			"%q is an IPv4-mapped IPv6 address; write the IPv4 address %q instead.", s, a.Unmap().String())}
	}
	return nil
}

// parseAddrPort parses an IP literal with a port in 1..65535.
func parseAddrPort(s string) (netip.AddrPort, *problem) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		if _, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")); err == nil {
			return netip.AddrPort{}, &problem{"Missing port", fmt.Sprintf(
				"%q has no port. Write address:port, %s; an IPv6 address needs brackets around it when a port follows.", s, exampleAddrPort)}
		}
		return netip.AddrPort{}, &problem{"Invalid address", fmt.Sprintf(
			"%q is not an address:port pair %s.", s, exampleAddrPort)}
	}
	addr, err := netip.ParseAddr(host)
	if err != nil {
		return netip.AddrPort{}, &problem{"Invalid IP address", fmt.Sprintf(
			"%q is not an IP address. Addresses are IP literals %s; host names are not resolved.", host, exampleAddrPort)}
	}
	if p := checkPlainAddr(host, addr); p != nil {
		return netip.AddrPort{}, p
	}
	n, err := strconv.ParseUint(port, 10, 64)
	if err != nil || n < 1 || n > 65535 {
		return netip.AddrPort{}, &problem{"Invalid port", fmt.Sprintf(
			"The port %q in %q is out of range: ports are numbers from 1 to 65535.", port, s)}
	}
	return netip.AddrPortFrom(addr, uint16(n)), nil
}

// parseBareAddr parses an IP literal without a port.
func parseBareAddr(s, why string) (netip.Addr, *problem) {
	addr, err := netip.ParseAddr(s)
	if err == nil {
		if p := checkPlainAddr(s, addr); p != nil {
			return netip.Addr{}, p
		}
		return addr, nil
	}
	if host, _, err := net.SplitHostPort(s); err == nil {
		if _, err := netip.ParseAddr(host); err == nil {
			return netip.Addr{}, &problem{"Port not allowed", fmt.Sprintf(
				"%q has a port, but %s; write just the address %q.", s, why, host)}
		}
	}
	return netip.Addr{}, &problem{"Invalid IP address", fmt.Sprintf(
		"%q is not an IP address. Addresses are IP literals %s; host names are not resolved.", s, exampleAddr)}
}

// parsePrefix parses address/length. If canonical, host bits must be zero.
func parsePrefix(s string, canonical bool) (netip.Prefix, *problem) {
	addrStr, bitsStr, found := strings.Cut(s, "/")
	if !found {
		if _, err := netip.ParseAddr(s); err == nil {
			if canonical {
				return netip.Prefix{}, &problem{"Missing prefix length", fmt.Sprintf(
					"%q has no prefix length; write a prefix like \"10.100.0.0/16\", or %q for the single address.", s, s+hostBits(s))}
			}
			return netip.Prefix{}, &problem{"Missing prefix length", fmt.Sprintf(
				"%q has no prefix length; an address here is written with its on-link prefix, like \"10.99.0.1/30\" or \"fd99::1/64\".", s)}
		}
		return netip.Prefix{}, &problem{"Invalid prefix", fmt.Sprintf(
			"%q is not an IP prefix such as \"10.99.0.1/30\" or \"fd99::/64\".", s)}
	}
	addr, err := netip.ParseAddr(addrStr)
	if err != nil || addr.Zone() != "" {
		return netip.Prefix{}, &problem{"Invalid prefix", fmt.Sprintf(
			"%q is not an IP prefix: %q is not an IP address (prefixes take no zone and no host name).", s, addrStr)}
	}
	if p := checkPlainAddr(addrStr, addr); p != nil {
		return netip.Prefix{}, p
	}
	bits, err := strconv.Atoi(bitsStr)
	if err != nil || bits < 0 || bits > addr.BitLen() || strconv.Itoa(bits) != bitsStr {
		fam, max := "IPv4", 32
		if addr.Is6() {
			fam, max = "IPv6", 128
		}
		return netip.Prefix{}, &problem{"Invalid prefix length", fmt.Sprintf(
			"%q has an invalid prefix length /%s: %s prefix lengths are 0 to %d.", s, bitsStr, fam, max)}
	}
	p := netip.PrefixFrom(addr, bits)
	if canonical && p.Masked() != p {
		return netip.Prefix{}, &problem{"Prefix has host bits set", fmt.Sprintf(
			"%q has bits set after the first %d; write the prefix as %q.", s, bits, p.Masked().String())}
	}
	return p, nil
}

func hostBits(s string) string {
	if strings.Contains(s, ":") {
		return "/128"
	}
	return "/32"
}

func family(a netip.Addr) string {
	if a.Is4() {
		return "IPv4"
	}
	return "IPv6"
}
