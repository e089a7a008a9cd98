package config

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"strings"
	"unicode/utf8"

	"github.com/hashicorp/hcl/v2"
	wordwrap "github.com/mitchellh/go-wordwrap"
)

// detailWidth is the column at which diagnostic details are wrapped.
const detailWidth = 78

// WriteDiagnostics writes diags to w as text, like
// [hcl.NewDiagnosticTextWriter] but with the position as file:line:col and
// the offending range underlined with carets, so that it reads the same
// without color:
//
//	Error: Value out of range
//
//	  on tunnel.hcl:9:9, in tunnel "peer1":
//	     9:   mtu = 40
//	                ^^
//
//	mtu must be 0 (derive it from path_mtu) or between 68 and 65535, ...
//
// files holds the source for snippets, as returned by [Parser.Files]; a file
// missing from it is read from disk by its name, and if that fails the
// snippet is left out. With color, VT100 escapes highlight the severity and
// the range.
func WriteDiagnostics(w io.Writer, files map[string]*hcl.File, diags hcl.Diagnostics, color bool) error {
	bw := bufio.NewWriter(w)
	for _, diag := range diags {
		writeDiagnostic(bw, files, diag, color)
	}
	return bw.Flush()
}

// WriteDiagnostics writes diags with the source of the files p has parsed;
// see the function [WriteDiagnostics].
func (p *Parser) WriteDiagnostics(w io.Writer, diags hcl.Diagnostics, color bool) error {
	return WriteDiagnostics(w, p.files, diags, color)
}

func writeDiagnostic(w *bufio.Writer, files map[string]*hcl.File, diag *hcl.Diagnostic, color bool) {
	if diag == nil {
		return
	}
	var sevColor, hl, reset string
	severity := "Error"
	if diag.Severity == hcl.DiagWarning {
		severity = "Warning"
	}
	if color {
		sevColor, hl, reset = "\x1b[1;31m", "\x1b[1;4m", "\x1b[0m"
		if diag.Severity == hcl.DiagWarning {
			sevColor = "\x1b[1;33m"
		}
	}
	fmt.Fprintf(w, "%s%s%s: %s\n\n", sevColor, severity, reset, diag.Summary)

	if s := diag.Subject; s != nil {
		fmt.Fprintf(w, "  on %s:%d:%d", s.Filename, s.Start.Line, s.Start.Column)
		src, nav := source(files, s.Filename)
		if cs, ok := nav.(interface{ ContextString(int) string }); ok && src != nil {
			if c := cs.ContextString(s.Start.Byte); c != "" {
				fmt.Fprintf(w, ", in %s", c)
			}
		}
		w.WriteString(":\n")
		if src != nil {
			writeSnippet(w, src, diag, hl, reset, sevColor)
		}
		w.WriteByte('\n')
	}
	if diag.Detail != "" {
		fmt.Fprintf(w, "%s\n\n", wordwrap.WrapString(diag.Detail, detailWidth))
	}
}

// source returns the bytes and navigation of a file, from files or disk.
func source(files map[string]*hcl.File, name string) ([]byte, any) {
	if f := files[name]; f != nil && f.Bytes != nil {
		return f.Bytes, f.Nav
	}
	if name == "" {
		return nil, nil
	}
	b, err := os.ReadFile(name)
	if err != nil {
		return nil, nil
	}
	return b, nil
}

// writeSnippet prints the lines of the subject and context ranges, each
// line of the subject followed by carets under it.
func writeSnippet(w *bufio.Writer, src []byte, diag *hcl.Diagnostic, hl, reset, caretColor string) {
	subject := *diag.Subject
	snip := subject
	if diag.Context != nil && diag.Context.Filename == subject.Filename {
		snip = hcl.RangeOver(snip, *diag.Context)
	}
	// An empty range cannot be underlined; widen it to one character.
	if subject.Empty() {
		subject.End.Byte++
		subject.End.Column++
	}
	if snip.Empty() {
		snip.End.Byte++
		snip.End.Column++
	}
	sc := hcl.NewRangeScanner(src, subject.Filename, bufio.ScanLines)
	for sc.Scan() {
		line := sc.Range()
		if !line.Overlaps(snip) {
			continue
		}
		before, highlighted, after := line.PartitionAround(subject)
		text := sc.Bytes()
		if highlighted.Empty() {
			fmt.Fprintf(w, "%4d: %s\n", line.Start.Line, text)
			continue
		}
		b, h, a := slice(src, before), slice(src, highlighted), slice(src, after)
		fmt.Fprintf(w, "%4d: %s%s%s%s%s\n", line.Start.Line, b, hl, h, reset, a)
		fmt.Fprintf(w, "      %s%s%s%s\n", pad(b), caretColor, strings.Repeat("^", max(1, utf8.RuneCount(h))), reset)
	}
}

// slice returns the bytes of r in src, clamped to src.
func slice(src []byte, r hcl.Range) []byte {
	start, end := min(max(r.Start.Byte, 0), len(src)), min(max(r.End.Byte, 0), len(src))
	if start > end {
		return nil
	}
	return bytes.TrimRight(src[start:end], "\r\n")
}

// pad returns white space as wide as b, keeping tabs so that the carets
// line up under the text.
func pad(b []byte) string {
	var sb strings.Builder
	for _, r := range string(b) {
		if r == '\t' {
			sb.WriteByte('\t')
		} else {
			sb.WriteByte(' ')
		}
	}
	return sb.String()
}
