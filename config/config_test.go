package config

import (
	"bytes"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/hashicorp/hcl/v2"
)

// cmpOpts compares netip values, whose fields are unexported, by value.
var cmpOpts = cmp.Options{
	cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
	cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b }),
	cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }),
}

func mustParse(tb testing.TB, src string) *Config {
	tb.Helper()
	p := Parser{LookupEnv: testEnv}
	cfg, diags := p.Parse([]byte(src), "test.hcl")
	if diags.HasErrors() {
		var buf bytes.Buffer
		p.WriteDiagnostics(&buf, diags, false)
		tb.Fatalf("Parse failed:\n%s", buf.String())
	}
	return cfg
}

func TestLoadTwoPeersA(t *testing.T) {
	cfg, diags := Load(filepath.Join("..", "examples", "two-peers-a.hcl"))
	if len(diags) != 0 {
		t.Fatalf("Load(two-peers-a.hcl) diagnostics: %v", diags)
	}
	want := &Config{
		Log:    Log{Level: LogInfo, Format: LogText},
		Status: Status{Listen: netip.MustParseAddrPort("127.0.0.1:9100")},
		Stack: Stack{
			TCPSACK:                  true,
			TCPModerateReceiveBuffer: true,
			ReassemblyTimeout:        30 * time.Second,
			ReassemblyMemory:         4 << 20,
			TCPKeepalive:             30 * time.Second,
		},
		Tunnels: []Tunnel{{
			Name:      "b",
			Transport: TransportUDP,
			Local:     netip.MustParseAddrPort("127.0.0.1:4700"),
			Remote:    netip.MustParseAddrPort("127.0.0.1:4701"),
			Addresses: []netip.Prefix{
				netip.MustParsePrefix("10.99.0.1/30"),
				netip.MustParsePrefix("fd99::1/64"),
			},
			PathMTU:    1500,
			TTL:        TTLInherit,
			TOS:        0,
			DF:         DFSet,
			EncapLimit: EncapLimitNone,
		}},
		Forwards: []Forward{{
			Name:           "web",
			Protocol:       TCP,
			Listen:         netip.MustParseAddrPort("127.0.0.1:8080"),
			Target:         netip.MustParseAddrPort("10.99.0.2:80"),
			MaxConnections: 1024,
			DialTimeout:    DefaultDialTimeout,
		}, {
			Name:           "echo",
			Protocol:       UDP,
			Listen:         netip.MustParseAddrPort("127.0.0.1:7000"),
			Target:         netip.MustParseAddrPort("10.99.0.2:7"),
			IdleTimeout:    30 * time.Second,
			MaxConnections: 1024,
			DialTimeout:    DefaultDialTimeout,
		}},
		SOCKS5: []SOCKS5{{
			Name:           "proxy",
			Listen:         netip.MustParseAddrPort("127.0.0.1:1080"),
			MaxConnections: 1024,
			DialTimeout:    DefaultDialTimeout,
		}},
		HTTPProxies: []HTTPProxy{{
			Name:           "web",
			Listen:         netip.MustParseAddrPort("127.0.0.1:3128"),
			MaxConnections: 1024,
		}},
		DNS: &DNS{Servers: []netip.AddrPort{netip.MustParseAddrPort("10.99.0.2:53")}},
	}
	if diff := cmp.Diff(want, cfg, cmpOpts); diff != "" {
		t.Errorf("Load(two-peers-a.hcl) mismatch (-want +got):\n%s", diff)
	}
	if got, want := cfg.Tunnels[0].EffectiveMTU(), 1472; got != want {
		t.Errorf("EffectiveMTU() = %d, want %d", got, want)
	}
}

// TestExamples loads every examples/*.hcl: each must be valid without even a
// warning, and survive a round trip through Config.HCL.
func TestExamples(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("..", "examples", "*.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 4 {
		t.Fatalf("found %d examples, want at least 4", len(files))
	}
	for _, path := range files {
		t.Run(filepath.Base(path), func(t *testing.T) {
			var p Parser
			cfg, diags := p.Load(path)
			if len(diags) > 0 {
				var buf bytes.Buffer
				p.WriteDiagnostics(&buf, diags, false)
				t.Fatalf("Load(%q):\n%s", path, buf.String())
			}
			checkRoundTrip(t, cfg)
		})
	}
}

func checkRoundTrip(t testing.TB, cfg *Config) {
	t.Helper()
	out := cfg.HCL()
	again, diags := Parse(out, "roundtrip.hcl")
	if diags.HasErrors() {
		t.Fatalf("Parse(cfg.HCL()) = %v\n%s", diags, out)
	}
	if diff := cmp.Diff(cfg, again, cmpOpts); diff != "" {
		t.Fatalf("Parse(cfg.HCL()) differs from cfg (-want +got):\n%s\n%s", diff, out)
	}
}

const minimal = `
tunnel "t" {
  local     = "127.0.0.1:4700"
  remote    = "127.0.0.1:4701"
  addresses = ["10.99.0.1/30"]
}
`

func TestDefaults(t *testing.T) {
	cfg := mustParse(t, minimal)
	want := &Config{
		Stack: Stack{
			TCPSACK:                  true,
			TCPModerateReceiveBuffer: true,
			ReassemblyTimeout:        DefaultReassemblyTimeout,
			ReassemblyMemory:         DefaultReassemblyMemory,
			TCPKeepalive:             DefaultTCPKeepalive,
		},
		Tunnels: []Tunnel{{
			Name:       "t",
			Local:      netip.MustParseAddrPort("127.0.0.1:4700"),
			Remote:     netip.MustParseAddrPort("127.0.0.1:4701"),
			Addresses:  []netip.Prefix{netip.MustParsePrefix("10.99.0.1/30")},
			PathMTU:    DefaultPathMTU,
			EncapLimit: EncapLimitNone,
		}},
	}
	if diff := cmp.Diff(want, cfg, cmpOpts); diff != "" {
		t.Errorf("Parse(minimal) mismatch (-want +got):\n%s", diff)
	}
	if cfg.Status.Enabled() {
		t.Errorf("Status.Enabled() = true without a status block")
	}
	if cfg.Log.Level.SlogLevel().String() != "INFO" {
		t.Errorf("Log.Level.SlogLevel() = %v, want INFO", cfg.Log.Level.SlogLevel())
	}
}

func TestEffectiveMTU(t *testing.T) {
	tests := []struct {
		name  string
		attrs string
		want  int
	}{
		{"udp over IPv4", `local = "127.0.0.1:1"  remote = "127.0.0.1:2"`, 1472},
		{"raw over IPv4", `transport = "raw"  local = "192.0.2.1"  remote = "192.0.2.2"`, 1480},
		{"udp over IPv6", `local = "[::1]:1"  remote = "[::1]:2"`, 1452},
		{"raw over IPv6 with encap limit", `transport = "raw"  local = "2001:db8::1"  remote = "2001:db8::2"`, 1452},
		{"raw over IPv6 without encap limit", `transport = "raw"  local = "2001:db8::1"  remote = "2001:db8::2"  encap_limit = "none"`, 1460},
		{"jumbo path", `local = "127.0.0.1:1"  remote = "127.0.0.1:2"  path_mtu = 9000`, 8972},
		{"explicit", `local = "127.0.0.1:1"  remote = "127.0.0.1:2"  mtu = 1400`, 1400},
		{"explicit zero", `local = "127.0.0.1:1"  remote = "127.0.0.1:2"  mtu = 0`, 1472},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := "tunnel \"t\" {\n" + strings.ReplaceAll(tt.attrs, "  ", "\n") + "\naddresses = [\"10.99.0.1/30\"]\n}\n"
			cfg := mustParse(t, src)
			if got := cfg.Tunnels[0].EffectiveMTU(); got != tt.want {
				t.Errorf("EffectiveMTU() = %d, want %d", got, tt.want)
			}
		})
	}
	// The zero Tunnel (not from Parse) uses the default path MTU.
	if got, want := (&Tunnel{}).EffectiveMTU(), 1472; got != want {
		t.Errorf("Tunnel{}.EffectiveMTU() = %d, want %d", got, want)
	}
}

// TestTunnelValues checks how individual tunnel attributes are decoded.
func TestTunnelValues(t *testing.T) {
	tests := []struct {
		name  string
		attrs string
		check func(t *Tunnel) string
	}{
		{"ttl inherit", `ttl = "inherit"`, func(t *Tunnel) string { return t.TTL.String() }},
		{"ttl number", `ttl = 64`, func(t *Tunnel) string { return t.TTL.String() }},
		{"ttl string number", `ttl = "64"`, func(t *Tunnel) string { return t.TTL.String() }},
		{"tos default", ``, func(t *Tunnel) string { return t.TOS.String() }},
		{"tos inherit", `tos = "inherit"`, func(t *Tunnel) string { return t.TOS.String() }},
		{"tos string", `tos = "184"`, func(t *Tunnel) string { return t.TOS.String() }},
		{"df clear", `df = "clear"`, func(t *Tunnel) string { return t.DF.String() }},
		{"df inherit", `df = "inherit"`, func(t *Tunnel) string { return t.DF.String() }},
		{"roaming", `roaming = true`, func(t *Tunnel) string { return fmt.Sprint(t.Roaming) }},
		{"any source port", `any_source_port = true`, func(t *Tunnel) string { return fmt.Sprint(t.AnySourcePort) }},
		{"capture", `capture = "t.pcap"`, func(t *Tunnel) string { return t.Capture }},
		{"null is absent", `mtu = null`, func(t *Tunnel) string { return fmt.Sprint(t.MTU) }},
		{"routes via function", `routes = concat(["10.1.0.0/16"], ["10.2.0.0/16"])`, func(t *Tunnel) string { return fmt.Sprint(t.Routes) }},
		{"default allowed sources", `routes = ["10.1.0.0/16"]`, func(t *Tunnel) string { return fmt.Sprint(t.AllowedSourcePrefixes()) }},
		{"default allowed sources with default route", `default_route = true`, func(t *Tunnel) string { return fmt.Sprint(t.AllowedSourcePrefixes()) }},
		{"explicit allowed sources", `allowed_sources = ["10.0.0.0/8"]`, func(t *Tunnel) string { return fmt.Sprint(t.AllowedSourcePrefixes()) }},
		{"reaches route", `routes = ["10.1.0.0/16"]`, func(t *Tunnel) string {
			return fmt.Sprint(t.Reaches(netip.MustParseAddr("10.1.2.3")), t.Reaches(netip.MustParseAddr("10.2.0.1")))
		}},
	}
	want := map[string]string{
		"ttl inherit":              "inherit",
		"ttl number":               "64",
		"ttl string number":        "64",
		"tos default":              "0",
		"tos inherit":              "inherit",
		"tos string":               "184",
		"df clear":                 "clear",
		"df inherit":               "inherit",
		"roaming":                  "true",
		"any source port":          "true",
		"capture":                  "t.pcap",
		"null is absent":           "0",
		"routes via function":      "[10.1.0.0/16 10.2.0.0/16]",
		"default allowed sources":  "[10.99.0.0/30 10.1.0.0/16]",
		"explicit allowed sources": "[10.0.0.0/8]",
		"reaches route":            "true false",
		"default allowed sources with default route": "[10.99.0.0/30 0.0.0.0/0 ::/0]",
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := strings.Replace(minimal, "addresses", tt.attrs+"\n  addresses", 1)
			cfg := mustParse(t, src)
			if got := tt.check(&cfg.Tunnels[0]); got != want[tt.name] {
				t.Errorf("%s: got %q, want %q", tt.attrs, got, want[tt.name])
			}
			checkRoundTrip(t, cfg)
		})
	}
}

// TestErrors checks single broken attributes: each yields exactly one error
// at the given line:column. The golden files show the full text.
func TestErrors(t *testing.T) {
	tests := []struct {
		name    string
		src     string
		summary string
		at      string // line:column of the subject
	}{
		{"ipv6 without brackets", `tunnel "t" {
  local = "fd00::1:4700"`, "Missing port", "2:11"},
		{"port zero", `tunnel "t" {
  local = "127.0.0.1:0"`, "Invalid port", "2:11"},
		{"remote unspecified", `tunnel "t" {
  remote = "0.0.0.0:1"`, "Invalid remote address", "2:12"},
		{"multicast local", `tunnel "t" {
  local = "224.0.0.1:1"`, "Invalid local address", "2:11"},
		{"path_mtu too small", `tunnel "t" {
  path_mtu = 90`, "MTU too small", "2:14"},
		{"negative tos", `tunnel "t" {
  tos = -1`, "Value out of range", "2:9"},
		{"duplicate address in tunnel", `tunnel "t" {
  addresses = ["10.99.0.1/30", "10.99.0.1/24"]`, "Duplicate list element", "2:32"},
		{"empty addresses", `tunnel "t" {
  addresses = []`, "No inner address", "2:15"},
		{"null element", `tunnel "t" {
  routes = [null]`, "Invalid value", "2:13"},
		{"label missing", `tunnel {`, "Missing name for tunnel", "1:8"},
		{"status bad", `status {
  listen = "127.0.0.1"`, "Missing port", "2:12"},
		{"tun bad route", `tun {
  routes = ["10.0.0.1/8"]`, "Prefix has host bits set", "2:13"},
		{"variables not allowed", `tunnel "t" {
  mtu = var.mtu`, "Variables not allowed", "2:9"},
		{"unknown function", `tunnel "t" {
  mtu = nope()`, "Call to unknown function", "2:9"},
		{"env too many args", `tunnel "t" {
  capture = env("A", "b", "c")`, "Invalid function argument", "2:28"},
		{"tcp buffer", `stack {
  tcp_receive_buffer = "big"`, "Incorrect attribute value type", "2:24"},
		{"password too long", `socks5 "s" {
  listen = "127.0.0.1:1"
  username = "u"
  password = "` + strings.Repeat("x", 256) + `"`, "Invalid password", "4:14"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Complete the file: the snippet opens one block; close it and
			// add a valid tunnel so only the intended error remains.
			src := tt.src + "\n}\n"
			if !strings.HasPrefix(tt.src, "tunnel \"t\"") {
				src += minimal
			} else {
				for _, attr := range []string{`local = "127.0.0.1:4700"`, `remote = "127.0.0.1:4701"`, `addresses = ["10.99.0.1/30"]`} {
					name, _, _ := strings.Cut(attr, " ")
					if !strings.Contains(tt.src, "  "+name+" ") {
						src = strings.Replace(src, "\n}\n", "\n  "+attr+"\n}\n", 1)
					}
				}
			}
			cfg, diags := Parse([]byte(src), "test.hcl")
			if cfg != nil {
				t.Fatalf("Parse(%q) = config, want errors", src)
			}
			if len(diags) != 1 {
				t.Fatalf("Parse(%q) = %d diagnostics, want 1:\n%v", src, len(diags), diags)
			}
			d := diags[0]
			got := fmt.Sprintf("%d:%d", d.Subject.Start.Line, d.Subject.Start.Column)
			if d.Summary != tt.summary || got != tt.at {
				t.Errorf("Parse(%q) = %q at %s, want %q at %s (detail: %s)", src, d.Summary, got, tt.summary, tt.at, d.Detail)
			}
		})
	}
}

func TestJSON(t *testing.T) {
	src := `{
  "tunnel": {
    "t": {
      "local": "127.0.0.1:4700",
      "remote": "127.0.0.1:4701",
      "addresses": ["10.99.0.1/30"]
    }
  }
}`
	p := Parser{LookupEnv: testEnv}
	cfg, diags := p.Parse([]byte(src), "test.json")
	if diags.HasErrors() {
		t.Fatalf("Parse(json) = %v", diags)
	}
	if diff := cmp.Diff(mustParse(t, minimal), cfg, cmpOpts); diff != "" {
		t.Errorf("JSON and native syntax differ (-native +json):\n%s", diff)
	}

	bad := strings.Replace(src, `"10.99.0.1/30"`, `"10.99.0.1/40"`, 1)
	_, diags = p.Parse([]byte(bad), "bad.json")
	if len(diags) != 1 || diags[0].Summary != "Invalid prefix length" || diags[0].Subject.Start.Line != 6 {
		t.Errorf("Parse(bad json) = %v, want one Invalid prefix length on line 6", diags)
	}
}

func TestWriteDiagnostics(t *testing.T) {
	p := Parser{LookupEnv: testEnv}
	_, diags := p.Parse([]byte("tunnel \"t\" {\n\tmtu = 5\n}\n"), "tab.hcl")
	var plain, color bytes.Buffer
	if err := p.WriteDiagnostics(&plain, diags, false); err != nil {
		t.Fatal(err)
	}
	// The carets line up under the value even after a tab.
	if want := "   2: \tmtu = 5\n      \t      ^\n"; !strings.Contains(plain.String(), want) {
		t.Errorf("WriteDiagnostics output lacks %q:\n%s", want, plain.String())
	}
	if strings.Contains(plain.String(), "\x1b[") {
		t.Errorf("WriteDiagnostics(color=false) wrote escape codes")
	}
	if err := p.WriteDiagnostics(&color, diags, true); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(color.String(), "\x1b[1;31mError\x1b[0m") {
		t.Errorf("WriteDiagnostics(color=true) lacks a red severity:\n%q", color.String())
	}

	// Without the parsed files, WriteDiagnostics reads the source from disk.
	path := filepath.Join("testdata", "bad", "mtu.hcl")
	_, diags = Load(path)
	var fromDisk bytes.Buffer
	if err := WriteDiagnostics(&fromDisk, nil, diags, false); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(fromDisk.String(), "   5:   mtu       = 40\n") {
		t.Errorf("WriteDiagnostics(nil files) has no snippet:\n%s", fromDisk.String())
	}

	// A diagnostic without a subject prints summary and detail only.
	var noSubject bytes.Buffer
	WriteDiagnostics(&noSubject, nil, hcl.Diagnostics{{Severity: hcl.DiagError, Summary: "S", Detail: "D"}}, false)
	if got, want := noSubject.String(), "Error: S\n\nD\n\n"; got != want {
		t.Errorf("WriteDiagnostics(no subject) = %q, want %q", got, want)
	}
}

func TestLoadMissingFile(t *testing.T) {
	cfg, diags := Load(filepath.Join(t.TempDir(), "absent.hcl"))
	if cfg != nil || len(diags) != 1 || diags[0].Summary != "Failed to read configuration file" {
		t.Errorf("Load(absent) = %v, %v; want nil and one read error", cfg, diags)
	}
}

func TestEnumStrings(t *testing.T) {
	tests := []struct {
		got  fmt.Stringer
		want string
	}{
		{LogDebug, "debug"}, {LogWarn, "warn"}, {LogError, "error"}, {LogLevel(3), "LogLevel(3)"},
		{LogJSON, "json"}, {LogFormat(7), "LogFormat(7)"},
		{CongestionDefault, "default"}, {CongestionReno, "reno"}, {CongestionCubic, "cubic"}, {Congestion(9), "Congestion(9)"},
		{TransportRaw, "raw"}, {Transport(5), "Transport(5)"},
		{TTL(1), "1"}, {TOS(255), "255"},
		{DFClear, "clear"}, {DF(4), "DF(4)"},
		{UDP, "udp"}, {Protocol(2), "Protocol(2)"},
	}
	for _, tt := range tests {
		if got := tt.got.String(); got != tt.want {
			t.Errorf("%#v.String() = %q, want %q", tt.got, got, tt.want)
		}
	}
}

// TestRoamingCatchAllWarns: roaming together with a tunnel that accepts
// any inner source is a hijack one echo reply away; check says so, at the
// roaming attribute, and says nothing when the sources are narrow.
func TestRoamingCatchAllWarns(t *testing.T) {
	const base = `tunnel "up" {
  local     = "192.0.2.1:4700"
  remote    = "203.0.113.7:4700"
  addresses = ["10.99.3.1/30"]
  %s
  roaming   = true
}
`
	for _, tc := range []struct {
		name, attrs string
		warn        bool
	}{
		{"allowed /0", `allowed_sources = ["0.0.0.0/0"]`, true},
		{"allowed ::/0", `allowed_sources = ["10.0.0.0/8", "::/0"]`, true},
		{"default route, no allowed_sources", `default_route = true`, true},
		{"default route, narrow allowed_sources", "default_route = true\n  allowed_sources = [\"10.101.0.0/16\"]", false},
		{"routes only", `routes = ["10.101.0.0/16"]`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, diags := Parse([]byte(fmt.Sprintf(base, tc.attrs)), "roam.hcl")
			if diags.HasErrors() {
				t.Fatalf("errors: %v", diags)
			}
			var got []string
			for _, d := range diags {
				if d.Severity == hcl.DiagWarning {
					got = append(got, fmt.Sprintf("%s:%d: %s", d.Subject.Filename, d.Subject.Start.Line, d.Summary))
				}
			}
			want := []string(nil)
			if tc.warn {
				line := 6
				if strings.Contains(tc.attrs, "\n") {
					line = 7
				}
				want = []string{fmt.Sprintf("roam.hcl:%d: Roaming with a catch-all allowed_sources", line)}
			}
			if !slices.Equal(got, want) {
				t.Errorf("warnings %q, want %q", got, want)
			}
		})
	}
}
