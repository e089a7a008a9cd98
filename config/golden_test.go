package config

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite testdata/bad/*.golden from the current output")

// testEnv is the environment env() sees in the golden and fuzz tests, so
// that their output does not depend on the machine.
func testEnv(name string) (string, bool) {
	v, ok := map[string]string{
		"IPIPSTACK_TEST_PORT": "4701",
		"IPIPSTACK_TEST_USER": "alice",
	}[name]
	return v, ok
}

// TestGoldenDiagnostics parses every testdata/bad/*.hcl and compares the
// text of its diagnostics with the .golden file beside it.
func TestGoldenDiagnostics(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "bad", "*.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 15 {
		t.Fatalf("found %d bad files, want at least 15", len(files))
	}
	for _, path := range files {
		name := strings.TrimSuffix(filepath.Base(path), ".hcl")
		t.Run(name, func(t *testing.T) {
			p := Parser{LookupEnv: testEnv}
			cfg, diags := p.Load(path)
			if len(diags) == 0 {
				t.Fatalf("Load(%q) = no diagnostics, want some", path)
			}
			if (cfg == nil) != diags.HasErrors() {
				t.Errorf("Load(%q) = config %v with errors %v; want a config exactly when there is no error", path, cfg != nil, diags.HasErrors())
			}
			for _, d := range diags {
				if d.Subject == nil || d.Subject.Filename != path {
					t.Errorf("Load(%q): diagnostic %q has subject %v, want a range in %s", path, d.Summary, d.Subject, path)
				}
			}
			var got bytes.Buffer
			if err := p.WriteDiagnostics(&got, diags, false); err != nil {
				t.Fatalf("WriteDiagnostics: %v", err)
			}
			golden := strings.TrimSuffix(path, ".hcl") + ".golden"
			if *update {
				if err := os.WriteFile(golden, got.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if diff := cmp.Diff(string(want), got.String()); diff != "" {
				t.Errorf("diagnostics of %s differ from %s (-want +got):\n%s", path, golden, diff)
			}
		})
	}
}
