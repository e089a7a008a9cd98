package config

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestImpair checks the decoding of a tunnel's impair block and that it
// survives HCL().
func TestImpair(t *testing.T) {
	tests := []struct {
		name  string
		block string
		want  *Impair
	}{
		{"absent", ``, nil},
		{"empty", `impair {}`, &Impair{}},
		{"all", `impair {
    loss      = 0.05
    reorder   = 0.05
    duplicate = 0.01
    corrupt   = 0.001
    delay     = "1ms"
    jitter    = "1ms"
    rate      = "100Mbit"
    seed      = 7
  }`, &Impair{Loss: 0.05, Reorder: 0.05, Duplicate: 0.01, Corrupt: 0.001,
			Delay: time.Millisecond, Jitter: time.Millisecond, Rate: 100e6, Seed: 7}},
		{"rate units", `impair { rate = "1.5Gbit" }`, &Impair{Rate: 1.5e9}},
		{"rate kbit", `impair { rate = "64kbit" }`, &Impair{Rate: 64000}},
		{"rate lower case", `impair { rate = "10mbit" }`, &Impair{Rate: 10e6}},
		{"rate bits", `impair { rate = "12345bit" }`, &Impair{Rate: 12345}},
		{"loss string number", `impair { loss = "0.5" }`, &Impair{Loss: 0.5}},
		{"certain", `impair { duplicate = 1 }`, &Impair{Duplicate: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := strings.Replace(minimal, "addresses", tt.block+"\n  addresses", 1)
			cfg := mustParse(t, src)
			if diff := cmp.Diff(tt.want, cfg.Tunnels[0].Impair); diff != "" {
				t.Errorf("Impair (-want +got):\n%s", diff)
			}
			checkRoundTrip(t, cfg)
		})
	}
}

func TestParseRate(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		err  string
	}{
		{"100Mbit", 100e6, ""},
		{"100 Mbit", 100e6, ""},
		{"1Gbit", 1e9, ""},
		{"8kbit", 8000, ""},
		{"100MB", 0, "not bytes"},
		{"100Mbps", 0, "not bytes"},
		{"100", 0, "no unit"},
		{"fast", 0, "no unit"},
		{"xMbit", 0, "number is not valid"},
		{"1bit", 0, "between 8kbit"},
		{"2000Gbit", 0, "between 8kbit"},
	}
	for _, tt := range tests {
		got, p := parseRate(tt.in)
		switch {
		case tt.err == "" && (p != nil || got != tt.want):
			t.Errorf("parseRate(%q) = %d, %v; want %d", tt.in, got, p, tt.want)
		case tt.err != "" && (p == nil || !strings.Contains(p.detail, tt.err)):
			t.Errorf("parseRate(%q) = %d, %v; want a problem saying %q", tt.in, got, p, tt.err)
		}
		if p == nil {
			if back, _ := parseRate(formatRate(got)); back != got {
				t.Errorf("parseRate(formatRate(%d)) = %d", got, back)
			}
		}
	}
}
