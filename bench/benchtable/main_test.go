package main

import (
	"strings"
	"testing"
)

// sample is recorded output trimmed to the rows the table treats
// specially, with round figures so that the ratios can be checked by hand.
// The header lines before "goos" are what `make bench` writes.
const sample = `commit: 5529ef8
date: 2026-12-06T14:00Z
kernel: Linux 6.1.0
nproc: 2
go: go1.26.3
args: -benchtime 3s -count 3
goos: linux
goarch: amd64
pkg: github.com/ipipstack/ipipstack/bench
cpu: Intel(R) Xeon(R) Processor @ 2.80GHz
BenchmarkTCPStream/transport=udp/mtu=1472-2   100  900 ns/op  2.0 Gbit/s  5 allocs/op
BenchmarkTCPStream/transport=udp/mtu=65000-2  100  900 ns/op  8.0 Gbit/s  5 allocs/op
BenchmarkTCPStream/transport=raw/mtu=1480-2   100  900 ns/op  1.2 Gbit/s  5 allocs/op
BenchmarkTCPStream/transport=mem-2            100  900 ns/op  5.0 Gbit/s  5 allocs/op
BenchmarkTCPStream/transport=udp/mtu=1472/procs=2-2   100  900 ns/op  4.0 Gbit/s  3 allocs/op
BenchmarkTCPStream/transport=udp/mtu=65000/procs=2-2  100  900 ns/op  9.0 Gbit/s  3 allocs/op
BenchmarkTCPStream/transport=udp/mtu=1472-2   100  900 ns/op  4.0 Gbit/s  5 allocs/op
BenchmarkTCPStream/transport=udp/mtu=1472-2   100  900 ns/op  3.0 Gbit/s  5 allocs/op
BenchmarkTCPRequestResponse-2                   10  900 ns/op  40 p50-µs  90 p99-µs
BenchmarkBaselineKernelTCP/procs=1-2            10  900 ns/op  30 Gbit/s
BenchmarkBaselineKernelTCP/procs=2-2            10  900 ns/op  20 Gbit/s
BenchmarkBaselineKernelTCPRequestResponse-2     10  900 ns/op  10 p50-µs  20 p99-µs
BenchmarkBaselineNaiveNetstack/mtu=1472-2       10  900 ns/op  1.5 Gbit/s  50000 pkts/s
BenchmarkBaselineNaiveNetstack/mtu=65000-2      10  900 ns/op  2.0 Gbit/s  4000 pkts/s
BenchmarkBaselineWireguardNetstack-2            10  900 ns/op  0.5 Gbit/s
BenchmarkHub/peers=1000/spread-2                 1  900 ns/op  850 setup-ms  12.5 KiB/tunnel  2.1 Gbit/s
BenchmarkHub/peers=1000/single-2                 1  900 ns/op  850 setup-ms  12.5 KiB/tunnel  3.2 Gbit/s
PASS
`

func TestTable(t *testing.T) {
	rep, err := parse(strings.NewReader(sample))
	if err != nil || len(rep.results) != 15 {
		t.Fatalf("parse = %d results, %v; want 15", len(rep.results), err)
	}
	if m, _ := rep.results[0].median("Gbit/s"); m != 3 {
		t.Errorf("median of 2, 4, 3 = %v, want 3", m)
	}
	var b strings.Builder
	markdown(&b, rep)
	table := b.String()
	for _, want := range []string{
		"Machine: Intel(R) Xeon(R) Processor @ 2.80GHz, 2 CPUs, Linux 6.1.0, go1.26.3. Run: 2026-12-06T14:00Z, commit 5529ef8, -benchtime 3s -count 3.",
		"| × naive netstack | × wireguard-go netstack (encrypts) | × kernel |",
		// 3 runs, median 3 Gbit/s; 3/1.5 naive, 3/0.5 wireguard-go, 3/30 kernel (one process)
		"| TCPStream/transport=udp/mtu=1472 | 3 | 3.00 | | | | | 5.00 | | 2.00 | 6.00 | 0.10 |\n" +
			// right after it: 4/1.5, 4/0.5, 4/20 kernel (two processes)
			"| TCPStream/transport=udp/mtu=1472/procs=2 | 1 | 4.00 | | | | | 3.00 | | 2.67 | 8.00 | 0.20 |\n",
		"| TCPStream/transport=udp/mtu=65000 | 1 | 8.00 | | | | | 5.00 | | 4.00 | 16.00 | 0.27 |", // 8/2 naive at 65000
		"| TCPStream/transport=raw/mtu=1480 | 1 | 1.20 | | | | | 5.00 | | 0.80 | 2.40 | 0.04 |",   // naive at 1472
		"| TCPStream/transport=mem | 1 | 5.00 | | | | | 5.00 | | | 10.00 | 0.17 |",                // no MTU, no naive ratio
		"| BaselineKernelTCP/procs=2 | 1 | 20.0 | | | | | | | | 40.00 | |",
		"| BaselineNaiveNetstack/mtu=1472 | 1 | 1.50 | 50k | | | | | | | 3.00 | 0.05 |",
		"| 4.00 (p50) |", // 40/10 µs
		"| TCPStream/transport=udp/mtu=1472 | 3.00 | 4.00 | 1.33 |",
		"| TCPStream/transport=udp/mtu=65000 | 8.00 | 9.00 | 1.12 |",
		"| BaselineKernelTCP | 30.0 | 20.0 | 0.67 |",
		"| benchmark | runs | setup-ms | KiB/tunnel | Gbit/s |",
		"| Hub/peers=1000/spread | 1 | 850 | 12.5 | 2.10 |",
		"| Hub/peers=1000/single | 1 | 850 | 12.5 | 3.20 |",
	} {
		if !strings.Contains(table, want) {
			t.Errorf("table lacks %q:\n%s", want, table)
		}
	}
	if strings.Contains(table, "| Hub/peers=1000/spread | 1 | |") {
		t.Errorf("hub rows belong in the hub section only:\n%s", table)
	}

	var s strings.Builder
	svg(&s, rep)
	chart := s.String()
	// MTU 1472: ipipstack ×2, naive, wireguard-go, kernel ×2; MTU 65000:
	// the same without wireguard-go; other: raw, mem; hub: 2.
	if n := strings.Count(chart, "<rect"); n != 15 {
		t.Errorf("SVG has %d bars, want 15:\n%s", n, chart)
	}
	for _, want := range []string{
		"Inner MTU 1472 (kernel: loopback MTU 65536)",
		"Inner MTU 65000",
		"wireguard-go netstack, encrypts (MTU 1420)",
		"measured at MTU 1420 only",
		"naive gVisor netstack over UDP",
		"kernel loopback TCP, two processes",
		"Intel(R) Xeon(R) Processor @ 2.80GHz, 2 CPUs, Linux 6.1.0, go1.26.3",
		"2026-12-06T14:00Z, commit 5529ef8",
		"Hub: memory per tunnel",
		"12.5, setup 850 ms, 2.10 Gbit/s",
	} {
		if !strings.Contains(chart, want) {
			t.Errorf("SVG lacks %q:\n%s", want, chart)
		}
	}
}

// TestTableBeforeProcs reads output made before the naive baseline and the
// procs=2 cases existed: BaselineKernelTCP is the one-process kernel run,
// and the machine fields not written are said to be missing.
func TestTableBeforeProcs(t *testing.T) {
	const old = `goos: linux
BenchmarkTCPStream/transport=udp/mtu=1472-2   100  900 ns/op  3.0 Gbit/s  5 allocs/op
BenchmarkBaselineWireguardNetstack-2            10  900 ns/op  0.5 Gbit/s
BenchmarkBaselineKernelTCP-2                    10  900 ns/op  30 Gbit/s
PASS
`
	rep, err := parse(strings.NewReader(old))
	if err != nil || len(rep.results) != 3 {
		t.Fatalf("parse = %d results, %v; want 3", len(rep.results), err)
	}
	var b strings.Builder
	markdown(&b, rep)
	for _, want := range []string{
		"Machine: cpu not recorded, nproc not recorded, kernel not recorded, go not recorded. Run: date not recorded, commit commit not recorded.",
		"| TCPStream/transport=udp/mtu=1472 | 1 | 3.00 | | | | | 5.00 | | | 6.00 | 0.10 |",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
	var s strings.Builder
	svg(&s, rep)
	// ipipstack, wireguard-go and the kernel in the MTU 1472 group.
	if n := strings.Count(s.String(), "<rect"); n != 3 {
		t.Errorf("SVG has %d bars, want 3:\n%s", n, s.String())
	}
}
