package config

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"slices"
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
//
// Only the first [MaxPrintedDiagnostics] are printed, followed by a line
// counting the rest ("... and 12 more errors and 1 more warning."). Source
// lines are cut to 120 columns around the subject and quoted values in
// messages to 60 characters, with "…" where text is left out, and a
// snippet shows at most 8 lines; the cost is linear in the size of the
// files and the number of diagnostics.
func WriteDiagnostics(w io.Writer, files map[string]*hcl.File, diags hcl.Diagnostics, color bool) error {
	bw := bufio.NewWriter(w)
	srcs := make(map[string]*indexedSource)
	var printed, moreErrors, moreWarnings int
	for _, diag := range diags {
		switch {
		case diag == nil:
		case printed < MaxPrintedDiagnostics:
			writeDiagnostic(bw, files, srcs, diag, color)
			printed++
		case diag.Severity == hcl.DiagWarning:
			moreWarnings++
		default:
			moreErrors++
		}
	}
	if moreErrors+moreWarnings > 0 {
		var more []string
		if moreErrors > 0 {
			more = append(more, countNoun(moreErrors, "more error"))
		}
		if moreWarnings > 0 {
			more = append(more, countNoun(moreWarnings, "more warning"))
		}
		fmt.Fprintf(bw, "... and %s.\n", strings.Join(more, " and "))
	}
	return bw.Flush()
}

func countNoun(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

// WriteDiagnostics writes diags with the source of the files p has parsed;
// see the function [WriteDiagnostics].
func (p *Parser) WriteDiagnostics(w io.Writer, diags hcl.Diagnostics, color bool) error {
	return WriteDiagnostics(w, p.files, diags, color)
}

// indexedSource is a file's source with the offsets at which its lines
// start, found once per WriteDiagnostics call so that each snippet costs
// only its own lines.
type indexedSource struct {
	src   []byte
	nav   any
	lines []int // lines[i] is the offset of line i+1
}

// lineOf returns the 0-based index of the line holding src[off].
func (s *indexedSource) lineOf(off int) int {
	i, found := slices.BinarySearch(s.lines, off)
	if !found {
		i--
	}
	return max(i, 0)
}

// lineBounds returns the start and end (before "\r\n") of line i.
func (s *indexedSource) lineBounds(i int) (int, int) {
	start, end := s.lines[i], len(s.src)
	if i+1 < len(s.lines) {
		end = s.lines[i+1]
	}
	for end > start && (s.src[end-1] == '\n' || s.src[end-1] == '\r') {
		end--
	}
	return start, end
}

func indexSource(srcs map[string]*indexedSource, files map[string]*hcl.File, name string) *indexedSource {
	if s, ok := srcs[name]; ok {
		return s
	}
	var s *indexedSource
	if src, nav := source(files, name); src != nil {
		s = &indexedSource{src: src, nav: nav, lines: []int{0}}
		for off := 0; ; {
			i := bytes.IndexByte(src[off:], '\n')
			if i < 0 {
				break
			}
			off += i + 1
			s.lines = append(s.lines, off)
		}
	}
	srcs[name] = s
	return s
}

func writeDiagnostic(w *bufio.Writer, files map[string]*hcl.File, srcs map[string]*indexedSource, diag *hcl.Diagnostic, color bool) {
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
	fmt.Fprintf(w, "%s%s%s: %s\n\n", sevColor, severity, reset, shortenQuoted(diag.Summary))

	if s := diag.Subject; s != nil {
		fmt.Fprintf(w, "  on %s:%d:%d", s.Filename, s.Start.Line, s.Start.Column)
		src := indexSource(srcs, files, s.Filename)
		if src != nil {
			if cs, ok := src.nav.(interface{ ContextString(int) string }); ok {
				if c := cs.ContextString(s.Start.Byte); c != "" {
					fmt.Fprintf(w, ", in %s", shortenQuoted(c))
				}
			}
		}
		w.WriteString(":\n")
		if src != nil {
			writeSnippet(w, src, diag, hl, reset, sevColor)
		}
		w.WriteByte('\n')
	}
	if diag.Detail != "" {
		fmt.Fprintf(w, "%s\n\n", wordwrap.WrapString(shortenQuoted(diag.Detail), detailWidth))
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
	b, err := readLimited(name)
	if err != nil {
		return nil, nil
	}
	return b, nil
}

// maxSnippetLines is how many lines a snippet shows at most: the first
// lines of the subject, with up to two lines of context before them.
const maxSnippetLines = 8

// writeSnippet prints the lines of the subject and context ranges, each
// line of the subject followed by carets under it. Lines wider than
// snippetWidth are cut around the subject, with an ellipsis where text is
// left out.
func writeSnippet(w *bufio.Writer, src *indexedSource, diag *hcl.Diagnostic, hl, reset, caretColor string) {
	subject := *diag.Subject
	snip := subject
	if diag.Context != nil && diag.Context.Filename == subject.Filename {
		snip = hcl.RangeOver(snip, *diag.Context)
	}
	// An empty range cannot be underlined; widen it to one character.
	if subject.Empty() {
		subject.End.Byte++
	}
	n := len(src.src)
	hs, he := min(max(subject.Start.Byte, 0), n), min(max(subject.End.Byte, 0), n)
	first := src.lineOf(min(max(snip.Start.Byte, 0), n))
	last := src.lineOf(max(min(max(snip.End.Byte, 0), n)-1, 0))
	subjectLine := src.lineOf(hs)
	first = max(first, subjectLine-2)
	last = min(last, first+maxSnippetLines-1)
	for i := first; i <= last; i++ {
		ls, le := src.lineBounds(i)
		// The subject may end at the line's end (an empty subject there,
		// widened above, underlines the newline with one caret).
		onLine := hs <= le && he > ls
		b, h := min(max(hs, ls), le), min(max(he, ls), le)
		if !onLine {
			b, h = ls, ls
		}
		from, to := window(src.src, ls, le, b)
		b, h = min(max(b, from), to), min(max(h, from), to)
		var lead, trail string
		if from > ls {
			lead = "…"
		}
		if to < le {
			trail = "…"
		}
		if !onLine {
			fmt.Fprintf(w, "%4d: %s%s%s\n", i+1, lead, src.src[from:to], trail)
			continue
		}
		before, highlighted, after := src.src[from:b], src.src[b:h], src.src[h:to]
		fmt.Fprintf(w, "%4d: %s%s%s%s%s%s%s\n", i+1, lead, before, hl, highlighted, reset, after, trail)
		fmt.Fprintf(w, "      %s%s%s%s%s\n", pad([]byte(lead)), pad(before), caretColor, strings.Repeat("^", max(1, utf8.RuneCount(highlighted))), reset)
	}
}

// window returns the part [from, to) of the line src[ls:le] to print: all
// of it if it fits in snippetWidth columns, and otherwise snippetWidth
// columns that show at, or shortly before, the subject start at.
func window(src []byte, ls, le, at int) (from, to int) {
	const before = snippetWidth / 3 // columns shown before the subject
	from = at
	for k := 0; from > ls && k < snippetWidth-before; k++ {
		_, size := utf8.DecodeLastRune(src[ls:from])
		from -= size
	}
	if from > ls {
		from = at
		for k := 0; from > ls && k < before; k++ {
			_, size := utf8.DecodeLastRune(src[ls:from])
			from -= size
		}
	}
	to = from
	for k := 0; to < le && k < snippetWidth; k++ {
		_, size := utf8.DecodeRune(src[to:le])
		to += size
	}
	return from, to
}

// shortenQuoted cuts each double-quoted value in s longer than half the
// snippet width to that width with an ellipsis, so that a huge value in a
// message does not flood the terminal.
func shortenQuoted(s string) string {
	const keep = snippetWidth / 2
	var sb strings.Builder
	for {
		i := strings.IndexByte(s, '"')
		if i < 0 {
			if sb.Len() == 0 {
				return s
			}
			sb.WriteString(s)
			return sb.String()
		}
		j := i + 1
		for j < len(s) && s[j] != '"' {
			if s[j] == '\\' {
				j++
			}
			j++
		}
		j = min(j, len(s))
		q := s[i+1 : j]
		sb.WriteString(s[:i+1])
		if utf8.RuneCountInString(q) > keep {
			k, n := 0, 0
			for n < keep {
				_, size := utf8.DecodeRuneInString(q[k:])
				k += size
				n++
			}
			sb.WriteString(q[:k])
			sb.WriteString("…")
		} else {
			sb.WriteString(q)
		}
		if j < len(s) {
			sb.WriteByte('"')
			j++
		}
		s = s[j:]
	}
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
