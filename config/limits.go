package config

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/hashicorp/hcl/v2"
)

// Limits on a configuration file, so that a hostile or broken file gets a
// diagnostic instead of exhausting the stack, memory or time of the
// process that reads it.
const (
	// MaxFileSize is the largest configuration file Load and Parse accept,
	// in bytes.
	MaxFileSize = 4 << 20
	// MaxNesting is how deeply blocks, brackets, braces, parentheses and
	// template sequences may nest.
	MaxNesting = 100
	// MaxChain is how many operators, index and splat steps one expression
	// may chain at one nesting level.
	MaxChain = 100
	// MaxPrintedDiagnostics is how many diagnostics WriteDiagnostics
	// prints; it counts the rest in one line.
	MaxPrintedDiagnostics = 20
)

const (
	nestingSummary = "Configuration nested too deeply"
	chainSummary   = "Expression too long"
	// snippetWidth is how many columns of a source line, and of a quoted
	// value in a diagnostic, are printed.
	snippetWidth = 120
)

// checkNesting scans native HCL source for nesting deeper than MaxNesting
// and operator chains longer than MaxChain, and reports the first token
// beyond either limit. HCL's parser is recursive (and so is evaluating the
// expressions it builds), so without this guard a file of 100,000 "(" ends
// the process with "fatal error: stack overflow" instead of a diagnostic.
//
// The scan is a linear pass that uses memory in proportion to the nesting.
// It knows just enough of the syntax not to count what does not nest:
// comments, quoted strings and heredocs are skipped, except for the
// template sequences in them ("${", "%{" and the if/for blocks they open),
// which nest; "$${" and "%%{" are literal text. What it gets wrong on a
// malformed file only changes which error is reported first.
func checkNesting(src []byte, filename string) *hcl.Diagnostic {
	s := nestScanner{src: src, bad: -1}
	s.push(frame{kind: kindRoot}, 0)
	s.scan()
	return s.diagnostic(filename)
}

// checkNestingJSON does for HCL's JSON syntax what checkNesting does for
// the native one: it counts arrays and objects, and checks each string
// that holds a template sequence as the native template it is evaluated
// as. A problem inside a string is reported at the string's start.
func checkNestingJSON(src []byte, filename string) *hcl.Diagnostic {
	s := nestScanner{src: src, bad: -1}
	for i := 0; i < len(src) && s.bad < 0; i++ {
		switch c := src[i]; c {
		case '[', '{':
			s.depth++
			if s.depth > MaxNesting {
				s.fail(i, 1, nestingSummary)
			}
		case ']', '}':
			s.depth = max(0, s.depth-1)
		case '"':
			start := i
			for i++; i < len(src) && src[i] != '"'; i++ {
				if src[i] == '\\' {
					i++
				}
			}
			lit := src[start:min(i+1, len(src))]
			if !bytes.Contains(lit, []byte("${")) && !bytes.Contains(lit, []byte("%{")) {
				continue
			}
			var str string
			if json.Unmarshal(lit, &str) != nil {
				continue // hcljson reports it
			}
			t := nestScanner{src: []byte(str), bad: -1}
			t.push(frame{kind: kindRoot}, 0)
			t.push(frame{kind: kindTemplate}, 0)
			t.scan()
			if t.bad >= 0 {
				s.fail(start, 1, t.summary)
			}
		}
	}
	return s.diagnostic(filename)
}

// Frame kinds of nestScanner. The first group counts towards MaxNesting.
const (
	kindBrace     = '{' // block body or object
	kindBracket   = '['
	kindParen     = '('
	kindInterp    = '$' // ${ ... }
	kindDirective = '%' // %{ ... }
	kindTmplBlock = 'i' // between %{if}/%{for} and %{endif}/%{endfor}

	kindRoot     = 0
	kindQuoted   = '"' // "..." template
	kindHeredoc  = 'h' // <<EOT template
	kindTemplate = 't' // a template that runs to the end of the source
)

type frame struct {
	kind  byte
	chain int    // operators seen at this level since the last reset
	tmpl  byte   // kindTmplBlock: the kind of the template it is in
	term  []byte // kindHeredoc: the closing marker
	word  string // kindDirective: the keyword after "%{"
}

func (f frame) counts() bool {
	switch f.kind {
	case kindBrace, kindBracket, kindParen, kindInterp, kindDirective, kindTmplBlock:
		return true
	}
	return false
}

type nestScanner struct {
	src     []byte
	stack   []frame
	depth   int  // frames that count
	value   bool // the last token ends a value, so "[" indexes it
	bad     int  // offset of the first token beyond a limit, or -1
	badLen  int
	summary string
}

func (s *nestScanner) push(f frame, at int) {
	s.stack = append(s.stack, f)
	if f.counts() {
		s.depth++
		if s.depth > MaxNesting && s.bad < 0 {
			s.fail(at, 1, nestingSummary)
		}
	}
}

func (s *nestScanner) pop() frame {
	f := s.stack[len(s.stack)-1]
	s.stack = s.stack[:len(s.stack)-1]
	if f.counts() {
		s.depth--
	}
	return f
}

func (s *nestScanner) top() *frame { return &s.stack[len(s.stack)-1] }

func (s *nestScanner) fail(at, n int, summary string) {
	if s.bad < 0 {
		s.bad, s.badLen, s.summary = at, n, summary
	}
}

// chain counts one operator at the current level.
func (s *nestScanner) chain(at, n int) {
	f := s.top()
	f.chain++
	if f.chain > MaxChain {
		s.fail(at, n, chainSummary)
	}
}

// scan runs until the end of the source or the first problem.
func (s *nestScanner) scan() {
	src := s.src
	i := 0
	for i < len(src) && s.bad < 0 {
		switch f := s.top(); f.kind {
		case kindQuoted, kindHeredoc, kindTemplate:
			i = s.template(i, f.kind)
		case kindTmplBlock:
			i = s.template(i, f.tmpl)
		default:
			i = s.expression(i)
		}
	}
}

// template scans template text from src[i] and returns where to go on.
func (s *nestScanner) template(i int, kind byte) int {
	src := s.src
	if kind == kindHeredoc && (i == 0 || src[i-1] == '\n') {
		if end, ok := s.heredocEnd(i); ok {
			return end
		}
	}
	switch {
	case kind == kindQuoted && src[i] == '\\':
		return i + 2
	case kind == kindQuoted && (src[i] == '"' || src[i] == '\n'):
		// The end of the string; a newline ends a broken one, as
		// HCL's scanner does, so that the rest is scanned as code.
		for s.top().kind != kindQuoted {
			s.pop()
		}
		s.pop()
		s.value = true
		if src[i] == '"' {
			return i + 1
		}
		return i
	case hasPrefix(src[i:], "$${") || hasPrefix(src[i:], "%%{"):
		return i + 3
	case hasPrefix(src[i:], "${"):
		s.push(frame{kind: kindInterp}, i)
		s.value = false
		return i + 2
	case hasPrefix(src[i:], "%{"):
		j := i + 2
		for j < len(src) && (src[j] == '~' || src[j] == ' ' || src[j] == '\t') {
			j++
		}
		k := j
		for k < len(src) && isIdentByte(src[k]) {
			k++
		}
		s.push(frame{kind: kindDirective, word: string(src[j:k])}, i)
		s.value = false
		return i + 2
	}
	return i + 1
}

// heredocEnd reports whether the line at src[i] closes the innermost
// heredoc, and if so pops it and returns the offset after the marker.
func (s *nestScanner) heredocEnd(i int) (int, bool) {
	src := s.src
	var h *frame
	for k := len(s.stack) - 1; k >= 0; k-- {
		if s.stack[k].kind == kindHeredoc {
			h = &s.stack[k]
			break
		}
	}
	j := i
	for j < len(src) && (src[j] == ' ' || src[j] == '\t') {
		j++
	}
	if !hasPrefix(src[j:], string(h.term)) {
		return 0, false
	}
	e := j + len(h.term)
	if e < len(src) && src[e] != '\n' && src[e] != '\r' {
		return 0, false
	}
	for s.top().kind != kindHeredoc {
		s.pop()
	}
	s.pop()
	s.value = true
	return e, true
}

// expression scans one token of code from src[i] and returns where to go
// on.
func (s *nestScanner) expression(i int) int {
	src := s.src
	c := src[i]
	switch {
	case c == ' ' || c == '\t' || c == '\r':
		return i + 1
	case c == '\n':
		if k := s.top().kind; k == kindBrace || k == kindRoot {
			s.top().chain = 0 // the end of an attribute or object item
		}
		s.value = false
		return i + 1
	case c == '#' || hasPrefix(src[i:], "//"):
		if j := bytes.IndexByte(src[i:], '\n'); j >= 0 {
			return i + j
		}
		return len(src)
	case hasPrefix(src[i:], "/*"):
		if j := bytes.Index(src[i+2:], []byte("*/")); j >= 0 {
			return i + 2 + j + 2
		}
		return len(src)
	case c == '"':
		s.push(frame{kind: kindQuoted}, i)
		return i + 1
	case hasPrefix(src[i:], "<<"):
		if end, term, ok := heredocStart(src, i); ok {
			s.push(frame{kind: kindHeredoc, term: term}, i)
			return end
		}
		s.chain(i, 1)
		s.value = false
		return i + 2
	case c == '{' || c == '(' || c == '[':
		if c == '[' && s.value {
			s.chain(i, 1) // an index or splat step
		}
		s.push(frame{kind: c}, i)
		s.value = false
		return i + 1
	case c == '}' || c == ')' || c == ']':
		s.close(c, i)
		return i + 1
	case c == ',':
		s.top().chain = 0
		s.value = false
		return i + 1
	case c == '=' && !hasPrefix(src[i:], "==") && !hasPrefix(src[i:], "=>"):
		s.top().chain = 0 // an assignment or object key
		s.value = false
		return i + 1
	case c >= '0' && c <= '9':
		j := i + 1
		for j < len(src) && (isDigit(src[j]) || src[j] == '.' && j+1 < len(src) && isDigit(src[j+1]) ||
			(src[j] == 'e' || src[j] == 'E') ||
			(src[j] == '+' || src[j] == '-') && (src[j-1] == 'e' || src[j-1] == 'E')) {
			j++
		}
		s.value = true
		return j
	case isIdentByte(c) || c >= utf8.RuneSelf:
		j := i + 1
		for j < len(src) && (isIdentByte(src[j]) || src[j] == '-' || src[j] >= utf8.RuneSelf) {
			j++
		}
		s.value = true
		return j
	case strings.IndexByte("+-*/%!<>=&|?.", c) >= 0:
		n := 1
		if i+1 < len(src) && strings.Contains("&&||==!=<=>==>...", string(src[i:i+2])) {
			n = 2
			if hasPrefix(src[i:], "...") {
				n = 3
			}
		}
		s.chain(i, n)
		s.value = false
		return i + n
	}
	s.value = false
	return i + 1
}

// close handles a closing bracket. One that matches nothing open is left
// for the parser to report.
func (s *nestScanner) close(c byte, i int) {
	open := map[byte]byte{'}': '{', ')': '(', ']': '['}[c]
	f := s.top()
	switch {
	case f.kind == open:
		s.pop()
	case c == '}' && f.kind == kindInterp:
		s.pop()
	case c == '}' && f.kind == kindDirective:
		d := s.pop()
		t := s.top()
		tmpl := t.kind
		if tmpl == kindTmplBlock {
			tmpl = t.tmpl
		}
		switch d.word {
		case "if", "for":
			s.push(frame{kind: kindTmplBlock, tmpl: tmpl}, i)
		case "endif", "endfor":
			if t.kind == kindTmplBlock {
				s.pop()
			}
		}
		s.value = false
		return
	}
	s.value = true
}

// heredocStart parses "<<EOT" or "<<-EOT" and the end of its line at
// src[i], returning where the heredoc's text starts and its marker.
func heredocStart(src []byte, i int) (int, []byte, bool) {
	j := i + 2
	if j < len(src) && src[j] == '-' {
		j++
	}
	k := j
	for k < len(src) && (isIdentByte(src[k]) || src[k] == '-') {
		k++
	}
	if k == j {
		return 0, nil, false
	}
	e := k
	if e < len(src) && src[e] == '\r' {
		e++
	}
	if e < len(src) && src[e] != '\n' {
		return 0, nil, false
	}
	return min(e+1, len(src)), src[j:k], true
}

func hasPrefix(b []byte, p string) bool { return len(b) >= len(p) && string(b[:len(p)]) == p }

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func isIdentByte(c byte) bool {
	return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || isDigit(c)
}

// diagnostic returns the problem found, if any, positioned in filename.
func (s *nestScanner) diagnostic(filename string) *hcl.Diagnostic {
	if s.bad < 0 {
		return nil
	}
	what := fmt.Sprintf("nesting deeper than %d levels", MaxNesting)
	detail := what + ": blocks, objects, brackets, parentheses and template sequences (${...}, %{...}, %{if}/%{for}) may nest at most " + strconv.Itoa(MaxNesting) + " deep. Flatten the file; a real configuration needs only a few levels."
	if s.summary == chainSummary {
		what = fmt.Sprintf("more than %d operators in one expression", MaxChain)
		detail = what + ": an expression may chain at most " + strconv.Itoa(MaxChain) + " operators, index and splat steps at one level of parentheses. Split it, or compute the value outside the configuration."
	}
	start := posAt(s.src, s.bad)
	end := start
	end.Byte += s.badLen
	end.Column += s.badLen
	return &hcl.Diagnostic{
		Severity: hcl.DiagError,
		Summary:  s.summary,
		Detail:   strings.ToUpper(detail[:1]) + detail[1:],
		Subject:  &hcl.Range{Filename: filename, Start: start, End: end},
	}
}

// posAt returns the line and column of src[off], counting columns in
// runes.
func posAt(src []byte, off int) hcl.Pos {
	off = min(off, len(src))
	line := 1 + bytes.Count(src[:off], []byte("\n"))
	ls := bytes.LastIndexByte(src[:off], '\n') + 1
	return hcl.Pos{Line: line, Column: 1 + utf8.RuneCount(src[ls:off]), Byte: off}
}

// checkLimits checks src against MaxFileSize, MaxNesting and MaxChain
// before it is parsed.
func checkLimits(src []byte, filename string) *hcl.Diagnostic {
	if len(src) > MaxFileSize {
		start := posAt(src, MaxFileSize)
		end := start
		end.Byte++
		end.Column++
		return &hcl.Diagnostic{
			Severity: hcl.DiagError,
			Summary:  tooLargeSummary,
			Detail:   tooLargeDetail(fmt.Sprintf("%s is %d bytes", filename, len(src))),
			Subject:  &hcl.Range{Filename: filename, Start: start, End: end},
		}
	}
	if strings.EqualFold(filepath.Ext(filename), ".json") {
		return checkNestingJSON(src, filename)
	}
	return checkNesting(src, filename)
}

const tooLargeSummary = "Configuration file too large"

func tooLargeDetail(what string) string {
	return fmt.Sprintf("%s; a configuration file may be at most %d bytes (4 MiB). Check that this is the configuration file you meant, and split out what is not configuration.", what, MaxFileSize)
}

// readLimited reads the file at path, refusing one larger than
// MaxFileSize: by its size if it is a regular file, before reading it,
// and otherwise after reading one byte more than the limit.
func readLimited(path string) ([]byte, *hcl.Diagnostic) {
	fail := func(err error) ([]byte, *hcl.Diagnostic) {
		return nil, &hcl.Diagnostic{
			Severity: hcl.DiagError,
			Summary:  "Failed to read configuration file",
			Detail:   "The configuration file " + path + " could not be read: " + err.Error() + ".",
		}
	}
	tooLarge := func(what string) ([]byte, *hcl.Diagnostic) {
		return nil, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: tooLargeSummary, Detail: tooLargeDetail(what)}
	}
	f, err := os.Open(path)
	if err != nil {
		return fail(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fail(err)
	}
	if fi.Mode().IsRegular() && fi.Size() > MaxFileSize {
		return tooLarge(fmt.Sprintf("%s is %d bytes", path, fi.Size()))
	}
	src, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return fail(err)
	}
	if len(src) > MaxFileSize {
		return tooLarge(fmt.Sprintf("%s holds more than %d bytes", path, MaxFileSize))
	}
	return src, nil
}
