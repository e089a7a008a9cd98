package config

import (
	"fmt"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
)

// A listener on the host that is reachable from other machines gets a
// warning at its listen attribute; one on loopback, a SOCKS5 proxy with
// authentication and a reverse forward (which listens inside the tunnel)
// do not.
func TestExposedListenerWarnings(t *testing.T) {
	tests := []struct {
		name    string
		block   string // the block header, e.g. `socks5 "s"`
		listen  string // the listen attribute's value; "" for none
		more    string // further attribute lines
		summary string // "" for no warning
	}{
		{"socks5 loopback", `socks5 "s"`, "127.0.0.1:1080", "", ""},
		{"socks5 ipv6 loopback", `socks5 "s"`, "[::1]:1080", "", ""},
		{"socks5 other loopback", `socks5 "s"`, "127.3.2.1:1080", "", ""},
		{"socks5 wildcard", `socks5 "s"`, "0.0.0.0:1080", "", "Open SOCKS5 proxy"},
		{"socks5 ipv6 wildcard", `socks5 "s"`, "[::]:1080", "", "Open SOCKS5 proxy"},
		{"socks5 lan", `socks5 "s"`, "192.168.1.5:1080", "", "Open SOCKS5 proxy"},
		{"socks5 lan with auth", `socks5 "s"`, "192.168.1.5:1080", "username = \"u\"\npassword = \"p\"", ""},
		{"forward loopback", `forward "f"`, "127.0.0.1:80", "target = \"10.99.0.2:80\"", ""},
		{"forward wildcard", `forward "f"`, "0.0.0.0:80", "target = \"10.99.0.2:80\"", "Forward reachable from other hosts"},
		{"forward udp lan", `forward "f"`, "10.1.1.1:53", "protocol = \"udp\"\ntarget = \"10.99.0.2:53\"", "Forward reachable from other hosts"},
		{"reverse wildcard", `reverse "r"`, "0.0.0.0:80", "target = \"127.0.0.1:80\"", ""},
		{"status default", `status`, "", "", ""},
		{"status loopback", `status`, "127.0.0.1:9100", "", ""},
		{"status wildcard", `status`, "0.0.0.0:9100", "", "Status server reachable from other hosts"},
		{"status lan", `status`, "[fd00::5]:9100", "", "Status server reachable from other hosts"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := tt.block + " {\n"
			if tt.listen != "" {
				src += "  listen = \"" + tt.listen + "\"\n"
			}
			if tt.more != "" {
				src += "  " + strings.ReplaceAll(tt.more, "\n", "\n  ") + "\n"
			}
			src += "}\n" + minimal
			cfg, diags := Parse([]byte(src), "test.hcl")
			if cfg == nil {
				t.Fatalf("Parse(%q) failed: %v", src, diags)
			}
			var warns hcl.Diagnostics
			for _, d := range diags {
				if d.Severity == hcl.DiagWarning {
					warns = append(warns, d)
				}
			}
			if tt.summary == "" {
				if len(warns) != 0 {
					t.Fatalf("Parse(%q) warned %v, want no warning", src, warns)
				}
				return
			}
			if len(warns) != 1 {
				t.Fatalf("Parse(%q) = %d warnings %v, want 1", src, len(warns), warns)
			}
			w := warns[0]
			// The subject is the value of the listen attribute on line 2.
			got := fmt.Sprintf("%d:%d", w.Subject.Start.Line, w.Subject.Start.Column)
			if want := "2:12"; w.Summary != tt.summary || got != want {
				t.Errorf("Parse(%q) warned %q at %s, want %q at %s", src, w.Summary, got, tt.summary, want)
			}
			if !strings.Contains(w.Detail, "127.0.0.1") {
				t.Errorf("warning detail %q does not say how to keep it on loopback", w.Detail)
			}
		})
	}
}
