// Command benchtable turns `go test -bench` output (any -count) into a
// Markdown table of medians with the ratios the project's targets are
// stated in, and an SVG bar chart of throughput.
//
//	go test -run '^$' -bench . -count 6 ./bench/ > bench/out.txt
//	go run ./bench/benchtable -in bench/out.txt -md bench/TABLE.md -svg bench/throughput.svg
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

var procSuffix = regexp.MustCompile(`-\d+$`)

// parse reads benchmark lines: "BenchmarkX-2  N  v1 unit1  v2 unit2 ...".
func parse(r io.Reader) ([]*result, error) {
	byName := map[string]*result{}
	var order []*result
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
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
			order = append(order, res)
		}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				continue
			}
			res.values[f[i+1]] = append(res.values[f[i+1]], v)
		}
	}
	return order, sc.Err()
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

// markdown writes the table: one row per benchmark, the median of each
// metric, and ratios to the baselines.
func markdown(w io.Writer, rs []*result) {
	units := []string{"Gbit/s", "pkts/s", "%lost", "p50-µs", "p99-µs", "allocs/op", "B/op"}
	wg := find(rs, "BaselineWireguardNetstack")
	kern := find(rs, "BaselineKernelTCP")
	kernRR := find(rs, "BaselineKernelTCPRequestResponse")
	fmt.Fprintf(w, "| benchmark | runs |")
	for _, u := range units {
		fmt.Fprintf(w, " %s |", u)
	}
	fmt.Fprintf(w, " × wireguard-go | × kernel |\n|---|---|")
	for range units {
		fmt.Fprintf(w, "---|")
	}
	fmt.Fprintf(w, "---|---|\n")
	for _, r := range rs {
		runs := 0
		for _, v := range r.values {
			runs = max(runs, len(v))
		}
		fmt.Fprintf(w, "| %s | %d |", r.name, runs)
		for _, u := range units {
			if v, ok := r.median(u); ok {
				fmt.Fprintf(w, " %s |", fmtNum(v))
			} else {
				fmt.Fprintf(w, " |")
			}
		}
		ratio := func(base *result, unit string) string {
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
		if strings.Contains(r.name, "RequestResponse") {
			fmt.Fprintf(w, " | %s (p50) |\n", ratio(kernRR, "p50-µs"))
			continue
		}
		fmt.Fprintf(w, " %s | %s |\n", ratio(wg, "Gbit/s"), ratio(kern, "Gbit/s"))
	}
}

// svg draws a horizontal bar per benchmark that reports Gbit/s.
func svg(w io.Writer, rs []*result) {
	type bar struct {
		name string
		v    float64
	}
	var bars []bar
	maxV := 0.0
	for _, r := range rs {
		if v, ok := r.median("Gbit/s"); ok {
			bars = append(bars, bar{r.name, v})
			maxV = max(maxV, v)
		}
	}
	const left, width, rowH = 330, 420, 26
	h := len(bars)*rowH + 50
	fmt.Fprintf(w, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", left+width+80, h)
	fmt.Fprintf(w, `<text x="10" y="18" font-size="14" font-weight="bold">One TCP stream (median Gbit/s)</text>`+"\n")
	for i, b := range bars {
		y := 30 + i*rowH
		bw := 0.0
		if maxV > 0 {
			bw = b.v / maxV * width
		}
		color := "#4a7fb5"
		if strings.HasPrefix(b.name, "Baseline") {
			color = "#999999"
		}
		fmt.Fprintf(w, `<text x="%d" y="%d" text-anchor="end">%s</text>`+"\n", left-8, y+16, html.EscapeString(b.name))
		fmt.Fprintf(w, `<rect x="%d" y="%d" width="%.1f" height="%d" fill="%s"/>`+"\n", left, y+3, bw, rowH-8, color)
		fmt.Fprintf(w, `<text x="%.1f" y="%d">%.2f</text>`+"\n", float64(left)+bw+6, y+16, b.v)
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
	rs, err := parse(r)
	if err != nil || len(rs) == 0 {
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
	write(*md, func(w io.Writer) { markdown(w, rs) })
	if *svgOut != "" {
		write(*svgOut, func(w io.Writer) { svg(w, rs) })
	}
}
