package config

import (
	"bytes"
	"strings"
	"testing"
)

// TestSharedLocalAllowed checks that UDP tunnels may share a local address
// and port, and raw tunnels a local address, when each has a peer of its
// own (issue 14: a hub serves every peer on one port).
func TestSharedLocalAllowed(t *testing.T) {
	cfg := mustParse(t, `
tunnel "p1" {
  local     = "192.0.2.1:5555"
  remote    = "198.51.100.1:5555"
  addresses = ["10.99.1.1/30"]
}
tunnel "p2" {
  local     = "192.0.2.1:5555"
  remote    = "198.51.100.2:5555"
  addresses = ["10.99.2.1/30"]
}
tunnel "p3" {
  local           = "192.0.2.1:5555"
  remote          = "198.51.100.3:5555"
  any_source_port = true
  addresses       = ["10.99.3.1/30"]
}
tunnel "p4" {
  local     = "192.0.2.1:5555"
  remote    = "198.51.100.1:6666"
  roaming   = true
  addresses = ["10.99.4.1/30"]
}
tunnel "r1" {
  transport = "raw"
  local     = "192.0.2.1"
  remote    = "198.51.100.1"
  addresses = ["10.99.5.1/30"]
}
tunnel "r2" {
  transport = "raw"
  local     = "192.0.2.1"
  remote    = "198.51.100.2"
  addresses = ["10.99.6.1/30"]
}
`)
	if len(cfg.Tunnels) != 6 {
		t.Fatalf("got %d tunnels, want 6", len(cfg.Tunnels))
	}
}

// TestSharedLocalErrors checks the conflicts of tunnels on one socket:
// each is one error naming the other tunnel with file:line.
func TestSharedLocalErrors(t *testing.T) {
	const first = `
tunnel "a" {
  local     = "192.0.2.1:5555"
  remote    = "198.51.100.1:5555"
  addresses = ["10.99.1.1/30"]
  %s
}
`
	const second = `
tunnel "b" {
  local     = "192.0.2.1:5555"
  remote    = %q
  addresses = ["10.99.2.1/30"]
  %s
}
`
	for _, tc := range []struct {
		name           string
		a, remote, b   string
		summary, extra string
	}{
		{"same remote", "", "198.51.100.1:5555", "", "Duplicate peer on a shared socket", `"a" (test.hcl:2)`},
		{"any_source_port on the first", "any_source_port = true", "198.51.100.1:6000", "", "Duplicate peer on a shared socket", "any_source_port"},
		{"any_source_port on the second", "", "198.51.100.1:6000", "any_source_port = true", "Duplicate peer on a shared socket", "any_source_port"},
		{"two roaming", "roaming = true", "198.51.100.2:5555", "roaming = true", "Two roaming tunnels on one socket", `"a" (test.hcl:2)`},
		{"df differs", `df = "clear"`, "198.51.100.2:5555", "", "Socket options differ", "df"},
		{"impair", "", "198.51.100.2:5555", "impair {\n loss = 0.1\n}", "Impaired tunnel on a shared socket", `"a" (test.hcl:2)`},
		{"overlapping locals", "", "198.51.100.2:5555", "", "Local address already in use", "0.0.0.0:5555"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := strings.Replace(first, "%s", tc.a, 1) + strings.Replace(strings.Replace(second, "%q", `"`+tc.remote+`"`, 1), "%s", tc.b, 1)
			if tc.name == "overlapping locals" {
				src = strings.Replace(src, `"192.0.2.1:5555"`, `"0.0.0.0:5555"`, 1)
			}
			p := Parser{LookupEnv: testEnv}
			_, diags := p.Parse([]byte(src), "test.hcl")
			var buf bytes.Buffer
			p.WriteDiagnostics(&buf, diags, false)
			out := buf.String()
			if n := strings.Count(out, "Error: "); n != 1 {
				t.Fatalf("got %d errors, want 1:\n%s", n, out)
			}
			if !strings.Contains(out, "Error: "+tc.summary) || !strings.Contains(strings.ReplaceAll(out, "\n", " "), tc.extra) {
				t.Errorf("diagnostics lack %q or %q:\n%s", tc.summary, tc.extra, out)
			}
			if !strings.Contains(out, "in tunnel \"b\"") {
				t.Errorf("error is not on tunnel b:\n%s", out)
			}
		})
	}
}

// TestSharedLocalRaw checks the conflicts of raw tunnels on one local
// address: the same remote twice, and two roaming tunnels.
func TestSharedLocalRaw(t *testing.T) {
	src := `
tunnel "r1" {
  transport = "raw"
  local     = "192.0.2.1"
  remote    = "198.51.100.1"
  roaming   = true
  addresses = ["10.99.1.1/30"]
}
tunnel "r2" {
  transport = "raw"
  local     = "192.0.2.1"
  remote    = "198.51.100.2"
  roaming   = true
  addresses = ["10.99.2.1/30"]
}
`
	p := Parser{LookupEnv: testEnv}
	_, diags := p.Parse([]byte(src), "test.hcl")
	var buf bytes.Buffer
	p.WriteDiagnostics(&buf, diags, false)
	if out := buf.String(); strings.Count(out, "Error: ") != 1 || !strings.Contains(out, "Two roaming tunnels on one socket") {
		t.Errorf("want one error about two roaming tunnels, got:\n%s", out)
	}
}
