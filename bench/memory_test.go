package bench

import (
	"context"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// rssBytes is the resident set size of this process, from /proc.
func rssBytes(tb testing.TB) float64 {
	tb.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		tb.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb * 1024
		}
	}
	tb.Fatal("no VmRSS in /proc/self/status")
	return 0
}

// BenchmarkIdleConnections opens conns TCP connections through a tunnel
// (both ends in this process), exchanges a few bytes on each, leaves them
// idle and reports the growth of the process's RSS and Go heap per
// connection pair. With -benchtime 1x it opens 10,000.
func BenchmarkIdleConnections(b *testing.B) {
	conns := 10000
	if b.N > 1 {
		b.Skip("run with -benchtime 1x: the figure is per 10,000 connections, not per op")
	}
	a, bb := newPair(b, pairOptions{transport: "udp", mtu: 1472})
	ln, err := bb.Listen("tcp", "10.99.0.2:6000")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	// The server keeps its connections in a slice, as an idle server
	// would, rather than a goroutine per connection, whose stack would be
	// counted as the tunnel's.
	accepted := make(chan struct{}, conns)
	var (
		mu     sync.Mutex
		served []interface{ Close() error }
	)
	go func() {
		buf := make([]byte, 1)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if _, err := c.Read(buf); err == nil {
				c.Write(buf)
			}
			mu.Lock()
			served = append(served, c)
			mu.Unlock()
			accepted <- struct{}{}
		}
	}()
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range served {
			c.Close()
		}
	}()
	runtime.GC()
	debug.FreeOSMemory()
	var m0 runtime.MemStats
	runtime.ReadMemStats(&m0)
	rss0 := rssBytes(b)
	b.ResetTimer()
	open := make([]interface{ Close() error }, 0, conns)
	buf := []byte{1}
	for i := 0; i < conns; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		c, err := a.DialContext(ctx, "tcp", "10.99.0.2:6000")
		cancel()
		if err != nil {
			b.Fatalf("connection %d: %v", i, err)
		}
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
		if _, err := c.Read(buf); err != nil {
			b.Fatal(err)
		}
		open = append(open, c)
	}
	for range conns {
		<-accepted
	}
	b.StopTimer()
	runtime.GC()
	var m1 runtime.MemStats
	runtime.ReadMemStats(&m1)
	rss1 := rssBytes(b)
	b.ReportMetric((rss1-rss0)/(1<<20), "RSS-MiB/10k-conns")
	b.ReportMetric(float64(m1.HeapInuse-m0.HeapInuse)/(1<<20), "heap-MiB/10k-conns")
	b.ReportMetric((rss1-rss0)/float64(conns)/1024, "RSS-KiB/conn")
	for _, c := range open {
		c.Close()
	}
}
