// Command benchtable turns `go test -bench` output (any -count) into a
// Markdown table of medians with the ratios the project's targets are
// stated in, and an SVG bar chart of throughput.
//
//	go test -run '^$' -bench . -count 6 ./bench/ > bench/out.txt
//	go run ./bench/benchtable -in bench/out.txt -md bench/TABLE.md -svg bench/throughput.svg
//
// The table's header names the machine and the run from the input's
// configuration lines ("key: value", the Go benchmark format): go test
// writes goos, goarch and cpu; `make bench` adds nproc, kernel, go, date,
// commit and args. A key the input lacks is shown as "not recorded".
//
// Rows, and the ratio columns:
//   - "× naive netstack": Gbit/s over BaselineNaiveNetstack at the same
//     mtu=N (at mtu=1472 for the other ≤1500-byte MTUs), the gVisor stack on
//     a plain UDP socket without crypto;
//   - "× wireguard-go netstack (encrypts)": Gbit/s over
//     BaselineWireguardNetstack, which pays for ChaCha20-Poly1305;
//   - "× kernel": Gbit/s over BaselineKernelTCP with the same number of
//     processes (a name ending in /procs=2 runs the receiver in a second
//     process; otherwise both ends share one), or, for request/response
//     rows, the p50 latency over BaselineKernelTCPRequestResponse.
//
// Each procs=2 row follows its one-process row, and a second table puts the
// two side by side. Rows whose name starts with Hub get a section of their
// own with every metric they report.
//
// The chart groups, for each MTU measured, ipipstack's udp transport (one
// and two processes), the naive netstack, wireguard-go and the kernel's
// loopback TCP, then the other ipipstack cases, and the hub's per-tunnel
// memory if the input has it.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"html"
	"io"
	"os"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// result holds every run of one benchmark: metric unit -> values.
type result struct {
	name   string
	values map[string][]float64
	units  []string // in the order first seen
}

func (r *result) median(unit string) (float64, bool) {
	v := slices.Clone(r.values[unit])
	if len(v) == 0 {
		return 0, false
	}
	sort.Float64s(v)
	if len(v)%2 == 1 {
		return v[len(v)/2], true
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2, true
}

func (r *result) runs() int {
	n := 0
	for _, v := range r.values {
		n = max(n, len(v))
	}
	return n
}

// report is a parsed input: the results in input order and the first value
// of each configuration key.
type report struct {
	results []*result
	config  map[string]string
}

var (
	procSuffix = regexp.MustCompile(`-\d+$`)
	configLine = regexp.MustCompile(`^([a-z][a-zA-Z0-9_-]*):\s*(.*)$`)
)

// parse reads benchmark lines, "BenchmarkX-2  N  v1 unit1  v2 unit2 ...",
// and configuration lines, "key: value".
func parse(r io.Reader) (*report, error) {
	rep := &report{config: map[string]string{}}
	byName := map[string]*result{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if m := configLine.FindStringSubmatch(sc.Text()); m != nil {
			if _, ok := rep.config[m[1]]; !ok {
				rep.config[m[1]] = strings.TrimSpace(m[2])
			}
			continue
		}
		f := strings.Fields(sc.Text())
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		if _, err := strconv.Atoi(f[1]); err != nil {
			continue
		}
		name := procSuffix.ReplaceAllString(strings.TrimPrefix(f[0], "Benchmark"), "")
		res := byName[name]
		if res == nil {
			res = &result{name: name, values: map[string][]float64{}}
			byName[name] = res
			rep.results = append(rep.results, res)
		}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				continue
			}
			u := f[i+1]
			if _, ok := res.values[u]; !ok {
				res.units = append(res.units, u)
			}
			res.values[u] = append(res.values[u], v)
		}
	}
	return rep, sc.Err()
}

func find(rs []*result, name string) *result {
	for _, r := range rs {
		if r.name == name {
			return r
		}
	}
	return nil
}

func fmtNum(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%.2fM", v/1e6)
	case v >= 1e4:
		return fmt.Sprintf("%.0fk", v/1e3)
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.2f", v)
}

// Benchmark names the table knows.
const (
	naiveName  = "BaselineNaiveNetstack"
	wgName     = "BaselineWireguardNetstack"
	kernelName = "BaselineKernelTCP"
	kernelRR   = "BaselineKernelTCPRequestResponse"
	procs2     = "/procs=2"
	hubPrefix  = "Hub"
)

var mtuIn = regexp.MustCompile(`(?:^|/)mtu=(\d+)(?:/|$)`)

// mtuOf is the mtu=N in a name, or 0.
func mtuOf(name string) int {
	m := mtuIn.FindStringSubmatch(name)
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

func isTwoProcs(name string) bool { return strings.HasSuffix(name, procs2) }

// oneProcName is the name of the one-process run a procs=2 name pairs with.
func oneProcName(rs []*result, name string) *result {
	base := strings.TrimSuffix(name, procs2)
	if r := find(rs, base); r != nil {
		return r
	}
	return find(rs, base+"/procs=1")
}

// kernelFor is the kernel loopback baseline with the same number of
// processes as name. "BaselineKernelTCP" alone is the one-process run of
// outputs made before the procs=2 case existed.
func kernelFor(rs []*result, name string) *result {
	if isTwoProcs(name) {
		return find(rs, kernelName+procs2)
	}
	if r := find(rs, kernelName+"/procs=1"); r != nil {
		return r
	}
	return find(rs, kernelName)
}

// naiveFor is the naive netstack at name's MTU; a ≤1500-byte MTU without
// a run of its own compares with mtu=1472, the 1500-byte path's.
func naiveFor(rs []*result, name string) *result {
	mtu := mtuOf(name)
	if mtu == 0 || strings.HasPrefix(name, naiveName) {
		return nil
	}
	if r := find(rs, fmt.Sprintf("%s/mtu=%d", naiveName, mtu)); r != nil {
		return r
	}
	if mtu <= 1500 {
		return find(rs, naiveName+"/mtu=1472")
	}
	return nil
}

// ordered puts each procs=2 result right after its one-process result and
// leaves the hub's out.
func ordered(rs []*result) []*result {
	var out []*result
	placed := map[*result]bool{}
	for _, r := range rs {
		if placed[r] || strings.HasPrefix(r.name, hubPrefix) {
			continue
		}
		if isTwoProcs(r.name) && oneProcName(rs, r.name) != nil {
			continue // placed after its pair
		}
		out = append(out, r)
		placed[r] = true
		for _, r2 := range rs {
			if !placed[r2] && isTwoProcs(r2.name) && oneProcName(rs, r2.name) == r {
				out = append(out, r2)
				placed[r2] = true
			}
		}
	}
	return out
}

func ratio(r, base *result, unit string) string {
	if base == nil || base == r {
		return ""
	}
	a, ok1 := r.median(unit)
	b, ok2 := base.median(unit)
	if !ok1 || !ok2 || a == 0 || b == 0 {
		return ""
	}
	return fmt.Sprintf("%.2f", a/b)
}

// machine is the one-line description of where and when the input was made.
func machine(cfg map[string]string) (where, when string) {
	get := func(k string) string {
		if v := cfg[k]; v != "" {
			return v
		}
		return k + " not recorded"
	}
	cpus := "nproc not recorded"
	if v := cfg["nproc"]; v != "" {
		cpus = v + " CPUs"
	}
	where = fmt.Sprintf("%s, %s, %s, %s", get("cpu"), cpus, get("kernel"), get("go"))
	when = fmt.Sprintf("%s, commit %s", get("date"), get("commit"))
	if v := cfg["args"]; v != "" {
		when += ", " + v
	}
	return where, when
}

// markdown writes the header, the main table (one row per benchmark, the
// median of each metric, ratios to the baselines), the one- versus
// two-process table and the hub section.
func markdown(w io.Writer, rep *report) {
	rs := rep.results
	where, when := machine(rep.config)
	fmt.Fprintf(w, "Machine: %s. Run: %s.\n\n", where, when)

	units := []string{"Gbit/s", "pkts/s", "%lost", "p50-µs", "p99-µs", "allocs/op", "B/op"}
	wg := find(rs, wgName)
	kernRR := find(rs, kernelRR)
	fmt.Fprintf(w, "| benchmark | runs |")
	for _, u := range units {
		fmt.Fprintf(w, " %s |", u)
	}
	fmt.Fprintf(w, " × naive netstack | × wireguard-go netstack (encrypts) | × kernel |\n|---|---|")
	for range units {
		fmt.Fprintf(w, "---|")
	}
	fmt.Fprintf(w, "---|---|---|\n")
	for _, r := range ordered(rs) {
		fmt.Fprintf(w, "| %s | %d |", r.name, r.runs())
		for _, u := range units {
			if v, ok := r.median(u); ok {
				fmt.Fprintf(w, " %s |", fmtNum(v))
			} else {
				fmt.Fprintf(w, " |")
			}
		}
		cell := func(s string) string {
			if s == "" {
				return " |"
			}
			return " " + s + " |"
		}
		if strings.Contains(r.name, "RequestResponse") {
			p50 := ratio(r, kernRR, "p50-µs")
			if p50 != "" {
				p50 += " (p50)"
			}
			fmt.Fprintf(w, " | |%s\n", cell(p50))
			continue
		}
		fmt.Fprintf(w, "%s%s%s\n", cell(ratio(r, naiveFor(rs, r.name), "Gbit/s")), cell(ratio(r, wg, "Gbit/s")), cell(ratio(r, kernelFor(rs, r.name), "Gbit/s")))
	}

	var pairs [][2]*result
	for _, r := range rs {
		if one := oneProcName(rs, r.name); isTwoProcs(r.name) && one != nil {
			pairs = append(pairs, [2]*result{one, r})
		}
	}
	if len(pairs) > 0 {
		fmt.Fprintf(w, "\nOne process (both ends share one Go runtime) against two (the receiver in a process of its own), median Gbit/s:\n\n")
		fmt.Fprintf(w, "| stream | one process | two processes | two / one |\n|---|---|---|---|\n")
		for _, p := range pairs {
			cell := func(r *result) string {
				if v, ok := r.median("Gbit/s"); ok {
					return fmtNum(v)
				}
				return ""
			}
			fmt.Fprintf(w, "| %s | %s | %s | %s |\n", strings.TrimSuffix(p[1].name, procs2), cell(p[0]), cell(p[1]), ratio(p[1], p[0], "Gbit/s"))
		}
	}

	var hub []*result
	var hubUnits []string
	for _, r := range rs {
		if strings.HasPrefix(r.name, hubPrefix) {
			hub = append(hub, r)
			for _, u := range r.units {
				if !slices.Contains(hubUnits, u) && u != "ns/op" && u != "MB/s" {
					hubUnits = append(hubUnits, u)
				}
			}
		}
	}
	if len(hub) > 0 {
		fmt.Fprintf(w, "\nHub (one stack, many tunnels), medians:\n\n| benchmark | runs |")
		for _, u := range hubUnits {
			fmt.Fprintf(w, " %s |", u)
		}
		fmt.Fprintf(w, "\n|---|---|%s\n", strings.Repeat("---|", len(hubUnits)))
		for _, r := range hub {
			fmt.Fprintf(w, "| %s | %d |", r.name, r.runs())
			for _, u := range hubUnits {
				if v, ok := r.median(u); ok {
					fmt.Fprintf(w, " %s |", fmtNum(v))
				} else {
					fmt.Fprintf(w, " |")
				}
			}
			fmt.Fprintln(w)
		}
	}
}

// bar is one row of the chart; r nil draws the label and note only.
type bar struct {
	label string
	r     *result
	color string
	note  string
}

const (
	colorTunnel      = "#4a7fb5"
	colorTunnelProcs = "#2b5a8a"
	colorNaive       = "#d08c3a"
	colorWireguard   = "#8064a2"
	colorKernel      = "#999999"
	colorKernelProcs = "#666666"
)

// chartGroups are the chart's sections of Gbit/s bars: one per MTU that
// ipipstack's udp transport or the naive netstack was measured at, then
// every other stream result.
func chartGroups(rs []*result) (titles []string, groups [][]bar) {
	var mtus []int
	for _, r := range rs {
		if m := mtuOf(r.name); m > 0 && (strings.HasPrefix(r.name, "TCPStream/transport=udp/") || strings.HasPrefix(r.name, naiveName)) && !slices.Contains(mtus, m) {
			mtus = append(mtus, m)
		}
	}
	slices.Sort(mtus)
	used := map[*result]bool{}
	wg := find(rs, wgName)
	k1, k2 := kernelFor(rs, "x"), kernelFor(rs, "x"+procs2)
	for _, mtu := range mtus {
		var g []bar
		add := func(label string, r *result, color, missing string) {
			if r == nil {
				if missing != "" {
					g = append(g, bar{label: label, note: missing})
				}
				return
			}
			used[r] = true
			g = append(g, bar{label: label, r: r, color: color})
		}
		udp := fmt.Sprintf("TCPStream/transport=udp/mtu=%d", mtu)
		add("ipipstack, one process", find(rs, udp), colorTunnel, "not measured")
		add("ipipstack, two processes", find(rs, udp+procs2), colorTunnelProcs, "")
		add("naive gVisor netstack over UDP", find(rs, fmt.Sprintf("%s/mtu=%d", naiveName, mtu)), colorNaive, "not measured")
		if mtu <= 1500 {
			add("wireguard-go netstack, encrypts (MTU 1420)", wg, colorWireguard, "not measured")
		} else if wg != nil {
			g = append(g, bar{label: "wireguard-go netstack, encrypts", note: "measured at MTU 1420 only"})
		}
		add("kernel loopback TCP, one process", k1, colorKernel, "")
		add("kernel loopback TCP, two processes", k2, colorKernelProcs, "")
		titles = append(titles, fmt.Sprintf("Inner MTU %d (kernel: loopback MTU 65536)", mtu))
		groups = append(groups, g)
	}
	var other []bar
	for _, r := range rs {
		if _, ok := r.median("Gbit/s"); ok && !used[r] && !strings.HasPrefix(r.name, hubPrefix) {
			color := colorTunnel
			if strings.HasPrefix(r.name, "Baseline") {
				color = colorKernel
			}
			other = append(other, bar{label: r.name, r: r, color: color})
		}
	}
	if len(other) > 0 {
		titles = append(titles, "Other cases")
		groups = append(groups, other)
	}
	return titles, groups
}

// svg draws the grouped Gbit/s bars on one scale, then, if the input has
// hub results with KiB/tunnel, those on a scale of their own.
func svg(w io.Writer, rep *report) {
	rs := rep.results
	titles, groups := chartGroups(rs)
	var hub []*result
	for _, r := range rs {
		if _, ok := r.median("KiB/tunnel"); ok && strings.HasPrefix(r.name, hubPrefix) {
			hub = append(hub, r)
		}
	}
	const left, width, rowH, titleH = 330, 420, 24, 26
	h := 60
	for _, g := range groups {
		h += titleH + len(g)*rowH
	}
	if len(hub) > 0 {
		h += titleH + len(hub)*rowH
	}
	where, when := machine(rep.config)
	fmt.Fprintf(w, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", left+width+200, h)
	fmt.Fprintf(w, `<text x="10" y="18" font-size="14" font-weight="bold">One TCP stream, median Gbit/s</text>`+"\n")
	fmt.Fprintf(w, `<text x="10" y="34" font-size="10" fill="#555">%s</text>`+"\n", html.EscapeString(where))
	fmt.Fprintf(w, `<text x="10" y="47" font-size="10" fill="#555">%s</text>`+"\n", html.EscapeString(when))
	maxV := 0.0
	for _, g := range groups {
		for _, b := range g {
			if b.r != nil {
				v, _ := b.r.median("Gbit/s")
				maxV = max(maxV, v)
			}
		}
	}
	y := 60
	row := func(b bar, v float64, scale float64, text string) {
		fmt.Fprintf(w, `<text x="%d" y="%d" text-anchor="end">%s</text>`+"\n", left-8, y+15, html.EscapeString(b.label))
		if b.r == nil {
			fmt.Fprintf(w, `<text x="%d" y="%d" fill="#777" font-style="italic">%s</text>`+"\n", left+6, y+15, html.EscapeString(b.note))
			y += rowH
			return
		}
		bw := 0.0
		if scale > 0 {
			bw = v / scale * width
		}
		fmt.Fprintf(w, `<rect x="%d" y="%d" width="%.1f" height="%d" fill="%s"/>`+"\n", left, y+3, bw, rowH-7, b.color)
		fmt.Fprintf(w, `<text x="%.1f" y="%d">%s</text>`+"\n", float64(left)+bw+6, y+15, html.EscapeString(text))
		y += rowH
	}
	for i, g := range groups {
		fmt.Fprintf(w, `<text x="10" y="%d" font-weight="bold">%s</text>`+"\n", y+18, html.EscapeString(titles[i]))
		y += titleH
		for _, b := range g {
			var v float64
			if b.r != nil {
				v, _ = b.r.median("Gbit/s")
			}
			row(b, v, maxV, fmt.Sprintf("%.2f", v))
		}
	}
	if len(hub) > 0 {
		fmt.Fprintf(w, `<text x="10" y="%d" font-weight="bold">Hub: memory per tunnel (KiB/tunnel, median)</text>`+"\n", y+18)
		y += titleH
		hubMax := 0.0
		for _, r := range hub {
			v, _ := r.median("KiB/tunnel")
			hubMax = max(hubMax, v)
		}
		for _, r := range hub {
			v, _ := r.median("KiB/tunnel")
			text := fmtNum(v)
			if ms, ok := r.median("setup-ms"); ok {
				text += fmt.Sprintf(", setup %s ms", fmtNum(ms))
			}
			if g, ok := r.median("Gbit/s"); ok {
				text += fmt.Sprintf(", %.2f Gbit/s", g)
			}
			row(bar{label: r.name, r: r, color: colorTunnel}, v, hubMax, text)
		}
	}
	fmt.Fprintln(w, "</svg>")
}

func main() {
	in := flag.String("in", "-", "go test -bench output to read (- for stdin)")
	md := flag.String("md", "-", "Markdown table to write (- for stdout)")
	svgOut := flag.String("svg", "", "SVG chart to write (none if empty)")
	flag.Parse()
	var r io.Reader = os.Stdin
	if *in != "-" {
		f, err := os.Open(*in)
		if err != nil {
			fmt.Fprintln(os.Stderr, "benchtable:", err)
			os.Exit(1)
		}
		defer f.Close()
		r = f
	}
	rep, err := parse(r)
	if err != nil || len(rep.results) == 0 {
		fmt.Fprintln(os.Stderr, "benchtable: no benchmark results in the input", err)
		os.Exit(1)
	}
	write := func(path string, f func(io.Writer)) {
		if path == "-" {
			f(os.Stdout)
			return
		}
		out, err := os.Create(path)
		if err != nil {
			fmt.Fprintln(os.Stderr, "benchtable:", err)
			os.Exit(1)
		}
		f(out)
		if err := out.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "benchtable:", err)
			os.Exit(1)
		}
	}
	write(*md, func(w io.Writer) { markdown(w, rep) })
	if *svgOut != "" {
		write(*svgOut, func(w io.Writer) { svg(w, rep) })
	}
}
