package config

import (
	"bytes"
	"os"
	"path/filepath"
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
