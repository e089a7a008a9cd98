package bench

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/stack"
)

// BenchmarkHub is a hub of many UDP tunnels on one local port (issue 14):
// one stack whose tunnels all share the socket of 127.0.0.1:port. Under
// peers=1000 it reports, for both sub-benchmarks:
//   - setup-ms: how long stack.New takes to bring the 1,000 tunnels up;
//   - KiB/tunnel: the growth of the process's RSS (VmRSS, after a GC)
//     from before New to after it, per tunnel, with every tunnel idle;
//
// and Gbit/s of 100 TCP flows from peers into the hub: "spread" carries
// them over 100 tunnels, one flow each, from a peer stack with a tunnel
// (and socket) per peer; "single" carries all 100 over one tunnel from a
// peer stack with one tunnel. The same hub serves both. Each flow moves
// 512 KiB per b.N; -benchtime 1x runs in a few seconds.
func BenchmarkHub(b *testing.B) {
	b.Run("peers=1000", func(b *testing.B) { hubBench(b, 1000, 100) })
}

func hubInnerAddr(i, host int) netip.Prefix {
	a := netip.AddrFrom4([4]byte{10, 200, byte(i * 4 / 256), byte(i*4%256 + host)})
	return netip.PrefixFrom(a, 30)
}

func hubBench(b *testing.B, peers, flows int) {
	hubPort := freePort(b)
	// The spread peers: one stack, a tunnel with a socket of its own per
	// peer (port 0), to hub tunnels 0..flows-1.
	var spreadTunnels []stack.Tunnel
	for i := range flows {
		spreadTunnels = append(spreadTunnels, stack.Tunnel{Name: fmt.Sprintf("h%d", i),
			Local: netip.MustParseAddrPort("127.0.0.1:0"), Remote: hubPort, Addresses: []netip.Prefix{hubInnerAddr(i, 2)}})
	}
	spread, err := stack.New(stack.Config{Tunnels: spreadTunnels})
	if err != nil {
		b.Fatal(err)
	}
	defer spread.Close()
	// The single peer: one tunnel, to hub tunnel `flows`.
	single, err := stack.New(stack.Config{Tunnels: []stack.Tunnel{{Name: "hub",
		Local: netip.MustParseAddrPort("127.0.0.1:0"), Remote: hubPort, Addresses: []netip.Prefix{hubInnerAddr(flows, 2)}}}})
	if err != nil {
		b.Fatal(err)
	}
	defer single.Close()

	tunnels := make([]stack.Tunnel, peers)
	for i := range tunnels {
		// Idle tunnels' peers on 127.0.0.3, which sends nothing.
		remote := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.3"), uint16(1024+i))
		switch {
		case i < flows:
			remote, _ = spread.LocalAddr(fmt.Sprintf("h%d", i))
		case i == flows:
			remote, _ = single.LocalAddr("hub")
		}
		tunnels[i] = stack.Tunnel{Name: fmt.Sprintf("p%d", i), Local: hubPort, Remote: remote,
			Addresses: []netip.Prefix{hubInnerAddr(i, 1)}}
	}
	runtime.GC()
	rss0 := rssBytes(b)
	start := time.Now()
	hub, err := stack.New(stack.Config{Tunnels: tunnels})
	if err != nil {
		b.Fatal(err)
	}
	setup := time.Since(start)
	defer hub.Close()
	runtime.GC()
	perTunnel := (rssBytes(b) - rss0) / float64(peers) / 1024
	if ss := hub.SocketStats(); len(ss) != 1 || ss[0].Tunnels != peers {
		b.Fatalf("hub sockets %+v, want one shared by %d tunnels", ss, peers)
	}

	ln, err := hub.Listen("tcp4", "0.0.0.0:9000")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	var received sync.WaitGroup
	var mu sync.Mutex
	var got int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer received.Done()
				defer c.Close()
				n, _ := io.Copy(io.Discard, c)
				mu.Lock()
				got += n
				mu.Unlock()
			}()
		}
	}()

	run := func(b *testing.B, from *stack.Stack, dst func(flow int) netip.Addr) {
		const chunk = 128 << 10
		perFlow := 4 * b.N // chunks
		conns := make([]net.Conn, flows)
		for i := range conns {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			c, err := from.DialContext(ctx, "tcp4", netip.AddrPortFrom(dst(i), 9000).String())
			cancel()
			if err != nil {
				b.Fatalf("flow %d: %v", i, err)
			}
			conns[i] = c
		}
		mu.Lock()
		got = 0
		mu.Unlock()
		received.Add(flows)
		buf := make([]byte, chunk)
		b.ResetTimer()
		t0 := time.Now()
		var send sync.WaitGroup
		for _, c := range conns {
			send.Add(1)
			go func() {
				defer send.Done()
				defer c.Close()
				for range perFlow {
					if _, err := c.Write(buf); err != nil {
						b.Error(err)
						return
					}
				}
			}()
		}
		send.Wait()
		received.Wait()
		elapsed := time.Since(t0)
		b.StopTimer()
		mu.Lock()
		total := got
		mu.Unlock()
		if want := int64(flows * perFlow * chunk); total != want {
			b.Fatalf("hub received %d bytes, sent %d", total, want)
		}
		b.ReportMetric(float64(setup.Milliseconds()), "setup-ms")
		b.ReportMetric(perTunnel, "KiB/tunnel")
		b.ReportMetric(float64(total)*8/elapsed.Seconds()/1e9, "Gbit/s")
	}
	b.Run("spread", func(b *testing.B) {
		run(b, spread, func(i int) netip.Addr { return hubInnerAddr(i, 1).Addr() })
	})
	b.Run("single", func(b *testing.B) {
		run(b, single, func(int) netip.Addr { return hubInnerAddr(flows, 1).Addr() })
	})
}
