package config

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestPeerInner(t *testing.T) {
	tests := []struct {
		addrs []string
		peer  string
		want  string
	}{
		{[]string{"10.99.0.1/30"}, "", "10.99.0.2"},
		{[]string{"10.99.0.2/30"}, "", "10.99.0.1"},
		{[]string{"10.99.0.4/31"}, "", "10.99.0.5"},
		{[]string{"10.99.0.5/31"}, "", "10.99.0.4"},
		{[]string{"fd00::/127"}, "", "fd00::1"},
		{[]string{"fd00::1/127"}, "", "fd00::"},
		{[]string{"fd99::1/64", "10.99.0.2/30"}, "", "10.99.0.1"},
		{[]string{"10.99.0.1/24"}, "", "invalid IP"},
		{[]string{"10.99.0.1/24"}, "10.99.0.7", "10.99.0.7"},
	}
	for _, tt := range tests {
		tun := Tunnel{}
		for _, a := range tt.addrs {
			tun.Addresses = append(tun.Addresses, netip.MustParsePrefix(a))
		}
		if tt.peer != "" {
			tun.PeerAddress = netip.MustParseAddr(tt.peer)
		}
		if got := tun.PeerInner().String(); got != tt.want {
			t.Errorf("PeerInner(%v, peer %q) = %s, want %s", tt.addrs, tt.peer, got, tt.want)
		}
	}
}

func TestKeepaliveAttributes(t *testing.T) {
	cfg := mustParse(t, `
stack { tcp_keepalive = "off" }
tunnel "t" {
  local     = "127.0.0.1:4700"
  remote    = "127.0.0.1:4701"
  addresses = ["10.99.0.1/24"]
  keepalive = "25s"
  peer_address = "10.99.0.9"
}
`)
	tun := cfg.Tunnels[0]
	if tun.Keepalive != 25*time.Second || tun.PeerAddress != netip.MustParseAddr("10.99.0.9") || cfg.Stack.TCPKeepalive != 0 {
		t.Errorf("keepalive %v, peer_address %v, tcp_keepalive %v; want 25s, 10.99.0.9, 0", tun.Keepalive, tun.PeerAddress, cfg.Stack.TCPKeepalive)
	}
	// Formatting and parsing again keeps them.
	again := mustParse(t, string(cfg.HCL()))
	if again.Tunnels[0].Keepalive != tun.Keepalive || again.Tunnels[0].PeerAddress != tun.PeerAddress || again.Stack.TCPKeepalive != 0 {
		t.Errorf("after Format: %+v, %v", again.Tunnels[0], again.Stack.TCPKeepalive)
	}

	for _, bad := range []struct{ body, want string }{
		{`keepalive = "25s"`, "No peer address to probe"},
		{`keepalive = "100ms"` + "\n peer_address = \"10.99.0.2\"", "keepalive must be between 1s and 1h"},
		{`peer_address = "10.99.0.0/24"`, "Invalid peer_address"},
	} {
		src := "tunnel \"t\" {\n local = \"127.0.0.1:4700\"\n remote = \"127.0.0.1:4701\"\n addresses = [\"10.99.0.1/24\"]\n" + bad.body + "\n}\n"
		_, diags := Parse([]byte(src), "t.hcl")
		if !diags.HasErrors() || !strings.Contains(diags.Error(), bad.want) {
			t.Errorf("%s: diagnostics %q, want an error saying %q", bad.body, diags.Error(), bad.want)
		}
	}
}
