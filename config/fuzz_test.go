package config

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// FuzzLoad feeds arbitrary files to Parse, in both syntaxes. Nothing may
// panic; a config comes back exactly when there is no error; every error
// points into the file; and a valid config parses the same way twice and
// survives a round trip through Config.HCL.
func FuzzLoad(f *testing.F) {
	for _, glob := range []string{"../examples/*.hcl", "testdata/bad/*.hcl"} {
		files, err := filepath.Glob(glob)
		if err != nil {
			f.Fatal(err)
		}
		for _, path := range files {
			b, err := os.ReadFile(path)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(b)
		}
	}
	f.Add([]byte(`{"tunnel": {"t": {"local": "127.0.0.1:1", "remote": "127.0.0.1:2", "addresses": ["10.0.0.1/8"]}}}`))
	// Nesting and chains at and beyond MaxNesting and MaxChain, and long
	// lines, so that the fuzzer explores the limits and the snippet cutter.
	rep := strings.Repeat
	for _, n := range []int{MaxNesting - 1, MaxNesting + 1} {
		f.Add([]byte(`tunnel "t" { mtu = ` + rep("(", n) + "1400" + rep(")", n) + " }\n"))
		f.Add([]byte(rep("a {\n", n) + rep("}\n", n)))
		f.Add([]byte(`x = ` + rep("{a=", n) + "1" + rep("}", n) + "\n"))
		f.Add([]byte(`x = "` + rep(`${"`, n) + rep(`"}`, n) + "\"\n"))
		f.Add([]byte("x = <<-EOT\n" + rep(`${[`, n) + rep(`]}`, n) + "\n  EOT\n"))
		f.Add([]byte(`x = "` + rep(`%{if true}`, n) + rep(`%{endif}`, n) + "\"\n"))
		f.Add([]byte(`x = ` + rep("-", n) + rep("!", n) + "1 + " + rep("1*", n) + "[1]" + rep("[*]", n) + "\n"))
		f.Add([]byte(`{"tunnel": {"t": {"mtu": "` + rep(`${(`, n) + rep(`)}`, n) + `"}}}`))
		f.Add([]byte(rep("[", n) + rep("]", n)))
	}
	f.Add([]byte(`tunnel "t" {` + "\n  local = \"" + rep("1", 5000) + "\" # é" + rep("é", 300) + "\n}\n"))
	f.Add([]byte(rep("@", 3000) + "\n" + rep("\t$", 200)))
	f.Fuzz(func(t *testing.T, src []byte) {
		for _, name := range []string{"fuzz.hcl", "fuzz.json"} {
			p := Parser{LookupEnv: testEnv}
			cfg, diags := p.Parse(src, name)
			if (cfg == nil) != diags.HasErrors() {
				t.Fatalf("Parse(%s): config %v, errors %v", name, cfg != nil, diags.HasErrors())
			}
			for _, d := range diags {
				if d.Subject == nil || d.Subject.Filename != name {
					t.Fatalf("Parse(%s): diagnostic %q (%s) has subject %v", name, d.Summary, d.Detail, d.Subject)
				}
			}
			var buf bytes.Buffer
			if err := p.WriteDiagnostics(&buf, diags, true); err != nil {
				t.Fatalf("WriteDiagnostics: %v", err)
			}
			if cfg == nil {
				continue
			}
			again, _ := (&Parser{LookupEnv: testEnv}).Parse(src, name)
			if diff := cmp.Diff(cfg, again, cmpOpts); diff != "" {
				t.Fatalf("Parse(%s) is not deterministic (-first +second):\n%s", name, diff)
			}
			out := cfg.HCL()
			round, rdiags := Parse(out, "roundtrip.hcl")
			if rdiags.HasErrors() {
				t.Fatalf("Parse(HCL()) of a valid config failed: %v\n%s", rdiags, out)
			}
			if diff := cmp.Diff(cfg, round, cmpOpts); diff != "" {
				t.Fatalf("Parse(HCL()) differs (-want +got):\n%s\n%s", diff, out)
			}
		}
	})
}
