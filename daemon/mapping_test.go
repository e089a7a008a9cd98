package daemon

import (
	"github.com/ipipstack/ipipstack/endpoint/endpointtest"
	"github.com/ipipstack/ipipstack/endpoint/impair"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/ipipstack/ipipstack/config"
	"github.com/ipipstack/ipipstack/endpoint/encap"
	"github.com/ipipstack/ipipstack/stack"
)

// parse parses an HCL configuration or fails the test.
func parse(t testing.TB, src string) *config.Config {
	t.Helper()
	cfg, diags := config.Parse([]byte(src), "test.hcl")
	if diags.HasErrors() {
		var sb strings.Builder
		config.WriteDiagnostics(&sb, nil, diags, false)
		t.Fatalf("config.Parse:\n%s", sb.String())
	}
	return cfg
}

func pfx(s ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range s {
		out = append(out, netip.MustParsePrefix(p))
	}
	return out
}

func TestStackConfigTunnels(t *testing.T) {
	const base = `
tunnel "t" {
  local     = "127.0.0.1:4700"
  remote    = "127.0.0.1:4701"
  addresses = ["10.99.0.1/30"]
  %s
}`
	udp := stack.Tunnel{
		Name:           "t",
		Transport:      stack.UDP,
		Local:          netip.MustParseAddrPort("127.0.0.1:4700"),
		Remote:         netip.MustParseAddrPort("127.0.0.1:4701"),
		Addresses:      pfx("10.99.0.1/30"),
		AllowedSources: pfx("10.99.0.0/30"),
		PathMTU:        1500,
	}
	with := func(f func(*stack.Tunnel)) stack.Tunnel {
		t := udp
		f(&t)
		return t
	}
	tests := []struct {
		name  string
		attrs string // spliced into the tunnel block
		want  stack.Tunnel
	}{
		{"defaults", "", udp},
		{"ttl", `ttl = 64`, with(func(t *stack.Tunnel) { t.Policy.TTL = 64 })},
		{"ttl inherit", `ttl = "inherit"`, with(func(t *stack.Tunnel) { t.Policy.TTL = 0 })},
		{"tos", `tos = 184`, with(func(t *stack.Tunnel) { t.Policy.TOS = 184 })},
		{"tos inherit", `tos = "inherit"`, with(func(t *stack.Tunnel) { t.Policy.TOSInherit = true })},
		{"df set", `df = "set"`, with(func(t *stack.Tunnel) { t.Policy.DF = encap.DFSet })},
		{"df inherit", `df = "inherit"`, with(func(t *stack.Tunnel) { t.Policy.DF = encap.DFInherit })},
		{"df clear", `df = "clear"`, with(func(t *stack.Tunnel) { t.Policy.DF = encap.DFClear })},
		{"mtu", `mtu = 1400`, with(func(t *stack.Tunnel) { t.MTU = 1400 })},
		{"path mtu", `path_mtu = 9000`, with(func(t *stack.Tunnel) { t.PathMTU = 9000 })},
		{"roaming", `roaming = true`, with(func(t *stack.Tunnel) { t.Roaming = true })},
		{"routes", `routes = ["10.100.0.0/16"]`, with(func(t *stack.Tunnel) {
			t.Routes = pfx("10.100.0.0/16")
			t.AllowedSources = pfx("10.99.0.0/30", "10.100.0.0/16")
		})},
		{"allowed sources", `allowed_sources = ["192.168.0.0/16", "10.99.0.0/30"]`, with(func(t *stack.Tunnel) {
			t.AllowedSources = pfx("192.168.0.0/16", "10.99.0.0/30")
		})},
		{"default route", `default_route = true`, with(func(t *stack.Tunnel) {
			t.DefaultRoute = true
			t.AllowedSources = pfx("10.99.0.0/30", "0.0.0.0/0", "::/0")
		})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := parse(t, strings.Replace(base, "%s", tt.attrs, 1))
			sc, err := stackConfig(cfg)
			if err != nil {
				t.Fatalf("stackConfig: %v", err)
			}
			if len(sc.Tunnels) != 1 {
				t.Fatalf("stackConfig: %d tunnels, want 1", len(sc.Tunnels))
			}
			if diff := cmp.Diff(tt.want, sc.Tunnels[0], cmpopts.EquateComparable(netip.Addr{}, netip.AddrPort{}, netip.Prefix{})); diff != "" {
				t.Errorf("stackConfig(%s) tunnel mismatch (-want +got):\n%s", tt.attrs, diff)
			}
		})
	}
}

func TestStackConfigRawIPv6EncapLimit(t *testing.T) {
	const base = `
tunnel "t" {
  transport = "raw"
  local     = "fd00::1"
  remote    = "fd00::2"
  addresses = ["10.99.0.1/30", "fd99::1/64"]
  %s
}`
	tests := []struct {
		attrs string
		want  encap.Policy
	}{
		{"", encap.Policy{UseEncapLimit: true, EncapLimit: 4}},
		{`encap_limit = 0`, encap.Policy{UseEncapLimit: true, EncapLimit: 0}},
		{`encap_limit = 17`, encap.Policy{UseEncapLimit: true, EncapLimit: 17}},
		{`encap_limit = "none"`, encap.Policy{}},
		{`encap_limit = "none"
		  ttl = 9
		  tos = "inherit"
		  df = "clear"`, encap.Policy{TTL: 9, TOSInherit: true, DF: encap.DFClear}},
	}
	for _, tt := range tests {
		cfg := parse(t, strings.Replace(base, "%s", tt.attrs, 1))
		sc, err := stackConfig(cfg)
		if err != nil {
			t.Fatalf("stackConfig(%s): %v", tt.attrs, err)
		}
		got := sc.Tunnels[0]
		if got.Transport != stack.Raw {
			t.Errorf("stackConfig(%s).Transport = %v, want raw", tt.attrs, got.Transport)
		}
		if got.Local != netip.MustParseAddrPort("[fd00::1]:0") {
			t.Errorf("stackConfig(%s).Local = %v, want [fd00::1]:0", tt.attrs, got.Local)
		}
		if diff := cmp.Diff(tt.want, got.Policy); diff != "" {
			t.Errorf("stackConfig(%s).Policy mismatch (-want +got):\n%s", tt.attrs, diff)
		}
	}
}

// TestStackConfigUDPNoEncapLimit: the option exists only for raw IPv6
// outer headers; config marks it absent elsewhere.
func TestStackConfigUDPNoEncapLimit(t *testing.T) {
	cfg := parse(t, `tunnel "t" {
  local     = "[::1]:4700"
  remote    = "[::1]:4701"
  addresses = ["fd99::1/64"]
}`)
	sc, err := stackConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if p := sc.Tunnels[0].Policy; p.UseEncapLimit {
		t.Errorf("stackConfig(udp over IPv6).Policy = %+v, want no encapsulation limit", p)
	}
}

// tunnel is the smallest configuration's tunnel block, for tests of the
// other blocks.
const tunnel = `
tunnel "t" {
  local     = "127.0.0.1:4700"
  remote    = "127.0.0.1:4701"
  addresses = ["10.99.0.1/30"]
}`

func TestStackConfigStack(t *testing.T) {
	tests := []struct {
		name, src      string
		wantTCP        stack.TCPOptions
		wantForwarding bool
	}{
		// Absent attributes go as zero: the library's defaults
		// (stack.DefaultCongestionControl and the rest), one definition.
		// except TCP keepalive, which the daemon turns on for the
		// connections it forwards.
		{"defaults", tunnel, stack.TCPOptions{Keepalive: 30 * time.Second}, false},
		{"tuned", `stack {
  tcp_sack                    = false
  tcp_congestion              = "cubic"
  tcp_send_buffer             = 65536
  tcp_receive_buffer          = 131072
  tcp_moderate_receive_buffer = false
  tcp_min_rto                 = "5ms"
  forwarding                  = true
  tcp_keepalive               = "off"
}` + tunnel, stack.TCPOptions{DisableSACK: true, CongestionControl: "cubic", SendBuffer: 65536, ReceiveBuffer: 131072,
			DisableModerateReceiveBuffer: true, MinRTO: 5 * time.Millisecond}, true},
		{"tun forces forwarding", tunnel + `
tun {
  addresses = ["10.98.0.1/24"]
}`, stack.TCPOptions{Keepalive: 30 * time.Second}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sc, err := stackConfig(parse(t, tt.src))
			if err != nil {
				t.Fatalf("stackConfig: %v", err)
			}
			if diff := cmp.Diff(tt.wantTCP, sc.TCP); diff != "" {
				t.Errorf("stackConfig().TCP mismatch (-want +got):\n%s", diff)
			}
			if sc.Forwarding != tt.wantForwarding {
				t.Errorf("stackConfig().Forwarding = %v, want %v", sc.Forwarding, tt.wantForwarding)
			}
		})
	}
}

func TestStackConfigBadValues(t *testing.T) {
	// Values config never produces, from a hand-built Config.
	base := config.Tunnel{Name: "t", Local: netip.MustParseAddrPort("127.0.0.1:1"), Remote: netip.MustParseAddrPort("127.0.0.1:2"),
		Addresses: pfx("10.0.0.1/30"), EncapLimit: config.EncapLimitNone}
	tests := []struct {
		name string
		mod  func(*config.Tunnel)
	}{
		{"tos", func(t *config.Tunnel) { t.TOS = 256 }},
		{"df", func(t *config.Tunnel) { t.DF = 7 }},
		{"encap limit", func(t *config.Tunnel) { t.EncapLimit = 300 }},
		{"transport", func(t *config.Tunnel) { t.Transport = 9 }},
	}
	for _, tt := range tests {
		tun := base
		tt.mod(&tun)
		if _, err := stackConfig(&config.Config{Tunnels: []config.Tunnel{tun}}); err == nil {
			t.Errorf("stackConfig(bad %s) = nil error, want one", tt.name)
		}
	}
}

func TestTUNMTU(t *testing.T) {
	cfg := parse(t, `
tunnel "a" {
  local     = "127.0.0.1:4700"
  remote    = "127.0.0.1:4701"
  addresses = ["10.99.0.1/30"]
}
tunnel "b" {
  local     = "127.0.0.1:4702"
  remote    = "127.0.0.1:4703"
  addresses = ["10.99.1.1/30"]
  path_mtu  = 1400
}
tun {
  addresses = ["10.98.0.1/24"]
}`)
	if got, want := tunMTU(cfg), 1400-28; got != want {
		t.Errorf("tunMTU(default) = %d, want %d (the smallest tunnel MTU)", got, want)
	}
	cfg.TUN.MTU = 1280
	if got := tunMTU(cfg); got != 1280 {
		t.Errorf("tunMTU(1280) = %d, want 1280", got)
	}
}

func TestStackConfigImpair(t *testing.T) {
	cfg := parse(t, `
tunnel "t" {
  local     = "127.0.0.1:4700"
  remote    = "127.0.0.1:4701"
  addresses = ["10.99.0.1/30"]
  impair {
    loss = 0.05
    delay = "2ms"
  }
}
`)
	sc, err := stackConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	wrap := sc.Tunnels[0].Wrap
	if wrap == nil {
		t.Fatal("an impair block gave no Wrap")
	}
	a, b := endpointtest.Pipe(netip.MustParseAddrPort("192.0.2.1:1"), netip.MustParseAddrPort("192.0.2.2:1"), 0)
	defer b.Close()
	w := wrap(a)
	defer w.Close()
	c, ok := w.(*impair.Conn)
	if !ok {
		t.Fatalf("Wrap returned %T, want *impair.Conn", w)
	}
	if c.Inner() != a {
		t.Error("the impairment does not wrap the tunnel's transport")
	}
	cfg = parse(t, `
tunnel "t" {
  local     = "127.0.0.1:4700"
  remote    = "127.0.0.1:4701"
  addresses = ["10.99.0.1/30"]
}
`)
	if sc, _ := stackConfig(cfg); sc.Tunnels[0].Wrap != nil {
		t.Error("Wrap set without an impair block")
	}
}
