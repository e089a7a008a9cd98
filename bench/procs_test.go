package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/stack"
)

// Two-process benchmarks: the receiving end runs in a second process, the
// benchmark binary re-executed with peerEnv set, so that sender and
// receiver do not share one Go runtime and scheduler, as two deployed
// ipipstack peers do not. On a 2-core machine each end then gets roughly a
// core of its own.
//
// The peer protocol, over the peer's stdin and stdout:
//   - peerEnv is "tunnel LOCAL REMOTE MTU" (one stack.Stack with a udp
//     tunnel from LOCAL to REMOTE, inner address innerB, as newPair builds
//     it) or "kernel" (the host's TCP on 127.0.0.1);
//   - the peer listens, prints "ready ADDRESS\n" and accepts one TCP
//     connection, reads it to EOF, writes the byte count as 8 bytes big
//     endian and waits;
//   - the peer exits when its stdin reaches EOF, so a parent that dies
//     leaves no orphan.
const peerEnv = "IPIPSTACK_BENCH_PEER"

func TestMain(m *testing.M) {
	if spec := os.Getenv(peerEnv); spec != "" {
		os.Exit(runPeer(spec))
	}
	os.Exit(m.Run())
}

// peerTunnel is the tunnel the peer process (innerB's end) builds; the
// parent builds its mirror image. The offload switch of newPair applies.
func peerTunnel(name string, addr netip.Prefix, local, remote netip.AddrPort, mtu int) stack.Tunnel {
	t := stack.Tunnel{Name: name, Addresses: []netip.Prefix{addr}, MTU: mtu, Local: local, Remote: remote}
	if os.Getenv("IPIPSTACK_BENCH_OFFLOADS") == "off" {
		t.DisableGSO, t.DisableGRO = true, true
	}
	return t
}

// runPeer is the peer process's main; it returns the exit status.
func runPeer(spec string) int {
	fail := func(format string, args ...any) int {
		fmt.Fprintf(os.Stderr, "bench peer (%s=%q): "+format+"\n", append([]any{peerEnv, spec}, args...)...)
		return 2
	}
	go func() {
		io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}()
	var ln net.Listener
	f := strings.Fields(spec)
	switch {
	case len(f) == 1 && f[0] == "kernel":
		var err error
		if ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			return fail("listen: %v", err)
		}
	case len(f) == 4 && f[0] == "tunnel":
		local, err1 := netip.ParseAddrPort(f[1])
		remote, err2 := netip.ParseAddrPort(f[2])
		mtu, err3 := strconv.Atoi(f[3])
		if err1 != nil || err2 != nil || err3 != nil {
			return fail("want \"tunnel LOCAL REMOTE MTU\"")
		}
		s, err := stack.New(stack.Config{Tunnels: []stack.Tunnel{peerTunnel("b", innerB, local, remote, mtu)}})
		if err != nil {
			return fail("%v", err)
		}
		defer s.Close()
		if ln, err = s.Listen("tcp", netip.AddrPortFrom(innerB.Addr(), 5001).String()); err != nil {
			return fail("listen: %v", err)
		}
	default:
		return fail("want \"kernel\" or \"tunnel LOCAL REMOTE MTU\"")
	}
	defer ln.Close()
	fmt.Printf("ready %s\n", ln.Addr())
	c, err := ln.Accept()
	if err != nil {
		return fail("accept: %v", err)
	}
	defer c.Close()
	n, err := io.Copy(io.Discard, c)
	if err != nil {
		return fail("read after %d bytes: %v", n, err)
	}
	if err := binary.Write(c, binary.BigEndian, uint64(n)); err != nil {
		return fail("write the count (%d): %v", n, err)
	}
	select {} // until stdin closes
}

// startPeer runs the peer process with spec and returns the address it
// listens on. The process is killed and waited for at cleanup; if the
// benchmark failed, its stderr is logged.
func startPeer(b *testing.B, spec string) string {
	b.Helper()
	exe, err := os.Executable()
	if err != nil {
		b.Fatalf("peer process: %v", err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), peerEnv+"="+spec)
	var stderr lockedBuffer
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatalf("peer process: %v", err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatalf("peer process: %v", err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatalf("peer process: start %s: %v", exe, err)
	}
	b.Cleanup(func() {
		stdin.Close()
		cmd.Process.Kill()
		cmd.Wait()
		if b.Failed() {
			b.Logf("peer process (%s=%q) stderr:\n%s", peerEnv, spec, stderr.String())
		}
	})
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(stdout).ReadString('\n')
		line <- s
		io.Copy(io.Discard, stdout)
	}()
	select {
	case s := <-line:
		addr, ok := strings.CutPrefix(strings.TrimSpace(s), "ready ")
		if !ok {
			b.Fatalf("peer process (%s=%q) did not start: printed %q; stderr: %s", peerEnv, spec, s, stderr.String())
		}
		return addr
	case <-time.After(30 * time.Second):
		b.Fatalf("peer process (%s=%q) not ready after 30 s; stderr: %s", peerEnv, spec, stderr.String())
	}
	return ""
}

// lockedBuffer is a bytes.Buffer that exec's copying goroutine and the
// benchmark may use at once.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// streamToPeer streams b.N chunks of 128 KiB over one TCP connection from
// `from` to the peer process at addr, half-closes it and stops the clock
// when the peer reports the byte count it read, which must be all of it.
// It reports Gbit/s (and pkts/s, sent by this process's stack, if pkts is
// not nil); B/op and allocs/op count this process only.
func streamToPeer(b *testing.B, from dialer, addr string, pkts func() uint64) {
	const chunk = 128 << 10
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	c, err := from.DialContext(ctx, "tcp", addr)
	cancel()
	if err != nil {
		b.Fatalf("dial the peer process at %s: %v", addr, err)
	}
	defer c.Close()
	cw, ok := c.(interface{ CloseWrite() error })
	if !ok {
		b.Fatalf("%T has no CloseWrite", c)
	}
	// Not a timed assertion: a guard against a hang if the peer dies.
	c.SetDeadline(time.Now().Add(2*time.Minute + time.Duration(b.N)*10*time.Millisecond))
	buf := make([]byte, chunk)
	b.SetBytes(chunk)
	b.ReportAllocs()
	var p0 uint64
	if pkts != nil {
		p0 = pkts()
	}
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		if _, err := c.Write(buf); err != nil {
			b.Fatalf("write chunk %d of %d to the peer process: %v", i, b.N, err)
		}
	}
	if err := cw.CloseWrite(); err != nil {
		b.Fatalf("half-close towards the peer process: %v", err)
	}
	var got uint64
	if err := binary.Read(c, binary.BigEndian, &got); err != nil {
		b.Fatalf("read the peer process's byte count: %v", err)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	if want := uint64(b.N) * chunk; got != want {
		b.Fatalf("the peer process received %d bytes, sent %d", got, want)
	}
	b.ReportMetric(float64(got)*8/elapsed.Seconds()/1e9, "Gbit/s")
	if pkts != nil {
		b.ReportMetric(float64(pkts()-p0)/elapsed.Seconds(), "pkts/s")
	}
}

// tunnelStreamTwoProcs is TCPStream/transport=udp over two processes: this
// one holds stack a (innerA), the peer process stack b (innerB).
func tunnelStreamTwoProcs(b *testing.B, mtu int) {
	local, remote := freePort(b), freePort(b)
	a, err := stack.New(stack.Config{Tunnels: []stack.Tunnel{peerTunnel("a", innerA, local, remote, mtu)}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { a.Close() })
	addr := startPeer(b, fmt.Sprintf("tunnel %s %s %d", remote, local, mtu))
	streamToPeer(b, a, addr, txPackets(a))
}
