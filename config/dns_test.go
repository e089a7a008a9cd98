package config

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const dnsTunnel = `
tunnel "t" {
  local     = "127.0.0.1:4700"
  remote    = "127.0.0.1:4701"
  addresses = ["10.99.0.1/30"]
}
`

func TestDNSBlock(t *testing.T) {
	cfg := mustParse(t, dnsTunnel+`
dns {
  servers = ["10.99.0.2:53", "10.99.0.2", "[fd99::2]:5353"]
}
forward "db" {
  listen = "127.0.0.1:5432"
  target = "db.internal:5432"
}
socks5 "p" {
  listen  = "127.0.0.1:1080"
  resolve = "host"
}
socks5 "q" {
  listen = "127.0.0.1:1081"
}
`)
	want := &DNS{Servers: []netip.AddrPort{
		netip.MustParseAddrPort("10.99.0.2:53"), netip.MustParseAddrPort("10.99.0.2:53"), netip.MustParseAddrPort("[fd99::2]:5353")}}
	if diff := cmp.Diff(want, cfg.DNS, cmpOpts); diff != "" {
		t.Errorf("DNS (-want +got):\n%s", diff)
	}
	if got := cfg.Forwards[0]; got.TargetName != "db.internal:5432" || got.Target.IsValid() {
		t.Errorf("forward target = %v / %q, want name db.internal:5432", got.Target, got.TargetName)
	}
	if !cfg.SOCKS5[0].ResolveOnHost || cfg.SOCKS5[1].ResolveOnHost {
		t.Errorf("ResolveOnHost = %v, %v; want true, false", cfg.SOCKS5[0].ResolveOnHost, cfg.SOCKS5[1].ResolveOnHost)
	}
	checkRoundTrip(t, cfg)
}

func TestDNSBlockErrors(t *testing.T) {
	for _, tc := range []struct{ name, src, want string }{
		{"name target without dns", `
forward "db" {
  listen = "127.0.0.1:5432"
  target = "db.internal:5432"
}`, "Target name without DNS"},
		{"bad server", `
dns {
  servers = ["0.0.0.0:53"]
}`, "Invalid DNS server"},
		{"no server", `
dns {
  servers = []
}`, "No DNS server"},
		{"bad resolve", `
socks5 "p" {
  listen  = "127.0.0.1:1080"
  resolve = "magic"
}`, "resolve"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, diags := Parse([]byte(dnsTunnel+tc.src), "t.hcl")
			if !diags.HasErrors() || !strings.Contains(diags.Error(), tc.want) {
				t.Errorf("Parse = %v, want an error mentioning %q", diags, tc.want)
			}
		})
	}
}
