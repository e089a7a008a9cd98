package config

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/hashicorp/hcl/v2"
)

func TestHTTPProxy(t *testing.T) {
	cfg := mustParse(t, minimal+`
http_proxy "web" {
  listen = "127.0.0.1:3128"
}
http_proxy "lan" {
  listen                     = "[::]:8080"
  username                   = "alice"
  password                   = "s3cret"
  max_connections            = 64
  max_connections_per_client = 8
}`)
	want := []HTTPProxy{
		{Name: "web", Listen: netip.MustParseAddrPort("127.0.0.1:3128"), MaxConnections: DefaultMaxConnections},
		{Name: "lan", Listen: netip.MustParseAddrPort("[::]:8080"), Username: "alice", Password: "s3cret",
			MaxConnections: 64, MaxConnectionsPerClient: 8},
	}
	if diff := cmp.Diff(want, cfg.HTTPProxies, cmpOpts); diff != "" {
		t.Errorf("HTTPProxies (-want +got):\n%s", diff)
	}
	checkRoundTrip(t, cfg)
}

func TestHTTPProxyErrors(t *testing.T) {
	for _, tc := range []struct{ name, block, summary string }{
		{"no listen", `http_proxy "p" {}`, "Missing required argument"},
		{"colon in username", `http_proxy "p" {
  listen   = "127.0.0.1:3128"
  username = "a:b"
  password = "x"
}`, "Invalid username"},
		{"username alone", `http_proxy "p" {
  listen   = "127.0.0.1:3128"
  username = "a"
}`, "Username without password"},
		{"same port as socks5", `http_proxy "p" {
  listen = "127.0.0.1:1080"
}
socks5 "s" {
  listen = "127.0.0.1:1080"
}`, "Duplicate listen address"},
		{"duplicate name", `http_proxy "p" {
  listen = "127.0.0.1:3128"
}
http_proxy "p" {
  listen = "127.0.0.1:3129"
}`, "Duplicate http_proxy name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, diags := Parse([]byte(minimal+tc.block), "test.hcl")
			var got []string
			for _, d := range diags {
				if d.Severity == hcl.DiagError {
					got = append(got, d.Summary)
				}
			}
			if len(got) != 1 || got[0] != tc.summary {
				t.Errorf("Parse(%q) errors = %q, want [%q]", tc.block, got, tc.summary)
			}
		})
	}
}

// An http_proxy without authentication on a non-loopback address gets a
// warning at its listen value; on loopback or with credentials it does
// not.
func TestHTTPProxyExposed(t *testing.T) {
	for _, tc := range []struct{ name, attrs, summary string }{
		{"loopback", `listen = "127.0.0.1:3128"`, ""},
		{"ipv6 loopback", `listen = "[::1]:3128"`, ""},
		{"wildcard", `listen = "0.0.0.0:3128"`, "Open HTTP proxy"},
		{"lan", `listen = "[fd00::5]:3128"`, "Open HTTP proxy"},
		{"lan with auth", "listen = \"192.168.1.5:3128\"\nusername = \"u\"\npassword = \"p\"", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := "http_proxy \"p\" {\n  " + strings.ReplaceAll(tc.attrs, "\n", "\n  ") + "\n}\n" + minimal
			cfg, diags := Parse([]byte(src), "test.hcl")
			if cfg == nil {
				t.Fatalf("Parse failed: %v", diags)
			}
			var warns []*hcl.Diagnostic
			for _, d := range diags {
				if d.Severity == hcl.DiagWarning {
					warns = append(warns, d)
				}
			}
			if tc.summary == "" {
				if len(warns) != 0 {
					t.Errorf("warned %v, want none", warns)
				}
				return
			}
			if len(warns) != 1 || warns[0].Summary != tc.summary || warns[0].Subject.Start.Line != 2 ||
				!strings.Contains(warns[0].Detail, "127.0.0.1:3128") {
				t.Errorf("warnings = %v, want one %q at line 2 suggesting 127.0.0.1:3128", warns, tc.summary)
			}
		})
	}
}
