//go:build linux && interop

package interop

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/endpoint/encap"
	"github.com/ipipstack/ipipstack/internal/netnstest"
	"github.com/ipipstack/ipipstack/stack"
)

// The tap device in the test's namespace that is the VM's eth0.
const tapDev = "tap0"

// transferSize is what each TCP test moves: a few MiB, since TCG is slow.
const transferSize = 4 << 20

// innerTTLProbe is the TTL / hop limit of the inner packets whose outer
// headers are compared: not 64, the default of both ends.
const innerTTLProbe = 33

// env is the namespace and the VM that every kind's tests share.
type env struct {
	ns  *netnstest.NS
	img *Image
	vm  *VM
	// vmBlobSHA is the SHA-256 of /tmp/blob in the VM (transferSize
	// random bytes) that the VM sends in the TCP tests.
	vmBlobSHA string
}

// TestKernelInterop boots Debian's kernel once, configures every tunnel
// kind in it, and runs each kind's tests against the project's stack in
// the VM's network namespace. Without root, or with -short, it is
// skipped; with IPIPSTACK_PRIVILEGED=1 a VM that does not start fails it.
func TestKernelInterop(t *testing.T) {
	if testing.Short() {
		t.Skip("interop: boots a VM; skipped with -short")
	}
	netnstest.Privileged(t)
	netnstest.Program(t, "qemu-system-x86_64", "qemu-system-x86")
	netnstest.Program(t, "busybox", "busybox-static")
	e := setup(t)
	t.Logf("interop: peer kernel %s (Debian %s %s), qemu accel %s", e.vm.Release, e.img.Package, e.img.PackageVersion, e.vm.Accel)
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) { e.testKind(t, k) })
	}
	t.Run("path-mtu", e.testPathMTU)
	t.Run("raw-tunnels-apart", e.testRawApart)
	t.Run("ipipstack-run", e.testBinary)
}

// setup makes the namespace and its tap device, boots the VM there and
// configures its eth0 and every kind's tunnel.
func setup(t *testing.T) *env {
	t.Helper()
	cache, err := CacheDir()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	img, err := PrepareImage(cache, t.Logf)
	if err != nil {
		t.Fatalf("interop: VM image: %v", err)
	}
	t.Logf("interop: %s %s (kernel %s), initramfs %s, ready in %v", img.Package, img.PackageVersion, img.Release, img.Initramfs, time.Since(start).Round(time.Millisecond))
	ns := netnstest.New(t)
	ns.Run(t, "ip", "link", "set", "lo", "up")
	if err := ns.Do(func() error {
		for _, c := range []string{"all", "default"} {
			if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+c+"/accept_dad", []byte("0"), 0); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatalf("interop: turn DAD off in %s: %v", ns.Name(), err)
	}
	ns.Run(t, "ip", "tuntap", "add", "dev", tapDev, "mode", "tap")
	ns.Run(t, "ip", "addr", "add", usOuter4.String()+"/24", "dev", tapDev)
	ns.Run(t, "ip", "addr", "add", usOuter6.String()+"/64", "dev", tapDev, "nodad")
	ns.Run(t, "ip", "link", "set", tapDev, "up")

	start = time.Now()
	vm, err := Boot(img, BootOptions{Netns: ns.Name(), Tap: tapDev, Logf: t.Logf})
	if err != nil {
		t.Fatalf("interop: boot %s in %s: %v", img.Release, ns.Name(), err)
	}
	t.Cleanup(func() {
		if err := vm.Close(); err != nil {
			t.Error(err)
		}
	})
	t.Logf("interop: VM booted with %s in %v", vm.Accel, time.Since(start).Round(time.Millisecond))
	e := &env{ns: ns, img: img, vm: vm}
	cmds := []string{
		"sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0",
		// Inner packets leave the VM with TTL 33, not the usual 64, so
		// that an outer header that inherits it shows as such.
		fmt.Sprintf("sysctl -qw net.ipv4.ip_default_ttl=%d net.ipv6.conf.all.hop_limit=%[1]d net.ipv6.conf.default.hop_limit=%[1]d", innerTTLProbe),
		"ip link set lo up",
		"ip link set eth0 up",
	}
	for _, k := range kinds {
		if k.outer6 {
			cmds = append(cmds, fmt.Sprintf("ip addr add %s/64 dev eth0 nodad", k.vmOuter()))
		} else {
			cmds = append(cmds, fmt.Sprintf("ip addr add %s/24 dev eth0", k.vmOuter()))
		}
	}
	for _, k := range kinds {
		cmds = append(cmds, k.vmSetup()...)
	}
	cmds = append(cmds, routerSetup...)
	cmds = append(cmds, fmt.Sprintf("head -c %d /dev/urandom > /tmp/blob", transferSize))
	for _, c := range cmds {
		e.vmRun(t, c, 10*time.Second)
	}
	e.setupRouterHost(t)
	out := e.vmRun(t, "sha256sum /tmp/blob", 10*time.Second)
	e.vmBlobSHA = strings.Fields(out)[0]
	return e
}

// vmRun runs cmd in the VM and fails the test if it fails.
func (e *env) vmRun(t testing.TB, cmd string, timeout time.Duration) string {
	t.Helper()
	out, err := e.vm.Run(cmd, timeout)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// testKind runs ping, TCP and UDP both ways over one kind.
func (e *env) testKind(t *testing.T, k kind) {
	s := e.startTunnel(t, k.tunnel())
	us, vm := k.usInner().Addr(), k.vmInner().Addr()
	t.Cleanup(func() {
		if t.Failed() {
			for _, st := range s.Stats() {
				var drops []string
				for r, n := range st.Drops {
					if n != 0 {
						drops = append(drops, fmt.Sprintf("%v=%d", encap.Reason(r), n))
					}
				}
				t.Logf("%s: stack counters: rx %d packets, tx %d packets, drops %v", k.name, st.RxPackets, st.TxPackets, drops)
			}
			out, err := e.vm.Run(fmt.Sprintf("ip -s -d link show %s", k.dev()), 5*time.Second)
			t.Logf("%s: the VM's tunnel device (%v):\n%s", k.name, err, out)
			t.Logf("%s: the VM's last console lines:\n%s", k.name, e.vm.Tail(40))
		}
	})

	t.Run("outer-headers", func(t *testing.T) {
		// One packet each way with inner TTL (hop limit) 33, captured
		// on the tap: the kernel's outer header and ours must agree field
		// by field (see outer). The VM's inner packets all have TTL 33
		// (setup); ours is a UDP datagram sent with TTL 33. Neither needs
		// an answer, so a broken wire format is still compared.
		c := e.startCapture(t, tapDev)
		ping := "ping"
		if k.inner6 {
			ping = "ping6"
		}
		if _, err := e.vm.Run(fmt.Sprintf("%s -c 1 -W 1 %s", ping, us), 10*time.Second); err != nil && !errors.Is(err, ErrExit) {
			t.Fatal(err)
		}
		if err := sendWithTTL(s, netip.AddrPortFrom(vm, 9), innerTTLProbe); err != nil {
			t.Fatalf("%s: %v", k.name, err)
		}
		time.Sleep(100 * time.Millisecond) // the capture polls every 20 ms
		pkts := c.snapshot()
		kern, err := findTTL(k, pkts, k.vmOuter(), k.usOuter(), innerTTLProbe)
		if err != nil {
			t.Fatalf("%s: the kernel's packet (%s -> %s): %v among %d captured", k.name, k.vmOuter(), k.usOuter(), err, len(pkts))
		}
		ours, err := findTTL(k, pkts, k.usOuter(), k.vmOuter(), innerTTLProbe)
		if err != nil {
			t.Fatalf("%s: our packet (%s -> %s): %v among %d captured", k.name, k.usOuter(), k.vmOuter(), err, len(pkts))
		}
		t.Logf("%s: the kernel's outer header: %+v", k.name, kern)
		expected, unexpected := compareOuter(k, kern, ours)
		for _, d := range expected {
			t.Logf("%s: expected difference: %s", k.name, d)
		}
		for _, d := range unexpected {
			t.Errorf("%s: our outer header differs from the kernel's: %s", k.name, d)
		}
	})

	pingFrom := t.Run("ping-from-kernel", func(t *testing.T) {
		ping := "ping"
		if k.inner6 {
			ping = "ping6"
		}
		out, err := e.vm.Run(fmt.Sprintf("%s -c 3 -W 2 %s", ping, us), 20*time.Second)
		if err != nil {
			t.Fatalf("%s: the kernel's ping of our stack (%s -> %s) failed: %v", k.name, vm, us, err)
		}
		if !strings.Contains(out, "3 packets received") {
			t.Fatalf("%s: the kernel's ping of our stack (%s -> %s): want 3 of 3 replies:\n%s", k.name, vm, us, out)
		}
	})

	pingTo := t.Run("ping-to-kernel", func(t *testing.T) {
		for i := 0; i < 3; i++ {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err := s.Ping(ctx, vm)
			cancel()
			if err != nil {
				t.Fatalf("%s: our stack's Ping %d of the kernel (%s -> %s): %v", k.name, i, us, vm, err)
			}
		}
	})

	t.Run("ping-from-kernel-fragmented", func(t *testing.T) {
		// 3000 bytes of ICMP payload do not fit the tunnel MTU: the
		// kernel fragments the inner packet, our stack reassembles it
		// and answers with fragments of its own, which the kernel
		// reassembles.
		ping := "ping"
		if k.inner6 {
			ping = "ping6"
		}
		out, err := e.vm.Run(fmt.Sprintf("%s -c 2 -W 2 -s 3000 %s", ping, us), 20*time.Second)
		if err != nil || !strings.Contains(out, "2 packets received") {
			t.Fatalf("%s: the kernel's 3000-byte ping of our stack (%s -> %s, fragmented inner packets): want 2 of 2 replies (%v):\n%s", k.name, vm, us, err, out)
		}
	})

	if !pingFrom && !pingTo {
		t.Fatalf("%s: TCP and UDP not tried: no ping got through in either direction (see above)", k.name)
	}

	t.Run("tcp-to-kernel", func(t *testing.T) {
		const port = 7001
		e.vmRun(t, fmt.Sprintf("rm -f /tmp/rx; timeout 120 nc -l -p %d > /tmp/rx &", port), 5*time.Second)
		conn := dialRetry(t, s, netip.AddrPortFrom(vm, port))
		data := blob(k)
		if _, err := conn.Write(data); err != nil {
			t.Fatalf("%s: TCP to the kernel (%s -> %s): write: %v", k.name, us, vm, err)
		}
		conn.Close()
		e.vmRun(t, "wait", 130*time.Second)
		out := e.vmRun(t, "sha256sum /tmp/rx; wc -c < /tmp/rx", 10*time.Second)
		want := sha256.Sum256(data)
		if got := strings.Fields(out)[0]; got != hex.EncodeToString(want[:]) {
			t.Fatalf("%s: TCP to the kernel (%s -> %s): the kernel received data with SHA-256 %s (wc -c: %s), want %x (%d bytes)",
				k.name, us, vm, got, strings.Fields(out)[len(strings.Fields(out))-1], want, len(data))
		}
	})

	t.Run("tcp-from-kernel", func(t *testing.T) {
		const port = 7002
		var ln net.Listener
		ln, err := s.Listen("tcp", netip.AddrPortFrom(us, port).String())
		if err != nil {
			t.Fatalf("%s: Listen: %v", k.name, err)
		}
		defer ln.Close()
		type result struct {
			sum string
			n   int64
			err error
		}
		res := make(chan result, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				res <- result{err: err}
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(120 * time.Second))
			h := sha256.New()
			n, err := io.Copy(h, c)
			res <- result{sum: hex.EncodeToString(h.Sum(nil)), n: n, err: err}
		}()
		if _, err := e.vm.Run(fmt.Sprintf("timeout 120 nc -w 10 %s %d < /tmp/blob", netip.AddrPortFrom(us, port).Addr(), port), 130*time.Second); err != nil {
			t.Fatalf("%s: TCP from the kernel (%s -> %s): %v", k.name, vm, us, err)
		}
		select {
		case r := <-res:
			if r.err != nil {
				t.Fatalf("%s: TCP from the kernel (%s -> %s): read %d bytes, then: %v", k.name, vm, us, r.n, r.err)
			}
			if r.sum != e.vmBlobSHA {
				t.Fatalf("%s: TCP from the kernel (%s -> %s): received %d bytes with SHA-256 %s, want %s (%d bytes)", k.name, vm, us, r.n, r.sum, e.vmBlobSHA, transferSize)
			}
		case <-time.After(30 * time.Second):
			ln.Close()
			t.Fatalf("%s: TCP from the kernel (%s -> %s): the kernel's nc finished but our side saw no end of stream within 30 s", k.name, vm, us)
		}
	})

	t.Run("udp", func(t *testing.T) {
		// Busybox's nc has no UDP, but its tftp client makes a UDP
		// exchange both ways: the kernel sends a read request naming the
		// file, our stack answers with the file in one DATA block
		// (RFC 1350), and the kernel acknowledges it and writes the file.
		const port = 7003
		pc, err := s.ListenPacket("udp", netip.AddrPortFrom(us, port).String())
		if err != nil {
			t.Fatalf("%s: ListenPacket: %v", k.name, err)
		}
		defer pc.Close()
		name := "from-kernel-" + k.name
		e.vmRun(t, fmt.Sprintf("rm -f /tmp/u; timeout 20 tftp -g -r %s -l /tmp/u %s %d &", name, us, port), 5*time.Second)
		pc.SetReadDeadline(time.Now().Add(15 * time.Second))
		buf := make([]byte, 2048)
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			t.Fatalf("%s: UDP from the kernel (%s -> %s:%d): no TFTP request: %v", k.name, vm, us, port, err)
		}
		wantReq := append([]byte{0, 1}, name+"\x00octet\x00"...)
		if !bytes.HasPrefix(buf[:n], wantReq) || from.(*net.UDPAddr).AddrPort().Addr().Unmap() != vm {
			t.Fatalf("%s: UDP from the kernel: got % x from %v, want a datagram starting % x from %s", k.name, buf[:n], from, wantReq, vm)
		}
		payload := "to-kernel-" + k.name + "-" + hex.EncodeToString(blob(k)[:16])
		if _, err := pc.WriteTo(append([]byte{0, 3, 0, 1}, payload...), from); err != nil {
			t.Fatalf("%s: UDP to the kernel: %v", k.name, err)
		}
		n, _, err = pc.ReadFrom(buf)
		if err != nil || !bytes.Equal(buf[:n], []byte{0, 4, 0, 1}) {
			t.Fatalf("%s: UDP to the kernel (%s -> %s): no TFTP ACK of block 1 (got % x, %v)", k.name, us, vm, buf[:n], err)
		}
		e.vmRun(t, "wait", 25*time.Second)
		if got := e.vmRun(t, "cat /tmp/u", 5*time.Second); got != payload {
			t.Fatalf("%s: UDP to the kernel (%s -> %s): the kernel's tftp wrote %q, want %q", k.name, us, vm, got, payload)
		}
	})
}

// blob is the data the TCP test sends to the kernel: transferSize bytes
// that differ by kind.
func blob(k kind) []byte {
	b := make([]byte, transferSize)
	var x uint32 = 2463534242 + uint32(k.idx)
	for i := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = byte(x)
	}
	return b
}

// dialRetry dials the kernel's nc, which the VM started in the background
// and which may not listen yet: a refused connection is retried for 10 s.
func dialRetry(t *testing.T, s *stack.Stack, dst netip.AddrPort) net.Conn {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		c, err := s.DialContext(ctx, "tcp", dst.String())
		cancel()
		if err == nil {
			return c
		}
		if time.Now().After(deadline) || !isRefused(err) {
			t.Fatalf("dial %s: %v", dst, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

var refusedRE = regexp.MustCompile(`(?i)refused`)

func isRefused(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && refusedRE.MatchString(err.Error())
}
