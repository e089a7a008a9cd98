//go:build linux

package stack_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/endpoint/encap"
	"github.com/ipipstack/ipipstack/stack"
	"golang.org/x/net/ipv4"
)

// This file checks that the stack's resources stay bounded under abuse:
// reassembly memory under a fragment flood, goroutines and descriptors
// across many connections, and a peer that restarts mid-transfer.

// firstFragment is an IPv4 first fragment (MF set, offset 0) src -> dst of
// protocol proto and identification id, carrying size bytes (a multiple of
// 8) of a datagram that never completes.
func firstFragment(src, dst netip.Addr, proto uint8, id uint16, size int) []byte {
	p := make([]byte, 20+size)
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	binary.BigEndian.PutUint16(p[4:], id)
	p[6] = 0x20 // MF
	p[8], p[9] = 64, proto
	s4, d4 := src.As4(), dst.As4()
	copy(p[12:], s4[:])
	copy(p[16:], d4[:])
	binary.BigEndian.PutUint16(p[10:], checksum(p[:20], 0))
	for i := 20; i < len(p); i++ {
		p[i] = byte(i)
	}
	return p
}

// setID rewrites the identification and protocol of a firstFragment and
// fixes its header checksum.
func setID(p []byte, proto uint8, id uint16) {
	binary.BigEndian.PutUint16(p[4:], id)
	p[9] = proto
	p[10], p[11] = 0, 0
	binary.BigEndian.PutUint16(p[10:], checksum(p[:20], 0))
}

// floodCounter counts the datagrams a stack's tunnel has read since base.
type floodCounter struct {
	ep   *stack.Stack
	base uint64
}

func (f floodCounter) RxPackets() uint64 {
	st := f.ep.Stats()[0]
	return st.RxPackets + st.DropTotal() - f.base
}

// heapInuse returns HeapInuse after a full collection.
func heapInuse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// udpRcvbufErrors returns the host's UDP receive buffer overflow count
// (/proc/net/snmp, all sockets), or 0 if it cannot be read.
func udpRcvbufErrors() uint64 {
	b, err := os.ReadFile("/proc/net/snmp")
	if err != nil {
		return 0
	}
	var names []string
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, "Udp:") {
			continue
		}
		if names == nil {
			names = strings.Fields(line)
			continue
		}
		vals := strings.Fields(line)
		for i, n := range names {
			if n == "RcvbufErrors" && i < len(vals) {
				v, _ := strconv.ParseUint(vals[i], 10, 64)
				return v
			}
		}
	}
	return 0
}

// TestFragmentFlood floods stack a with 100,000 IPv4 first fragments that
// never complete, sent from a real loopback UDP socket as FOU datagrams to
// a's tunnel port (a accepts its peer's address on any source port), while
// an 8 MiB TCP transfer from b to a runs through the same socket. The
// transfer must arrive byte-exact and the Go heap must stay bounded.
//
// The stack keeps gVisor's default reassembly limits (Config's are zero):
// above fragmentation.HighFragThreshold (4 MiB) of pending fragments it
// evicts the oldest reassemblies down to LowFragThreshold (3 MiB), like
// Linux's ipfrag_high_thresh / ipfrag_low_thresh, and drops what is left
// after ipv4.ReassembleTimeout (30 s). gVisor counts neither eviction, so
// the test reports how many fragments reached its IP layer.
func TestFragmentFlood(t *testing.T) {
	const (
		fragments = 100_000
		fragSize  = 1000 // bytes of data per fragment, a multiple of 8
		transferN = 8 << 20
	)
	p := newPair(t, "127.0.0.1", func(side int, tun *stack.Tunnel) {
		if side == 0 {
			tun.AnySourcePort = true
		}
	})
	// The flood makes a's socket overflow at times, and gVisor's TCP
	// then often needs tens of retransmission timeouts to recover: at the
	// default 200 ms minimum RTO that is 10-70 s (see setMinRTO).
	setMinRTO(t, 10*time.Millisecond, p.a, p.b)
	// Warm up: the stacks' pools and goroutines exist before the baseline.
	transfer(t, p.b, p.a, "10.99.0.1:7100", 1<<20)
	heapBefore := heapInuse()
	gvBefore := p.a.GVisor().Stats()
	ipRx0, malformed0 := gvBefore.IP.PacketsReceived.Value(), gvBefore.IP.MalformedFragmentsReceived.Value()
	tcpRx0 := gvBefore.TCP.ValidSegmentsReceived.Value()
	epBefore := p.a.Stats()[0]
	rcvbuf0 := udpRcvbufErrors()
	a := floodCounter{ep: p.a, base: epBefore.RxPackets + epBefore.DropTotal()}

	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pc := ipv4.NewPacketConn(c)
	dst := net.UDPAddrFromAddrPort(p.ta.Local)

	start := time.Now()
	var (
		wg                  sync.WaitGroup
		floodErr, xferErr   error
		floodEnd, xferStart time.Time
		xferDur             time.Duration
	)
	flooding := make(chan struct{})
	wg.Go(func() {
		defer func() { floodEnd = time.Now() }()
		// IPv4 identifications are 16 bits: the first 65,536 fragments
		// are UDP, the rest ICMP, so that every reassembly key (source,
		// destination, protocol, identification) is distinct.
		const batch, ahead = 64, 1024
		msgs := make([]ipv4.Message, batch)
		for i := range msgs {
			msgs[i].Buffers = [][]byte{firstFragment(addrB.Addr(), addrA.Addr(), 17, 0, fragSize)}
			msgs[i].Addr = dst
		}
		for sent := 0; sent < fragments; {
			n := min(batch, fragments-sent)
			for i := range n {
				k := sent + i
				proto := uint8(17)
				if k >= 1<<16 {
					proto = 1
				}
				setID(msgs[i].Buffers[0], proto, uint16(k))
			}
			for off := 0; off < n; {
				w, err := pc.WriteBatch(msgs[off:n], 0)
				if err != nil {
					floodErr = err
					return
				}
				off += w
			}
			if sent == 0 {
				close(flooding)
			}
			sent += n
			// Stay at most ahead datagrams ahead of what a has read, so
			// that most of the flood reaches gVisor rather than being
			// dropped by the kernel; go on anyway if a stalls.
			for wait := time.Now(); uint64(sent) > a.RxPackets()+ahead && time.Since(wait) < time.Second; {
				time.Sleep(100 * time.Microsecond)
			}
		}
	})
	wg.Go(func() {
		<-flooding
		xferStart = time.Now()
		xferDur, xferErr = transferErr(p.b, p.a, "10.99.0.1:7101", transferN, 120*time.Second)
	})
	wg.Wait()
	if floodErr != nil {
		t.Fatalf("flood: %v", floodErr)
	}
	if xferErr != nil {
		t.Fatalf("transfer during the flood: %v", xferErr)
	}
	t.Logf("flood of %d fragments: %v; 8 MiB transfer b->a from +%v, %v (%.0f Mbit/s)",
		fragments, floodEnd.Sub(start).Round(time.Millisecond), xferStart.Sub(start).Round(time.Millisecond),
		xferDur.Round(time.Millisecond), transferN*8/xferDur.Seconds()/1e6)

	// Let a's receive loop drain what the socket still holds.
	deadline := time.Now().Add(10 * time.Second)
	last := p.a.Stats()[0].RxPackets
	for time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		now := p.a.Stats()[0].RxPackets
		if now == last {
			break
		}
		last = now
	}
	heapAfter := heapInuse()
	bt := p.b.GVisor().Stats().TCP
	t.Logf("b's TCP: %d retransmitted segments, %d retransmission timeouts", bt.Retransmits.Value(), bt.Timeouts.Value())
	gv := p.a.GVisor().Stats()
	ep := p.a.Stats()[0]
	ipRx := gv.IP.PacketsReceived.Value() - ipRx0
	tcpRx := gv.TCP.ValidSegmentsReceived.Value() - tcpRx0
	var drops []string
	for r, v := range ep.Drops {
		if d := v - epBefore.Drops[r]; d != 0 {
			drops = append(drops, fmt.Sprintf("%s=%d", encap.Reason(r), d))
		}
	}
	t.Logf("a: endpoint rx +%d datagrams, drops %v; gVisor IP packets received +%d, of which TCP segments %d, so about %d fragments (none completes, so all of them are dropped: evicted above 4 MiB or timed out); malformed fragments +%d",
		ep.RxPackets-epBefore.RxPackets, drops, ipRx, tcpRx, ipRx-min(ipRx, tcpRx), gv.IP.MalformedFragmentsReceived.Value()-malformed0)
	t.Logf("host UDP receive buffer overflows during the test: +%d (fragments and segments the kernel dropped before a read them)", udpRcvbufErrors()-rcvbuf0)
	growth := int64(heapAfter) - int64(heapBefore)
	t.Logf("heap in use: %.1f MiB before, %.1f MiB after (%+.1f MiB)", float64(heapBefore)/(1<<20), float64(heapAfter)/(1<<20), float64(growth)/(1<<20))
	if growth > 64<<20 {
		t.Errorf("heap grew by %.1f MiB under the fragment flood, want < 64 MiB", float64(growth)/(1<<20))
	}
	if ipRx-min(ipRx, tcpRx) < fragments/10 {
		t.Errorf("only about %d fragments reached gVisor: the flood did not exercise reassembly", ipRx-min(ipRx, tcpRx))
	}
}

// fdCount returns the number of open file descriptors of the process.
func fdCount(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	return len(ents)
}

// settle waits up to 10 s for the goroutine and descriptor counts to come
// back to within slack of the baseline, and reports them.
func settle(t *testing.T, goroutines, fds, slack int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	var g, f int
	for {
		g, f = runtime.NumGoroutine(), fdCount(t)
		if g <= goroutines+slack && f <= fds+slack {
			break
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("after 10 s: %d goroutines (baseline %d), %d descriptors (baseline %d), slack %d\n%s",
				g, goroutines, f, fds, slack, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("goroutines %d (baseline %d), descriptors %d (baseline %d)", g, goroutines, f, fds)
}

// TestManyConnections opens 10,000 TCP connections through the tunnel, in
// batches of 500 at once; each moves a few bytes both ways and closes.
// Afterwards the process has as many goroutines and descriptors as before.
func TestManyConnections(t *testing.T) {
	total, batch := 10_000, 500
	if testing.Short() {
		total = 2_000
	}
	p := newPair(t, "127.0.0.1", nil)
	ln, err := p.b.Listen("tcp", "10.99.0.2:7200")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var served sync.WaitGroup
	serve := func(c net.Conn) {
		defer served.Done()
		defer c.Close()
		c.SetDeadline(time.Now().Add(30 * time.Second))
		buf := make([]byte, 16)
		n, err := io.ReadFull(c, buf[:8])
		if err == nil {
			copy(buf[8:], buf[:n])
			_, err = c.Write(buf[:16])
		}
		if err == nil {
			_, err = c.Read(buf[:1]) // the client's FIN
		}
		if !errors.Is(err, io.EOF) {
			t.Errorf("server: %v, want EOF after the exchange", err)
		}
	}
	acceptDone := make(chan struct{})
	go func() {
		defer close(acceptDone)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			served.Add(1)
			go serve(c)
		}
	}()
	dial := func(i int) error {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		c, err := p.a.DialContext(ctx, "tcp", "10.99.0.2:7200")
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		var msg [8]byte
		binary.BigEndian.PutUint64(msg[:], uint64(i))
		if _, err := c.Write(msg[:]); err != nil {
			return err
		}
		var got [16]byte
		if _, err := io.ReadFull(c, got[:]); err != nil {
			return err
		}
		if [8]byte(got[:8]) != msg || [8]byte(got[8:]) != msg {
			return fmt.Errorf("echo %x, want %x twice", got, msg)
		}
		return nil
	}
	// A first batch warms up pools and gVisor's goroutines.
	run := func(from, to int) {
		var wg sync.WaitGroup
		errs := make(chan error, to-from)
		for i := from; i < to; i++ {
			wg.Go(func() {
				if err := dial(i); err != nil {
					errs <- fmt.Errorf("connection %d: %w", i, err)
				}
			})
		}
		wg.Wait()
		close(errs)
		n := 0
		for err := range errs {
			if n++; n <= 5 {
				t.Error(err)
			}
		}
		if n > 0 {
			t.Fatalf("%d of %d connections failed", n, to-from)
		}
	}
	run(0, batch)
	served.Wait()
	g0, fd0 := runtime.NumGoroutine(), fdCount(t)
	start := time.Now()
	for i := batch; i < total; i += batch {
		run(i, min(i+batch, total))
	}
	served.Wait()
	d := time.Since(start)
	t.Logf("%d connections in batches of %d: %v (%.0f connections/s)", total-batch, batch, d.Round(time.Millisecond), float64(total-batch)/d.Seconds())
	gs := p.a.GVisor().Stats().TCP
	t.Logf("a: TCP active opens %d, established resets %d, current established %d", gs.ActiveConnectionOpenings.Value(), gs.EstablishedResets.Value(), gs.CurrentEstablished.Value())
	settle(t, g0, fd0, 2)
	for _, st := range append(p.a.Stats(), p.b.Stats()...) {
		if st.DropTotal() != 0 {
			t.Errorf("%s dropped %v", st.Name, st.Drops)
		}
	}
	ln.Close()
	<-acceptDone
}

// TestPeerRestart closes stack b while a sends to it: a's writer must see
// an error or its deadline within a bound, not hang. Then b comes back on
// the same UDP port, and a new connection from a moves 1 MiB byte-exact.
func TestPeerRestart(t *testing.T) {
	p := newPair(t, "127.0.0.1", nil)
	ln, err := p.b.Listen("tcp", "10.99.0.2:7300")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		io.Copy(io.Discard, c)
		c.Close()
	}()
	c, err := p.a.Dial("tcp", "10.99.0.2:7300")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const bound = 3 * time.Second
	received := func() uint64 { return p.b.Stats()[0].RxBytes }
	writeErr := make(chan error, 1)
	var closedAt time.Time
	var mu sync.Mutex
	go func() {
		buf := make([]byte, 32<<10)
		for {
			mu.Lock()
			if !closedAt.IsZero() {
				// b is gone: from now on the writer has bound to fail.
				c.SetWriteDeadline(closedAt.Add(bound))
			}
			mu.Unlock()
			if _, err := c.Write(buf); err != nil {
				writeErr <- err
				return
			}
		}
	}()
	// Close b mid-transfer, once a few MiB have gone through.
	deadline := time.Now().Add(10 * time.Second)
	for received() < 4<<20 {
		if time.Now().After(deadline) {
			t.Fatalf("only %d bytes reached b in 10 s", received())
		}
		time.Sleep(5 * time.Millisecond)
	}
	mu.Lock()
	closedAt = time.Now()
	c.SetWriteDeadline(closedAt.Add(bound)) // for a Write already blocked
	mu.Unlock()
	p.b.Close()
	select {
	case err := <-writeErr:
		var ne net.Error
		t.Logf("a's writer, %v after b closed: %v (timeout: %v)", time.Since(closedAt).Round(time.Millisecond), err, errors.As(err, &ne) && ne.Timeout())
	case <-time.After(bound + 5*time.Second):
		t.Fatalf("a's writer still blocked %v after b closed", bound+5*time.Second)
	}
	c.Close()

	// b again, on the same port and addresses.
	b2, err := stack.New(stack.Config{Tunnels: []stack.Tunnel{p.tb}})
	if err != nil {
		t.Fatalf("restarting b on %v: %v", p.tb.Local, err)
	}
	t.Cleanup(func() { b2.Close() })
	d, err := transferErr(p.a, b2, "10.99.0.2:7301", 1<<20, 30*time.Second)
	if err != nil {
		t.Fatalf("transfer to the restarted peer: %v", err)
	}
	t.Logf("1 MiB to the restarted peer in %v", d.Round(time.Millisecond))
}
