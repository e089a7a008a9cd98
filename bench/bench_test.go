// Package bench measures ipipstack end to end: throughput, packet rate and
// latency between two stacks, beside baselines in the same run: the
// kernel's TCP over loopback, wireguard-go's netstack (which encrypts every
// packet) and a naive gVisor-over-UDP netstack (naive_test.go, no crypto,
// one syscall per packet). Both stacks run in one process unless the name
// says procs=2: then the receiver is this binary re-executed as a second
// process (procs_test.go).
//
//	go test -run '^$' -bench . -benchmem ./bench/
//
// `make test` runs every benchmark once (-benchtime 1x), so that a broken
// benchmark fails CI.
package bench

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/endpoint/endpointtest"
	"github.com/ipipstack/ipipstack/stack"
)

var (
	innerA = netip.MustParsePrefix("10.99.0.1/24")
	innerB = netip.MustParsePrefix("10.99.0.2/24")
)

// pairOptions say how the two stacks of a benchmark are joined.
type pairOptions struct {
	transport string // "udp", "udp6" (outer IPv6), "raw" or "mem"
	mtu       int    // inner MTU; 0 derives it
}

func (o pairOptions) String() string {
	if o.mtu == 0 {
		return "transport=" + o.transport
	}
	return fmt.Sprintf("transport=%s/mtu=%d", o.transport, o.mtu)
}

func freePort(tb testing.TB) netip.AddrPort { return freePortOn(tb, "127.0.0.1") }

func freePortOn(tb testing.TB, host string) netip.AddrPort {
	tb.Helper()
	c, err := net.ListenPacket("udp", net.JoinHostPort(host, "0"))
	if err != nil {
		tb.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).AddrPort()
}

// newPair starts two stacks joined as o says; they close at cleanup.
func newPair(tb testing.TB, o pairOptions) (a, b *stack.Stack) {
	tb.Helper()
	ta := stack.Tunnel{Name: "a", Addresses: []netip.Prefix{innerA}, MTU: o.mtu}
	tbb := stack.Tunnel{Name: "b", Addresses: []netip.Prefix{innerB}, MTU: o.mtu}
	switch o.transport {
	case "udp":
		ta.Local, tbb.Local = freePort(tb), freePort(tb)
	case "udp6":
		ta.Local, tbb.Local = freePortOn(tb, "::1"), freePortOn(tb, "::1")
	case "raw":
		if os.Geteuid() != 0 {
			if os.Getenv("IPIPSTACK_PRIVILEGED") == "1" {
				tb.Fatal("transport=raw needs root (IPIPSTACK_PRIVILEGED=1 is set)")
			}
			tb.Skip("transport=raw needs root for raw sockets")
		}
		// Two loopback addresses: each raw socket receives what is sent
		// to its own.
		ta.Transport, tbb.Transport = stack.Raw, stack.Raw
		ta.Local, tbb.Local = netip.MustParseAddrPort("127.0.0.1:0"), netip.MustParseAddrPort("127.0.0.2:0")
	case "mem":
		ta.Local, tbb.Local = netip.MustParseAddrPort("192.0.2.1:4700"), netip.MustParseAddrPort("192.0.2.2:4700")
		// Loopback UDP's offloads, without the kernel: the stack's ceiling.
		ta.Conn, tbb.Conn = endpointtest.OffloadPipe(ta.Local, tbb.Local, 0)
	default:
		tb.Fatalf("unknown transport %q", o.transport)
	}
	ta.Remote, tbb.Remote = tbb.Local, ta.Local
	// IPIPSTACK_BENCH_OFFLOADS=off measures the path without GSO and GRO,
	// under the same benchmark names, for benchstat comparisons.
	if os.Getenv("IPIPSTACK_BENCH_OFFLOADS") == "off" {
		ta.DisableGSO, ta.DisableGRO = true, true
		tbb.DisableGSO, tbb.DisableGRO = true, true
	}
	var err error
	if a, err = stack.New(stack.Config{Tunnels: []stack.Tunnel{ta}}); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { a.Close() })
	if b, err = stack.New(stack.Config{Tunnels: []stack.Tunnel{tbb}}); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { b.Close() })
	return a, b
}

// dialer is what the stream benchmarks need of a network: the stacks, the
// kernel and wireguard-go's netstack all provide it.
type dialer interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}

type listener interface {
	Listen(network, address string) (net.Listener, error)
}

// streamBench moves b.N chunks of 128 KiB over `streams` TCP connections
// from `from` to a listener on `to` and reports Gbit/s.
func streamBench(b *testing.B, from dialer, to listener, addr string, streams int, pkts func() uint64) {
	const chunk = 128 << 10
	ln, err := to.Listen("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	var recv sync.WaitGroup
	total := make([]int64, streams)
	conns := make([]net.Conn, streams)
	for i := range streams {
		recv.Add(1)
		accepted := make(chan net.Conn, 1)
		go func() {
			defer recv.Done()
			c, err := ln.Accept()
			if err != nil {
				accepted <- nil
				return
			}
			accepted <- c
			defer c.Close()
			total[i], _ = io.Copy(io.Discard, c)
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		c, err := from.DialContext(ctx, "tcp", ln.Addr().String())
		cancel()
		if err != nil {
			b.Fatal(err)
		}
		conns[i] = c
		if <-accepted == nil {
			b.Fatal("accept failed")
		}
	}
	buf := make([]byte, chunk)
	b.SetBytes(chunk)
	b.ReportAllocs()
	var p0 uint64
	if pkts != nil {
		p0 = pkts()
	}
	b.ResetTimer()
	start := time.Now()
	var send sync.WaitGroup
	for i, c := range conns {
		n := b.N / streams
		if i < b.N%streams {
			n++
		}
		send.Add(1)
		go func() {
			defer send.Done()
			for range n {
				if _, err := c.Write(buf); err != nil {
					b.Error(err)
					return
				}
			}
			c.Close()
		}()
	}
	send.Wait()
	recv.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	var got int64
	for _, n := range total {
		got += n
	}
	if want := int64(b.N) * chunk; got != want {
		b.Fatalf("received %d bytes, sent %d", got, want)
	}
	b.ReportMetric(float64(got)*8/elapsed.Seconds()/1e9, "Gbit/s")
	if pkts != nil {
		b.ReportMetric(float64(pkts()-p0)/elapsed.Seconds(), "pkts/s")
	}
}

func txPackets(s *stack.Stack) func() uint64 {
	return func() uint64 { return s.Stats()[0].TxPackets }
}

func BenchmarkTCPStream(b *testing.B) {
	for _, o := range []pairOptions{
		{transport: "udp", mtu: 1472},
		{transport: "udp", mtu: 65000},
		{transport: "udp6", mtu: 1452},
		{transport: "raw", mtu: 1480},
		{transport: "mem"},
	} {
		b.Run(o.String(), func(b *testing.B) {
			a, bb := newPair(b, o)
			streamBench(b, a, bb, "10.99.0.2:5001", 1, txPackets(a))
		})
	}
	// The same stream with the receiving stack in a second process
	// (procs_test.go), beside the one-process figures above.
	for _, mtu := range []int{1472, 65000} {
		b.Run(fmt.Sprintf("transport=udp/mtu=%d/procs=2", mtu), func(b *testing.B) {
			tunnelStreamTwoProcs(b, mtu)
		})
	}
}

func BenchmarkTCPStreams4(b *testing.B) {
	a, bb := newPair(b, pairOptions{transport: "udp", mtu: 1472})
	streamBench(b, a, bb, "10.99.0.2:5001", 4, txPackets(a))
}

// BenchmarkUDPRate sends b.N inner UDP datagrams as fast as the sender can
// and reports how many per second arrived, and the share lost.
func BenchmarkUDPRate(b *testing.B) {
	for _, size := range []int{64, 1400} {
		b.Run(fmt.Sprintf("size=%d", size), func(b *testing.B) {
			a, bb := newPair(b, pairOptions{transport: "udp", mtu: 1472})
			pc, err := bb.ListenPacket("udp4", "10.99.0.2:9000")
			if err != nil {
				b.Fatal(err)
			}
			defer pc.Close()
			c, err := a.Dial("udp4", "10.99.0.2:9000")
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			// The reader arms no deadline per datagram (a timer reset
			// per read costs as much as the read): once the sender is
			// done, it is stopped by closing pc when nothing more
			// arrives for 300 ms.
			var got atomic.Int64
			done := make(chan struct{})
			go func() {
				defer close(done)
				buf := make([]byte, 2048)
				for {
					if _, _, err := pc.ReadFrom(buf); err != nil {
						return
					}
					got.Add(1)
				}
			}()
			msg := make([]byte, size)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			// gVisor's gonet.UDPConn.WriteTo registers for "writable"
			// only after a write found the send buffer full, so a
			// wakeup in between is lost and the write waits forever; a
			// deadline turns that rare hang into an error.
			c.SetWriteDeadline(time.Now().Add(time.Duration(b.N)*20*time.Microsecond + 10*time.Second))
			for i := range b.N {
				binary.BigEndian.PutUint32(msg, uint32(i))
				if _, err := c.Write(msg); err != nil {
					b.Fatalf("datagram %d of %d: %v", i, b.N, err)
				}
			}
			sendTime := time.Since(start)
			for last := int64(-1); ; {
				n := got.Load()
				if n == last || n == int64(b.N) {
					break
				}
				last = n
				time.Sleep(300 * time.Millisecond)
			}
			pc.Close()
			<-done
			b.StopTimer()
			n := int(got.Load())
			b.ReportMetric(float64(n)/sendTime.Seconds(), "pkts/s")
			b.ReportMetric(100*float64(b.N-n)/float64(b.N), "%lost")
		})
	}
}

// rrBench measures 64-byte request/response round trips over one
// connection and reports the median and 99th percentile.
func rrBench(b *testing.B, from dialer, to listener, addr string) {
	ln, err := to.Listen("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 64)
		for {
			if _, err := io.ReadFull(c, buf); err != nil {
				return
			}
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	}()
	c, err := from.DialContext(context.Background(), "tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 64)
	lat := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds())/1e3, "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds())/1e3, "p99-µs")
}

func BenchmarkTCPRequestResponse(b *testing.B) {
	a, bb := newPair(b, pairOptions{transport: "udp", mtu: 1472})
	rrBench(b, a, bb, "10.99.0.2:5002")
}

// hostNet is the kernel's loopback, for the baselines.
type hostNet struct{}

func (hostNet) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, network, address)
}

func (hostNet) Listen(network, address string) (net.Listener, error) {
	return net.Listen(network, address)
}

// BenchmarkBaselineKernelTCP is the kernel's loopback TCP with both ends
// in this process (procs=1) and with the receiver in a second process
// (procs=2, procs_test.go), the kernel's figures for TCPStream's two cases.
func BenchmarkBaselineKernelTCP(b *testing.B) {
	b.Run("procs=1", func(b *testing.B) {
		streamBench(b, hostNet{}, hostNet{}, "127.0.0.1:0", 1, nil)
	})
	b.Run("procs=2", func(b *testing.B) {
		streamToPeer(b, hostNet{}, startPeer(b, "kernel"), nil)
	})
}

func BenchmarkBaselineKernelTCPRequestResponse(b *testing.B) {
	rrBench(b, hostNet{}, hostNet{}, "127.0.0.1:0")
}
