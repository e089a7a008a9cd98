// Command soak runs two stacks joined by an impaired loopback UDP tunnel
// for a long time under mixed traffic and reports, every interval, what
// went through and what it cost. It is not part of CI:
//
//	go run ./soak -duration 10m
//
// Traffic: two TCP streams (one each way) whose every 1 MiB chunk is
// checked with SHA-256 against the pseudo-random bytes the sender wrote, a
// UDP request/response loop and a ping loop. Each interval prints the
// elapsed time, TCP goodput, the UDP round-trip median, pings answered and
// failed, the tunnels' drops by reason (non-zero ones, since the start),
// the resident set size and the goroutine count.
//
// It exits with status 1 if any integrity check failed: a TCP chunk or a
// UDP reply that differs from what was sent, or a TCP stream that broke.
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ipipstack/ipipstack/endpoint"
	"github.com/ipipstack/ipipstack/endpoint/encap"
	"github.com/ipipstack/ipipstack/endpoint/impair"
	"github.com/ipipstack/ipipstack/stack"
)

const chunkSize = 1 << 20

var (
	addrA = netip.MustParsePrefix("10.99.0.1/30")
	addrB = netip.MustParsePrefix("10.99.0.2/30")
)

func main() {
	var (
		duration  = flag.Duration("duration", 10*time.Minute, "how long to run")
		interval  = flag.Duration("interval", 10*time.Second, "how often to report")
		loss      = flag.Float64("loss", 0.01, "probability that a datagram is lost, each direction")
		reorder   = flag.Float64("reorder", 0.01, "probability that a datagram is reordered")
		duplicate = flag.Float64("duplicate", 0.001, "probability that a datagram is duplicated")
		corrupt   = flag.Float64("corrupt", 0.0001, "probability that a datagram has a bit flipped")
		seed      = flag.Uint64("seed", 1, "seed of the impairments")
		minRTO    = flag.Duration("min-rto", 0, "the minimum TCP retransmission timeout; 0 leaves the stack's default (stack.TCPOptions.MinRTO, 20 ms)")
	)
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	opts := impair.Options{Loss: *loss, Reorder: *reorder, Duplicate: *duplicate, Corrupt: *corrupt, Seed: *seed}
	if err := opts.Validate(); err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(2)
	}
	ok, err := run(ctx, *duration, *interval, opts, *minRTO)
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(2)
	}
	if !ok {
		fmt.Println("FAIL: integrity checks failed")
		os.Exit(1)
	}
	fmt.Println("PASS")
}

// soak is the running state: the stacks and the counters the traffic
// loops update.
type soak struct {
	a, b   *stack.Stack
	conns  [2]*impair.Conn
	failed atomic.Bool

	tcpBytes           atomic.Uint64 // received and verified
	tcpChunks          atomic.Uint64
	tcpReconnects      atomic.Uint64
	pingOK, pingFail   atomic.Uint64
	udpOK, udpLost     atomic.Uint64
	integrityFailures  atomic.Uint64
	mu                 sync.Mutex
	rtts               []time.Duration // UDP round trips of this interval
	errLogged, errMore int
}

// fail records an integrity failure.
func (s *soak) fail(format string, args ...any) {
	s.failed.Store(true)
	s.integrityFailures.Add(1)
	s.logErr(format, args...)
}

// logErr prints an error, at most 20 of them in all.
func (s *soak) logErr(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.errLogged < 20 {
		s.errLogged++
		fmt.Printf("  ! "+format+"\n", args...)
	} else {
		s.errMore++
	}
}

func run(ctx context.Context, duration, interval time.Duration, opts impair.Options, minRTO time.Duration) (bool, error) {
	pa, err := freePort()
	if err != nil {
		return false, err
	}
	pb, err := freePort()
	if err != nil {
		return false, err
	}
	s := &soak{}
	mk := func(side int, local, remote netip.AddrPort, addr netip.Prefix) (*stack.Stack, error) {
		o := opts
		o.Seed += uint64(side) // the two directions decide independently
		return stack.New(stack.Config{TCP: stack.TCPOptions{MinRTO: minRTO}, Tunnels: []stack.Tunnel{{
			Name: fmt.Sprintf("to-%c", 'b'-side), Local: local, Remote: remote, Addresses: []netip.Prefix{addr},
			Wrap: func(tr endpoint.Transport) endpoint.Transport {
				s.conns[side] = impair.Wrap(tr, o)
				return s.conns[side]
			},
		}}})
	}
	if s.a, err = mk(0, pa, pb, addrA); err != nil {
		return false, err
	}
	defer s.a.Close()
	if s.b, err = mk(1, pb, pa, addrB); err != nil {
		return false, err
	}
	defer s.b.Close()
	fmt.Printf("soak: %v, report every %v; impairments each way: loss %g, reorder %g, duplicate %g, corrupt %g; tunnel %v <-> %v\n",
		duration, interval, opts.Loss, opts.Reorder, opts.Duplicate, opts.Corrupt, pa, pb)

	ctx, cancel := context.WithTimeout(ctx, duration)
	defer cancel()
	var wg sync.WaitGroup
	if err := s.startTCP(ctx, &wg, 0, s.a, s.b, "10.99.0.2:5001"); err != nil {
		return false, err
	}
	if err := s.startTCP(ctx, &wg, 1, s.b, s.a, "10.99.0.1:5002"); err != nil {
		return false, err
	}
	if err := s.startUDP(ctx, &wg); err != nil {
		return false, err
	}
	wg.Go(func() { s.pingLoop(ctx) })

	start := time.Now()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	last, lastBytes := start, uint64(0)
	var lastPingOK, lastPingFail uint64
	report := func(now time.Time) {
		b := s.tcpBytes.Load()
		gbits := float64(b-lastBytes) * 8 / now.Sub(last).Seconds() / 1e9
		s.mu.Lock()
		rtts := s.rtts
		s.rtts = nil
		s.mu.Unlock()
		p50 := "-"
		if len(rtts) > 0 {
			slices.Sort(rtts)
			p50 = rtts[len(rtts)/2].Round(time.Microsecond).String()
		}
		ok, fail := s.pingOK.Load(), s.pingFail.Load()
		fmt.Printf("%7s  tcp %.3f Gbit/s  udp p50 %s (%d)  ping %d ok %d fail  drops %s  rss %s  goroutines %d\n",
			now.Sub(start).Round(time.Second), gbits, p50, len(rtts), ok-lastPingOK, fail-lastPingFail,
			s.drops(), rss(), runtime.NumGoroutine())
		last, lastBytes, lastPingOK, lastPingFail = now, b, ok, fail
	}
loop:
	for {
		select {
		case now := <-tick.C:
			report(now)
		case <-ctx.Done():
			break loop
		}
	}
	if now := time.Now(); now.Sub(last) > interval/10 {
		report(now)
	}
	// Stop the traffic: closing the stacks fails every blocked call.
	s.a.Close()
	s.b.Close()
	wg.Wait()
	var im impair.Stats
	for _, c := range s.conns {
		st := c.Stats()
		im.Datagrams += st.Datagrams
		im.Lost += st.Lost
		im.Reordered += st.Reordered
		im.Duplicated += st.Duplicated
		im.Corrupted += st.Corrupted
	}
	fmt.Printf("total: %v; tcp %d MiB verified in %d chunks, %d reconnects; udp %d answered, %d lost; ping %d ok, %d failed; integrity failures %d\n",
		time.Since(start).Round(time.Second), s.tcpBytes.Load()>>20, s.tcpChunks.Load(), s.tcpReconnects.Load(),
		s.udpOK.Load(), s.udpLost.Load(), s.pingOK.Load(), s.pingFail.Load(), s.integrityFailures.Load())
	fmt.Printf("impairments: %d datagrams, %d lost, %d reordered, %d duplicated, %d corrupted\n",
		im.Datagrams, im.Lost, im.Reordered, im.Duplicated, im.Corrupted)
	if s.errMore > 0 {
		fmt.Printf("  (%d more errors not shown)\n", s.errMore)
	}
	return !s.failed.Load(), nil
}

// drops formats both tunnels' non-zero drop counters.
func (s *soak) drops() string {
	var parts []string
	for _, st := range []*stack.Stack{s.a, s.b} {
		for _, ts := range st.Stats() {
			for r, v := range ts.Drops {
				if v != 0 {
					parts = append(parts, fmt.Sprintf("%s:%s=%d", ts.Name, encap.Reason(r), v))
				}
			}
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, " ")
}

// startTCP runs stream id: from dials to's listener and writes 1 MiB
// chunks of a pseudo-random stream seeded by id; the receiver checks each
// chunk's SHA-256 against the same stream's. A broken connection counts as
// a failure, and the stream starts again on a new one.
func (s *soak) startTCP(ctx context.Context, wg *sync.WaitGroup, id int, from, to *stack.Stack, addr string) error {
	ln, err := to.Listen("tcp", addr)
	if err != nil {
		return err
	}
	wg.Go(func() {
		<-ctx.Done()
		ln.Close()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { s.receive(ctx, id, c) })
		}
	})
	wg.Go(func() {
		for gen := uint64(0); ctx.Err() == nil; gen++ {
			s.send(ctx, id, gen, from, addr)
		}
	})
	return nil
}

// chunkSource is the pseudo-random stream of one connection of stream id.
func chunkSource(id int, gen uint64) *rand.ChaCha8 {
	var seed [32]byte
	binary.BigEndian.PutUint64(seed[:], uint64(id))
	binary.BigEndian.PutUint64(seed[8:], gen)
	return rand.NewChaCha8(seed)
}

func (s *soak) send(ctx context.Context, id int, gen uint64, from *stack.Stack, addr string) {
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	c, err := from.DialContext(dctx, "tcp", addr)
	cancel()
	if err != nil {
		if ctx.Err() == nil {
			s.logErr("tcp %d: dial: %v", id, err)
			time.Sleep(time.Second)
		}
		return
	}
	defer c.Close()
	stopWatch := context.AfterFunc(ctx, func() { c.Close() })
	defer stopWatch()
	// The first 16 bytes say which stream and connection follows.
	var hdr [16]byte
	binary.BigEndian.PutUint64(hdr[:], uint64(id))
	binary.BigEndian.PutUint64(hdr[8:], gen)
	if _, err := c.Write(hdr[:]); err != nil {
		s.streamError(ctx, id, "write", err)
		return
	}
	src := chunkSource(id, gen)
	buf := make([]byte, chunkSize)
	for ctx.Err() == nil {
		src.Read(buf)
		c.SetWriteDeadline(time.Now().Add(60 * time.Second))
		if _, err := c.Write(buf); err != nil {
			s.streamError(ctx, id, "write", err)
			return
		}
	}
}

func (s *soak) receive(ctx context.Context, id int, c net.Conn) {
	defer c.Close()
	stopWatch := context.AfterFunc(ctx, func() { c.Close() })
	defer stopWatch()
	var hdr [16]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		s.streamError(ctx, id, "read header", err)
		return
	}
	if got := int(binary.BigEndian.Uint64(hdr[:])); got != id {
		s.fail("tcp %d: header names stream %d", id, got)
		return
	}
	src := chunkSource(id, binary.BigEndian.Uint64(hdr[8:]))
	got, want := make([]byte, chunkSize), make([]byte, chunkSize)
	for n := 0; ; n++ {
		c.SetReadDeadline(time.Now().Add(60 * time.Second))
		if _, err := io.ReadFull(c, got); err != nil {
			s.streamError(ctx, id, "read", err)
			return
		}
		src.Read(want)
		if sha256.Sum256(got) != sha256.Sum256(want) {
			s.fail("tcp %d: chunk %d: SHA-256 mismatch", id, n)
			return
		}
		s.tcpBytes.Add(chunkSize)
		s.tcpChunks.Add(1)
	}
}

// streamError records a broken TCP stream, unless the soak is ending.
func (s *soak) streamError(ctx context.Context, id int, op string, err error) {
	if ctx.Err() != nil {
		return
	}
	s.tcpReconnects.Add(1)
	s.fail("tcp %d: %s: %v", id, op, err)
}

// startUDP runs an echo server on b and a request/response loop from a:
// each request carries a sequence number and 256 pseudo-random bytes and
// waits up to 250 ms for its echo; later echoes of earlier requests (delayed
// or duplicated) are skipped.
func (s *soak) startUDP(ctx context.Context, wg *sync.WaitGroup) error {
	srv, err := s.b.ListenPacket("udp", "10.99.0.2:7")
	if err != nil {
		return err
	}
	cl, err := s.a.Dial("udp", "10.99.0.2:7")
	if err != nil {
		srv.Close()
		return err
	}
	wg.Go(func() {
		<-ctx.Done()
		srv.Close()
		cl.Close()
	})
	wg.Go(func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := srv.ReadFrom(buf)
			if err != nil {
				return
			}
			srv.WriteTo(buf[:n], from)
		}
	})
	wg.Go(func() {
		rng := rand.New(rand.NewPCG(7, 7))
		req, resp := make([]byte, 8+256), make([]byte, 2048)
		for seq := uint64(1); ctx.Err() == nil; seq++ {
			binary.BigEndian.PutUint64(req, seq)
			for i := 8; i < len(req); i++ {
				req[i] = byte(rng.Uint32())
			}
			t0 := time.Now()
			if _, err := cl.Write(req); err != nil {
				if ctx.Err() == nil {
					s.logErr("udp: write: %v", err)
					time.Sleep(100 * time.Millisecond)
				}
				continue
			}
			cl.SetReadDeadline(t0.Add(250 * time.Millisecond))
			for {
				n, err := cl.Read(resp)
				if err != nil {
					if ctx.Err() == nil {
						s.udpLost.Add(1)
					}
					break
				}
				if n < 8 || binary.BigEndian.Uint64(resp) != seq {
					continue // an echo of an earlier request
				}
				if !bytes.Equal(resp[:n], req) {
					s.fail("udp: echo of request %d differs from it", seq)
					break
				}
				s.udpOK.Add(1)
				s.mu.Lock()
				s.rtts = append(s.rtts, time.Since(t0))
				s.mu.Unlock()
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
	})
	return nil
}

// pingLoop pings b from a five times a second, each ping given 1 s.
func (s *soak) pingLoop(ctx context.Context) {
	for ctx.Err() == nil {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := s.a.Ping(pctx, addrB.Addr())
		cancel()
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			s.pingFail.Add(1)
		default:
			s.pingOK.Add(1)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// rss returns the process's resident set size from /proc/self/status.
func rss() string {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return "?"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			return strings.Join(strings.Fields(v), " ")
		}
	}
	return "?"
}

// freePort returns a loopback UDP port that was free a moment ago.
func freePort() (netip.AddrPort, error) {
	c, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		return netip.AddrPort{}, err
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).AddrPort(), nil
}
