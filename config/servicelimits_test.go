package config

import "testing"

// TestPerClientLimits checks the per-client knobs of the services:
// max_connections_per_client (socks5) and max_sessions_per_source (UDP
// forward and reverse) decode, default to 0 (the service's quarter of
// max_connections), round-trip, and are refused where they mean nothing.
func TestPerClientLimits(t *testing.T) {
	cfg := mustParse(t, minimal+`
forward "f" {
  protocol                = "udp"
  listen                  = "127.0.0.1:5353"
  target                  = "10.99.0.2:53"
  max_sessions_per_source = 200
}
reverse "r" {
  protocol                = "udp"
  listen                  = "10.99.0.1:53"
  target                  = "127.0.0.1:53"
  max_sessions_per_source = 7
}
reverse "d" {
  protocol = "udp"
  listen   = "10.99.0.1:54"
  target   = "127.0.0.1:54"
}
socks5 "s" {
  listen                     = "127.0.0.1:1080"
  max_connections_per_client = 16
}
socks5 "d" {
  listen = "127.0.0.1:1081"
}
`)
	if got := cfg.Forwards[0].MaxSessionsPerSource; got != 200 {
		t.Errorf("forward max_sessions_per_source = %d, want 200", got)
	}
	if got := cfg.Reverses[0].MaxSessionsPerSource; got != 7 {
		t.Errorf("reverse max_sessions_per_source = %d, want 7", got)
	}
	if got := cfg.Reverses[1].MaxSessionsPerSource; got != 0 {
		t.Errorf("default max_sessions_per_source = %d, want 0", got)
	}
	if got := cfg.SOCKS5[0].MaxConnectionsPerClient; got != 16 {
		t.Errorf("socks5 max_connections_per_client = %d, want 16", got)
	}
	if got := cfg.SOCKS5[1].MaxConnectionsPerClient; got != 0 {
		t.Errorf("default max_connections_per_client = %d, want 0", got)
	}
	checkRoundTrip(t, cfg)

	for _, tc := range []struct{ name, src, summary string }{
		{"tcp forward", `forward "f" {
  listen = "127.0.0.1:80"
  target = "10.99.0.2:80"
  max_sessions_per_source = 4
}`, "Not a UDP forward"},
		{"zero per source", `forward "f" {
  protocol = "udp"
  listen = "127.0.0.1:80"
  target = "10.99.0.2:80"
  max_sessions_per_source = 0
}`, "Value out of range"},
		{"zero per client", `socks5 "s" {
  listen = "127.0.0.1:1080"
  max_connections_per_client = 0
}`, "Value out of range"},
	} {
		_, diags := Parse([]byte(minimal+tc.src), "test.hcl")
		if len(diags) != 1 || diags[0].Summary != tc.summary {
			t.Errorf("%s: diagnostics %v, want one %q", tc.name, diags, tc.summary)
		}
	}
}
