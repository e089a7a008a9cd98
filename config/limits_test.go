package config

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
)

// validTunnel is a minimal valid configuration; tests append to it or
// replace its mtu.
const validTunnel = `tunnel "t" {
  local     = "127.0.0.1:4700"
  remote    = "127.0.0.1:4701"
  addresses = ["10.99.0.1/30"]
  mtu       = MTU
}
`

func withMTU(expr string) string { return strings.Replace(validTunnel, "MTU", expr, 1) }

// TestDeepNesting feeds files whose nesting would overflow the Go stack in
// HCL's recursive parser (or in evaluating what it built) and checks that
// Parse reports a positioned error instead of crashing the process.
func TestDeepNesting(t *testing.T) {
	const n = 100_000
	rep := strings.Repeat
	tests := []struct {
		name, file, src string
		summary         string
		line, col       int
	}{
		// mtu is on line 5, after "  mtu       = " (14 columns).
		{"parentheses", "a.hcl", withMTU(rep("(", n) + "1500" + rep(")", n)), nestingSummary, 5, 14 + MaxNesting},
		{"blocks", "a.hcl", rep("a {\n", 2*n) + rep("}\n", 2*n), nestingSummary, MaxNesting + 1, 3},
		{"objects", "a.hcl", withMTU(rep("{a=", n) + "1" + rep("}", n)), nestingSummary, 5, 12 + 3*MaxNesting},
		{"tuples", "a.hcl", withMTU(rep("[", n) + rep("]", n)), nestingSummary, 5, 14 + MaxNesting},
		{"templates", "a.hcl", withMTU(`"` + rep(`${"`, n) + rep(`"}`, n) + `"`), nestingSummary, 5, 16 + 3*(MaxNesting-1)},
		{"heredoc templates", "a.hcl", withMTU("<<EOT\n" + rep(`${"`, n) + rep(`"}`, n) + "\nEOT\n"), nestingSummary, 6, 1 + 3*(MaxNesting-1)},
		{"template directives", "a.hcl", withMTU(`"` + rep(`%{if true}`, n) + rep(`%{endif}`, n) + `"`), nestingSummary, 5, 16 + 10*(MaxNesting-1)},
		{"negations", "a.hcl", withMTU(rep("-", 2*n) + "1"), chainSummary, 5, 15 + MaxChain},
		{"nots", "a.hcl", withMTU(rep("!", 2*n) + "true"), chainSummary, 5, 15 + MaxChain},
		{"sums", "a.hcl", withMTU(rep("1+", 2*n) + "1"), chainSummary, 5, 16 + 2*MaxChain},
		{"conditionals", "a.hcl", withMTU(rep("true?", n) + "1" + rep(":1", n)), chainSummary, 5, 19 + 5*MaxChain},
		{"splats", "a.hcl", withMTU("[1]" + rep("[*]", n)), chainSummary, 5, 18 + 3*MaxChain},
		{"json arrays", "a.json", rep("[", 2*n) + rep("]", 2*n), nestingSummary, 1, 1 + MaxNesting},
		{"json objects", "a.json", rep(`{"a":`, n) + "1" + rep("}", n), nestingSummary, 1, 1 + 5*MaxNesting},
		{"json templates", "a.json", `{"tunnel": {"t": {"mtu": "` + rep(`${(`, n) + rep(`)}`, n) + `"}}}`, nestingSummary, 1, 26},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, diags := Parse([]byte(tt.src), tt.file)
			if cfg != nil || len(diags) != 1 {
				t.Fatalf("Parse(%s) = config %v, %d diagnostics %v; want no config and one diagnostic", tt.name, cfg != nil, len(diags), diags[:min(3, len(diags))])
			}
			d := diags[0]
			if d.Severity != hcl.DiagError || d.Summary != tt.summary || d.Subject == nil {
				t.Fatalf("Parse(%s) = %v, want error %q with a subject", tt.name, d, tt.summary)
			}
			if got, want := fmt.Sprintf("%s:%d:%d", d.Subject.Filename, d.Subject.Start.Line, d.Subject.Start.Column),
				fmt.Sprintf("%s:%d:%d", tt.file, tt.line, tt.col); got != want {
				t.Errorf("Parse(%s) diagnostic at %s, want %s", tt.name, got, want)
			}
		})
	}
}

// TestNestingLimitKeepsLegitimateFiles checks that nesting at the limit,
// and brackets that are not nesting (in strings, comments, heredocs and
// escaped template sequences), do not trip the guard.
func TestNestingLimitKeepsLegitimateFiles(t *testing.T) {
	rep := strings.Repeat
	deep := MaxNesting - 1 // the tunnel block is the first level
	tests := []struct{ name, src string }{
		{"parentheses at the limit", withMTU(rep("(", deep) + "1400" + rep(")", deep))},
		{"chain at the limit", withMTU(rep("1+", MaxChain-1) + "1")},
		{"chains on many lines", withTunnels(3 * MaxChain)},
		{"brackets in strings", withMTU(`"${"" /* ((( */}` + rep("(", 500) + rep("[{", 500) + `" == "" ? 0 : 1400`)},
		{"brackets in comments", withMTU("1400") + "# " + rep("(", 500) + "\n// " + rep("{", 500) + "\n/* " + rep("[\n", 500) + "*/\n"},
		{"brackets in a heredoc", withMTU("(<<-EOT\n    " + rep("(", 500) + rep("$${", 500) + rep("%%{", 500) + "\n    EOT\n  ) == \"\" ? 0 : 1400")},
		{"escaped template sequences", withMTU(`"` + rep("$${(", 500) + rep("%%{[", 500) + `" == "" ? 0 : 1400`)},
		{"templates in JSON", `{"tunnel": {"t": {"local": "127.0.0.1:4700", "remote": "127.0.0.1:4701", "addresses": ["10.99.0.1/30"], "mtu": "${1300 + 100}", "path_mtu": "${max(1500, ` + rep("(", 20) + "1" + rep(")", 20) + `)}"}}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name := "legit.hcl"
			if strings.HasPrefix(tt.src, "{") {
				name = "legit.json"
			}
			p := Parser{LookupEnv: testEnv}
			if cfg, diags := p.Parse([]byte(tt.src), name); cfg == nil || len(diags) > 0 {
				var buf bytes.Buffer
				p.WriteDiagnostics(&buf, diags, false)
				t.Fatalf("Parse(%s) = config %v with diagnostics:\n%.2000s", tt.name, cfg != nil, buf.String())
			}
		})
	}
}

// withTunnels returns n tunnel blocks, each with an operator at the
// attribute level, so that a chain counter that is never reset would trip.
func withTunnels(n int) string {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, "tunnel \"t%d\" {\n  local = \"127.0.0.1:%d\"\n  remote = \"127.0.0.1:%d\"\n  addresses = [\"10.%d.%d.1/30\"]\n  mtu = 1300 + 100\n}\n",
			i, 5000+i, 6000+i, i/64, i%64*4)
	}
	return b.String()
}

// badLines returns a file of n lines that each hold one invalid token.
func badLines(n int) []byte {
	return bytes.Repeat([]byte("@\n"), n)
}

// TestDiagnosticsCapped checks that WriteDiagnostics prints the first
// MaxPrintedDiagnostics diagnostics and counts the rest.
func TestDiagnosticsCapped(t *testing.T) {
	const n = 5000
	var p Parser
	_, diags := p.Parse(badLines(n), "bad.hcl")
	if len(diags) < n {
		t.Fatalf("Parse(%d bad lines) = %d diagnostics, want at least %d", n, len(diags), n)
	}
	more := len(diags) - MaxPrintedDiagnostics
	diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagWarning, Summary: "w"}, &hcl.Diagnostic{Severity: hcl.DiagWarning, Summary: "w2"})
	var out bytes.Buffer
	if err := p.WriteDiagnostics(&out, diags, false); err != nil {
		t.Fatal(err)
	}
	s := out.String()
	if got := strings.Count(s, "\nError: ") + strings.Count(s[:min(len(s), 7)], "Error: "); got != MaxPrintedDiagnostics {
		t.Errorf("WriteDiagnostics printed %d errors, want %d", got, MaxPrintedDiagnostics)
	}
	// Line 1 has two diagnostics, so the last one printed is on line 19.
	if want := fmt.Sprintf("\n%4d: @\n      ^\n", MaxPrintedDiagnostics-1); !strings.Contains(s, want) {
		t.Errorf("WriteDiagnostics output lacks the snippet of line %d, %q", MaxPrintedDiagnostics-1, want)
	}
	if bad := fmt.Sprintf("\n%4d: @\n", MaxPrintedDiagnostics); strings.Contains(s, bad) {
		t.Errorf("WriteDiagnostics printed line %d, beyond the first %d diagnostics", MaxPrintedDiagnostics, MaxPrintedDiagnostics)
	}
	if want := fmt.Sprintf("\n... and %d more errors and 2 more warnings.\n", more); !strings.HasSuffix(s, want) {
		t.Errorf("WriteDiagnostics output ends with %q, want %q", s[max(0, len(s)-200):], want)
	}
}

// BenchmarkDiagnostics parses and prints a file of 5,000 bad lines; before
// the line index it took about a minute, since every snippet rescanned the
// file.
func BenchmarkDiagnostics(b *testing.B) {
	src := badLines(5000)
	b.SetBytes(int64(len(src)))
	b.ReportAllocs()
	for b.Loop() {
		var p Parser
		_, diags := p.Parse(src, "bad.hcl")
		if err := p.WriteDiagnostics(&bytes.Buffer{}, diags, false); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkWriteDiagnostics prints every one of 5,000 diagnostics (the
// cap lifted) to show that snippets cost no more than their own lines.
func BenchmarkWriteDiagnosticsUncapped(b *testing.B) {
	var p Parser
	_, diags := p.Parse(badLines(5000), "bad.hcl")
	b.ReportAllocs()
	for b.Loop() {
		w := &bytes.Buffer{}
		for _, d := range diags {
			if err := p.WriteDiagnostics(w, hcl.Diagnostics{d}, false); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// TestFileTooLarge checks the size limit for a regular file (by its size,
// before reading), for a pipe (by reading at most one byte too many) and
// for bytes handed to Parse.
func TestFileTooLarge(t *testing.T) {
	head := withMTU("1400") + "\n" // 128 bytes, so that byte MaxFileSize starts a line
	big := append([]byte(head), bytes.Repeat([]byte("#\n"), MaxFileSize/2)...)
	path := filepath.Join(t.TempDir(), "big.hcl")
	if err := os.WriteFile(path, big, 0o600); err != nil {
		t.Fatal(err)
	}
	check := func(what string, cfg *Config, diags hcl.Diagnostics, wantDetail string) {
		t.Helper()
		if cfg != nil || len(diags) != 1 || diags[0].Summary != "Configuration file too large" {
			t.Fatalf("%s = config %v, diagnostics %v; want one error \"Configuration file too large\"", what, cfg != nil, diags[:min(3, len(diags))])
		}
		if !strings.Contains(diags[0].Detail, wantDetail) {
			t.Errorf("%s: detail %q does not contain %q", what, diags[0].Detail, wantDetail)
		}
	}
	cfg, diags := Load(path)
	check("Load(regular file)", cfg, diags, fmt.Sprintf("%s is %d bytes; a configuration file may be at most %d bytes (4 MiB)", path, len(big), MaxFileSize))

	cfg, diags = Parse(big, "big.hcl")
	check("Parse", cfg, diags, fmt.Sprintf("big.hcl is %d bytes", len(big)))
	if s := diags[0].Subject; s == nil || s.Start.Byte != MaxFileSize || s.Start.Line != 8+(MaxFileSize-len(head))/2 || s.Start.Column != 1 {
		t.Errorf("Parse: subject %v, want the line at byte %d", s, MaxFileSize)
	}

	// A pipe has no size; it must be cut off after MaxFileSize+1 bytes
	// rather than read to the end (this writer never ends).
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	written := make(chan int64, 1)
	go func() {
		defer w.Close()
		var n int64
		chunk := bytes.Repeat([]byte("#\n"), 32<<10)
		for n < 64*MaxFileSize {
			m, err := w.Write(chunk)
			n += int64(m)
			if err != nil {
				break
			}
		}
		written <- n
	}()
	cfg, diags = Load(fmt.Sprintf("/dev/fd/%d", r.Fd()))
	check("Load(pipe)", cfg, diags, fmt.Sprintf("more than %d bytes", MaxFileSize))
	r.Close()
	if n := <-written; n >= 64*MaxFileSize {
		t.Errorf("Load(pipe) read all %d bytes, want it to stop after %d", n, MaxFileSize+1)
	}
}

// TestFileAtSizeLimit checks that a file of exactly MaxFileSize bytes
// still loads.
func TestFileAtSizeLimit(t *testing.T) {
	src := []byte(withMTU("1400"))
	pad := MaxFileSize - len(src)
	src = append(src, '#')
	src = append(src, bytes.Repeat([]byte("x"), pad-2)...)
	src = append(src, '\n')
	path := filepath.Join(t.TempDir(), "limit.hcl")
	if err := os.WriteFile(path, src, 0o600); err != nil {
		t.Fatal(err)
	}
	if cfg, diags := Load(path); cfg == nil || len(diags) != 0 {
		t.Fatalf("Load(%d bytes) = config %v, diagnostics %v; want a config", len(src), cfg != nil, diags)
	}
}

// TestLongValueTruncated checks that a huge value is shown cut to the
// screen width, both in the snippet and where the detail quotes it.
func TestLongValueTruncated(t *testing.T) {
	long := strings.Repeat("x", 1<<20)
	src := withMTU("1400") + "forward \"f\" {\n  listen = \"127.0.0.1:8080\"\n  target = \"" + long + "\"\n}\n"
	var p Parser
	_, diags := p.Parse([]byte(src), "long.hcl")
	if len(diags) != 1 {
		t.Fatalf("Parse = %v, want one diagnostic", diags)
	}
	var out bytes.Buffer
	if err := p.WriteDiagnostics(&out, diags, false); err != nil {
		t.Fatal(err)
	}
	if out.Len() > 2000 {
		t.Errorf("WriteDiagnostics wrote %d bytes for a 1 MiB value, want at most 2000:\n%.3000s", out.Len(), out.String())
	}
	for _, line := range strings.Split(out.String(), "\n") {
		if n := len([]rune(line)); n > snippetWidth+10 {
			t.Errorf("line of %d columns, want at most %d: %.200q…", n, snippetWidth+10, line)
		}
	}
}
