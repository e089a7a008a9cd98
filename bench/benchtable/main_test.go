package main

import (
	"strings"
	"testing"
)

const sample = `goos: linux
BenchmarkTCPStream/transport=udp/mtu=1472-2   100  900 ns/op  2.0 Gbit/s  5 allocs/op
BenchmarkTCPStream/transport=udp/mtu=1472-2   100  900 ns/op  4.0 Gbit/s  5 allocs/op
BenchmarkTCPStream/transport=udp/mtu=1472-2   100  900 ns/op  3.0 Gbit/s  5 allocs/op
BenchmarkBaselineWireguardNetstack-2            10  900 ns/op  0.5 Gbit/s
BenchmarkBaselineKernelTCP-2                    10  900 ns/op  30 Gbit/s
BenchmarkTCPRequestResponse-2                   10  900 ns/op  40 p50-µs  90 p99-µs
BenchmarkBaselineKernelTCPRequestResponse-2     10  900 ns/op  10 p50-µs  20 p99-µs
PASS
`

func TestTable(t *testing.T) {
	rs, err := parse(strings.NewReader(sample))
	if err != nil || len(rs) != 5 {
		t.Fatalf("parse = %d results, %v", len(rs), err)
	}
	if m, _ := rs[0].median("Gbit/s"); m != 3 {
		t.Errorf("median of 2, 4, 3 = %v, want 3", m)
	}
	var b strings.Builder
	markdown(&b, rs)
	for _, want := range []string{
		"| TCPStream/transport=udp/mtu=1472 | 3 | 3.00 |", // 3 runs, median 3 Gbit/s
		"| 6.00 | 0.10 |", // 3/0.5 and 3/30
		"| 4.00 (p50) |",  // 40/10 µs
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
	var s strings.Builder
	svg(&s, rs)
	if n := strings.Count(s.String(), "<rect"); n != 3 {
		t.Errorf("SVG has %d bars, want 3 (one per Gbit/s benchmark)", n)
	}
}
