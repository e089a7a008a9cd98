package config

import (
	"cmp"
	"path/filepath"
	"slices"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	hcljson "github.com/hashicorp/hcl/v2/json"
)

// Parser loads configuration files and keeps their source text so that
// diagnostics can be printed with snippets. The zero value is ready to use.
// A Parser is not safe for concurrent use.
type Parser struct {
	// LookupEnv reads the environment for env(). nil means os.LookupEnv.
	// It must not change while a parse is in progress.
	LookupEnv func(name string) (string, bool)

	files map[string]*hcl.File
}

// Load reads and parses the file at path; see [Parser.Load].
func Load(path string) (*Config, hcl.Diagnostics) {
	var p Parser
	return p.Load(path)
}

// Parse parses src; see [Parser.Parse].
func Parse(src []byte, filename string) (*Config, hcl.Diagnostics) {
	var p Parser
	return p.Parse(src, filename)
}

// Load reads the file at path and parses it like Parse. A file that cannot be
// read, or that is larger than [MaxFileSize], is reported as a diagnostic
// without a Subject; the size of a regular file is checked before reading
// it, and anything else (a pipe, /dev/stdin) is read no further than one
// byte beyond the limit.
func (p *Parser) Load(path string) (*Config, hcl.Diagnostics) {
	src, diag := readLimited(path)
	if diag != nil {
		return nil, hcl.Diagnostics{diag}
	}
	return p.Parse(src, path)
}

// Parse parses and validates src, whose name (used in diagnostics and to
// choose the syntax) is filename. Files whose name ends in ".json" use HCL's
// JSON syntax; everything else is native HCL. The source is kept for
// WriteDiagnostics, replacing an earlier file of the same name.
//
// Parse returns a non-nil *Config if and only if the diagnostics contain no
// error. Diagnostics are sorted by position.
//
// Before parsing, src is checked against the limits [MaxFileSize],
// [MaxNesting] and [MaxChain]; a file beyond one of them gets a single
// error at the first offending byte and is not parsed.
func (p *Parser) Parse(src []byte, filename string) (*Config, hcl.Diagnostics) {
	var (
		file  *hcl.File
		diags hcl.Diagnostics
	)
	if d := checkLimits(src, filename); d != nil {
		// Parsing would exhaust the stack or take too long; keep the
		// source for the snippet of the diagnostic.
		diags = hcl.Diagnostics{d}
	} else if strings.EqualFold(filepath.Ext(filename), ".json") {
		file, diags = hcljson.Parse(src, filename)
	} else {
		file, diags = hclsyntax.ParseConfig(src, filename, hcl.InitialPos)
	}
	if p.files == nil {
		p.files = make(map[string]*hcl.File)
	}
	if file == nil || file.Bytes == nil {
		// Keep the source for snippets even if the parser gave up early.
		p.files[filename] = &hcl.File{Bytes: src}
	} else {
		p.files[filename] = file
	}
	if diags.HasErrors() || file == nil {
		return nil, sortDiags(diags)
	}

	d := &decoder{ctx: evalContext(p.LookupEnv)}
	cfg := d.decodeFile(file.Body)
	diags = append(diags, d.diags...)
	diags = sortDiags(diags)
	if diags.HasErrors() {
		return nil, diags
	}
	return cfg, diags
}

// Files returns the source of every file parsed so far, keyed by name, for
// [hcl.NewDiagnosticTextWriter] or [WriteDiagnostics]. The caller must not
// modify it.
func (p *Parser) Files() map[string]*hcl.File { return p.files }

// sortDiags orders diagnostics by file and position, those without a
// Subject first, keeping the original order among equals so that output is
// deterministic and reads top to bottom.
func sortDiags(diags hcl.Diagnostics) hcl.Diagnostics {
	slices.SortStableFunc(diags, func(a, b *hcl.Diagnostic) int {
		switch {
		case a.Subject == nil && b.Subject == nil:
			return 0
		case a.Subject == nil:
			return -1
		case b.Subject == nil:
			return 1
		}
		return cmp.Or(
			strings.Compare(a.Subject.Filename, b.Subject.Filename),
			cmp.Compare(a.Subject.Start.Byte, b.Subject.Start.Byte),
		)
	})
	// Drop exact duplicates (the same message at the same place), which
	// HCL can produce when one bad expression is evaluated twice.
	return slices.CompactFunc(diags, func(a, b *hcl.Diagnostic) bool {
		return a.Severity == b.Severity && a.Summary == b.Summary && a.Detail == b.Detail &&
			(a.Subject == nil) == (b.Subject == nil) && (a.Subject == nil || *a.Subject == *b.Subject)
	})
}
