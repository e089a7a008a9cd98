package config

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestFilter checks the decoding of a tunnel's filter block and that it
// survives HCL(). Bad blocks are in testdata/bad/filter.hcl.
func TestFilter(t *testing.T) {
	tests := []struct {
		name  string
		block string
		want  *Filter
	}{
		{"absent", ``, nil},
		{"empty", `filter {}`, &Filter{}},
		{"default allow", `filter { default = "allow" }`, &Filter{Default: FilterAllow}},
		{"rules", `filter {
    default   = "deny"
    max_flows = 1000
    rule {
      action       = "allow"
      protocol     = "tcp"
      destinations = ["10.99.0.1/32", "fd00::/64"]
      ports        = ["22", 443, "8000-8080"]
    }
    rule {
      action       = "deny"
      destinations = ["10.0.0.0/8"]
    }
    rule {
      action   = "allow"
      protocol = "icmp"
    }
  }`, &Filter{MaxFlows: 1000, Rules: []FilterRule{
			{Action: FilterAllow, Protocol: FilterTCP,
				Destinations: []netip.Prefix{netip.MustParsePrefix("10.99.0.1/32"), netip.MustParsePrefix("fd00::/64")},
				Ports:        []PortRange{{22, 22}, {443, 443}, {8000, 8080}}},
			{Action: FilterDeny, Destinations: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}},
			{Action: FilterAllow, Protocol: FilterICMP},
		}}},
		{"empty lists match anything", `filter {
    rule {
      action       = "allow"
      protocol     = "udp"
      destinations = []
      ports        = []
    }
  }`, &Filter{Rules: []FilterRule{{Action: FilterAllow, Protocol: FilterUDP}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := strings.Replace(minimal, "addresses", tt.block+"\n  addresses", 1)
			cfg := mustParse(t, src)
			if diff := cmp.Diff(tt.want, cfg.Tunnels[0].Filter, cmpOpts); diff != "" {
				t.Errorf("Filter (-want +got):\n%s", diff)
			}
			checkRoundTrip(t, cfg)
		})
	}
}

func TestParsePortRange(t *testing.T) {
	tests := []struct {
		in   string
		want PortRange
		err  string
	}{
		{"22", PortRange{22, 22}, ""},
		{"8000-8080", PortRange{8000, 8080}, ""},
		{" 1 - 65535 ", PortRange{1, 65535}, ""},
		{"0", PortRange{}, "port 0"},
		{"65536", PortRange{}, "not a port"},
		{"80-70", PortRange{}, "empty"},
		{"http", PortRange{}, "not a port"},
		{"1-", PortRange{}, "not a port"},
	}
	for _, tt := range tests {
		got, p := parsePortRange(tt.in)
		if tt.err == "" {
			if p != nil || got != tt.want {
				t.Errorf("parsePortRange(%q) = %v, %v, want %v", tt.in, got, p, tt.want)
			}
			continue
		}
		if p == nil || !strings.Contains(p.detail, tt.err) {
			t.Errorf("parsePortRange(%q) = %v, %v, want a problem mentioning %q", tt.in, got, p, tt.err)
		}
	}
}
