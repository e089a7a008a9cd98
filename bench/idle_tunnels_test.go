package bench

import (
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/endpoint"
	"github.com/ipipstack/ipipstack/endpoint/endpointtest"
	"github.com/ipipstack/ipipstack/stack"
)

// idleTunnels returns n tunnels over in-memory pipes of one datagram each
// way, so that what is measured is the stack's cost per tunnel and not a
// socket's (sockets are shared between tunnels). Tunnel i has address
// 10.(i/64).(4*(i%64)+1)/30; the far ends of the pipes are returned, to
// keep them alive.
func idleTunnels(n int) ([]stack.Tunnel, []endpoint.Transport) {
	tuns := make([]stack.Tunnel, n)
	far := make([]endpoint.Transport, n)
	for i := range n {
		local := netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, 1}), uint16(10000+i))
		remote := netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, 2}), uint16(10000+i))
		conn, peer := endpointtest.Pipe(local, remote, 1)
		addr := netip.AddrFrom4([4]byte{10, byte(i / 64), byte(4*(i%64) + 1), 0})
		tuns[i] = stack.Tunnel{
			Name: fmt.Sprintf("t%d", i), Local: local, Remote: remote, Conn: conn,
			Addresses: []netip.Prefix{netip.PrefixFrom(addr, 30)},
		}
		far[i] = peer
	}
	return tuns, far
}

// settle collects garbage and returns freed memory to the OS, so that
// RSS shows what is live.
func settle() {
	runtime.GC()
	debug.FreeOSMemory()
}

// BenchmarkIdleTunnels brings up a stack of n idle tunnels (see
// idleTunnels) and reports what each costs: KiB/tunnel of RSS growth and
// heap-KiB/tunnel of live heap growth (both after a GC),
// goroutines/tunnel, and setup-ms, the time stack.New took. Run it with
// -benchtime 1x; -v also logs the new goroutines by the function that
// started them, and IPIPSTACK_BENCH_HEAPPROFILE=file writes a profile of
// the live heap with the tunnels up.
func BenchmarkIdleTunnels(b *testing.B) {
	for _, n := range []int{1000} {
		b.Run(fmt.Sprintf("n=%d", n), func(b *testing.B) {
			if b.N > 1 {
				b.Skip("run with -benchtime 1x: the figures are per tunnel, not per op")
			}
			tuns, far := idleTunnels(n)
			defer func() {
				for _, f := range far {
					f.Close()
				}
			}()
			settle()
			var m0, m1 runtime.MemStats
			runtime.ReadMemStats(&m0)
			rss0, g0 := rssBytes(b), runtime.NumGoroutine()
			before := goroutineCreators()
			b.ResetTimer()
			t0 := time.Now()
			s, err := stack.New(stack.Config{Tunnels: tuns})
			if err != nil {
				b.Fatal(err)
			}
			setup := time.Since(t0)
			b.StopTimer()
			defer s.Close()
			settle()
			runtime.ReadMemStats(&m1)
			rss1, g1 := rssBytes(b), runtime.NumGoroutine()
			if path := os.Getenv("IPIPSTACK_BENCH_HEAPPROFILE"); path != "" {
				writeHeapProfile(b, path)
			}
			b.ReportMetric(float64(setup.Microseconds())/1000, "setup-ms")
			b.ReportMetric((rss1-rss0)/1024/float64(n), "KiB/tunnel")
			b.ReportMetric(float64(int64(m1.HeapInuse)-int64(m0.HeapInuse))/1024/float64(n), "heap-KiB/tunnel")
			b.ReportMetric(float64(g1-g0)/float64(n), "goroutines/tunnel")
			if testing.Verbose() {
				after := goroutineCreators()
				var lines []string
				for fn, c := range after {
					if d := c - before[fn]; d != 0 {
						lines = append(lines, fmt.Sprintf("%6d  %s", d, fn))
					}
				}
				sort.Strings(lines)
				b.Logf("new goroutines by creator:\n%s", strings.Join(lines, "\n"))
			}
			runtime.KeepAlive(far)
		})
	}
}

// writeHeapProfile writes the live heap's profile to path, for
// `go tool pprof -sample_index=inuse_space`.
func writeHeapProfile(tb testing.TB, path string) {
	f, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	if err := pprof.WriteHeapProfile(f); err != nil {
		tb.Fatal(err)
	}
}

// goroutineCreators counts the process's goroutines by the function that
// started them (the "created by" line of their stack).
func goroutineCreators() map[string]int {
	buf := make([]byte, 64<<20)
	buf = buf[:runtime.Stack(buf, true)]
	out := map[string]int{}
	for _, g := range strings.Split(string(buf), "\n\n") {
		fn := "(main)"
		if i := strings.Index(g, "created by "); i >= 0 {
			fn = strings.Fields(g[i+len("created by "):])[0]
		}
		out[fn]++
	}
	return out
}
