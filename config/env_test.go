package config

import (
	"fmt"
	"os"
	"testing"
)

func TestEnv(t *testing.T) {
	const socks = `
socks5 "s" {
  listen   = "127.0.0.1:${env("IPIPSTACK_T_PORT", "1080")}"
  username = env("IPIPSTACK_T_USER")
  password = env("IPIPSTACK_T_PASS")
}
`
	tests := []struct {
		name    string
		env     map[string]string
		want    string // Listen, Username, Password
		summary string // of the only error, if any
		at      string // line:column-line:column of that error
	}{
		{
			name: "set",
			env:  map[string]string{"IPIPSTACK_T_USER": "alice", "IPIPSTACK_T_PASS": "s3cret"},
			want: "127.0.0.1:1080 alice s3cret",
		},
		{
			name: "default overridden",
			env:  map[string]string{"IPIPSTACK_T_PORT": "1999", "IPIPSTACK_T_USER": "alice", "IPIPSTACK_T_PASS": "x"},
			want: "127.0.0.1:1999 alice x",
		},
		{
			name:    "unset",
			env:     map[string]string{"IPIPSTACK_T_USER": "alice"},
			summary: "Environment variable not set",
			at:      "11:14-11:37",
		},
		{
			name:    "set but empty",
			env:     map[string]string{"IPIPSTACK_T_USER": "", "IPIPSTACK_T_PASS": "x"},
			summary: "Invalid username",
			at:      "10:14-10:37",
		},
		{
			name:    "bad value from the environment",
			env:     map[string]string{"IPIPSTACK_T_PORT": "99999", "IPIPSTACK_T_USER": "a", "IPIPSTACK_T_PASS": "x"},
			summary: "Invalid port",
			at:      "9:14-9:60",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, name := range []string{"IPIPSTACK_T_PORT", "IPIPSTACK_T_USER", "IPIPSTACK_T_PASS"} {
				if v, ok := tt.env[name]; ok {
					t.Setenv(name, v)
				} else {
					t.Setenv(name, "") // restored after the test...
					unsetenv(t, name)  // ...but unset during it.
				}
			}
			cfg, diags := Parse([]byte(minimal+socks), "env.hcl")
			if tt.summary == "" {
				if diags.HasErrors() {
					t.Fatalf("Parse = %v", diags)
				}
				s := cfg.SOCKS5[0]
				if got := fmt.Sprint(s.Listen, " ", s.Username, " ", s.Password); got != tt.want {
					t.Errorf("Parse: socks5 = %q, want %q", got, tt.want)
				}
				return
			}
			if cfg != nil || len(diags) != 1 {
				t.Fatalf("Parse = %v, want one error %q", diags, tt.summary)
			}
			d := diags[0]
			r := d.Subject
			at := fmt.Sprintf("%d:%d-%d:%d", r.Start.Line, r.Start.Column, r.End.Line, r.End.Column)
			if d.Summary != tt.summary || at != tt.at {
				t.Errorf("Parse = %q at %s, want %q at %s", d.Summary, at, tt.summary, tt.at)
			}
		})
	}
}

// TestLookupEnv checks that Parser.LookupEnv replaces the environment.
func TestLookupEnv(t *testing.T) {
	t.Setenv("IPIPSTACK_T_CAPTURE", "from-os.pcap")
	src := minimal[:len(minimal)-2] + "  capture = env(\"IPIPSTACK_T_CAPTURE\")\n}\n"
	p := Parser{LookupEnv: func(name string) (string, bool) {
		return "from-lookup.pcap", name == "IPIPSTACK_T_CAPTURE"
	}}
	for _, tc := range []struct {
		p    *Parser
		want string
	}{{&Parser{}, "from-os.pcap"}, {&p, "from-lookup.pcap"}} {
		cfg, diags := tc.p.Parse([]byte(src), "env.hcl")
		if diags.HasErrors() {
			t.Fatalf("Parse = %v", diags)
		}
		if got := cfg.Tunnels[0].Capture; got != tc.want {
			t.Errorf("Capture = %q, want %q", got, tc.want)
		}
	}
}

// unsetenv unsets name for the rest of the test; call t.Setenv first so
// that the old value is restored.
func unsetenv(t *testing.T, name string) {
	t.Helper()
	if err := os.Unsetenv(name); err != nil {
		t.Fatal(err)
	}
}
