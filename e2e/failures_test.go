package e2e

import (
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// The failures a new user ran into, each seen at the default log level
// (info) as one warning that says what failed and where.

// connectAndRead opens a connection to addr and reads until it ends, as
// curl does when the forward has nothing to relay.
func connectAndRead(t *testing.T, addr string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	c.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
	io.Copy(io.Discard, c)
}

// waitOutput waits until p's output has a line with every one of wants,
// and returns it.
func waitOutput(t *testing.T, p *proc, timeout time.Duration, wants ...string) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		for _, l := range strings.Split(p.out.String(), "\n") {
			ok := true
			for _, w := range wants {
				ok = ok && strings.Contains(l, w)
			}
			if ok {
				return l
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s logged no line with %q within %v", p.name, wants, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// countLines counts p's output lines with every one of wants.
func countLines(p *proc, wants ...string) int {
	n := 0
	for _, l := range strings.Split(p.out.String(), "\n") {
		ok := true
		for _, w := range wants {
			ok = ok && strings.Contains(l, w)
		}
		if ok {
			n++
		}
	}
	return n
}

// B's reverse forward target is down: B warns once with the service, the
// target and "connection refused", however many connections fail.
func TestWarnReverseTargetDown(t *testing.T) {
	t.Parallel()
	dead := freePort(t, "tcp")
	tunA, tunB, statusA, statusB, web := freePort(t, "udp"), freePort(t, "udp"), freePort(t, "tcp"), freePort(t, "tcp"), freePort(t, "tcp")
	a := example(t, "two-peers-a.hcl", map[string]string{
		"127.0.0.1:4700": addr(tunA), "127.0.0.1:4701": addr(tunB), "127.0.0.1:9100": addr(statusA),
		"127.0.0.1:8080": addr(web), "127.0.0.1:7000": addr(freePort(t, "udp")), "127.0.0.1:1080": addr(freePort(t, "tcp")), "127.0.0.1:3128": addr(freePort(t, "tcp")),
	})
	b := example(t, "two-peers-b.hcl", map[string]string{
		"127.0.0.1:4700": addr(tunA), "127.0.0.1:4701": addr(tunB), "127.0.0.1:9101": addr(statusB),
		"127.0.0.1:8000": addr(dead), "127.0.0.1:7007": addr(freePort(t, "udp")),
	})
	pb := start(t, "peer B", "run", "-c", writeFile(t, "b.hcl", b))
	pa := start(t, "peer A", "run", "-c", writeFile(t, "a.hcl", a))
	pb.waitReady(t, addr(statusB))
	pa.waitReady(t, addr(statusA))
	for range 3 {
		connectAndRead(t, addr(web))
	}
	want := []string{"level=WARN", "dial failed", "kind=reverse", "forward=web", "target=" + addr(dead), `reason="connection refused"`}
	waitOutput(t, pb, 10*time.Second, want...)
	if n := countLines(pb, "level=WARN", "dial failed"); n != 1 {
		t.Errorf("B logged %d dial warnings for 3 failed connections, want 1 (rate-limited)", n)
	}
}

// The peer is not running: A's forward times out after its dial_timeout
// and says so.
func TestWarnPeerNotRunning(t *testing.T) {
	t.Parallel()
	statusA, web := freePort(t, "tcp"), freePort(t, "tcp")
	a := example(t, "two-peers-a.hcl", map[string]string{
		"127.0.0.1:4700": addr(freePort(t, "udp")), "127.0.0.1:4701": addr(freePort(t, "udp")), "127.0.0.1:9100": addr(statusA),
		"127.0.0.1:8080": addr(web), "127.0.0.1:7000": addr(freePort(t, "udp")), "127.0.0.1:1080": addr(freePort(t, "tcp")), "127.0.0.1:3128": addr(freePort(t, "tcp")),
		`target   = "10.99.0.2:80"`: `target   = "10.99.0.2:80"
  dial_timeout = "1s"`,
	})
	pa := start(t, "peer A", "run", "-c", writeFile(t, "a.hcl", a))
	pa.waitReady(t, addr(statusA))
	connectAndRead(t, addr(web))
	waitOutput(t, pa, 10*time.Second, "level=WARN", "dial failed", "kind=forward", "forward=web",
		"target=10.99.0.2:80", "reason=timeout", "dial_timeout=1s")
}

// The inner addresses of the two files do not match: B drops A's packets
// as spoofed_source and says so once, with the addresses involved.
func TestWarnInnerAddressMismatch(t *testing.T) {
	t.Parallel()
	tunA, tunB, statusA, statusB, web := freePort(t, "udp"), freePort(t, "udp"), freePort(t, "tcp"), freePort(t, "tcp"), freePort(t, "tcp")
	a := example(t, "two-peers-a.hcl", map[string]string{
		"127.0.0.1:4700": addr(tunA), "127.0.0.1:4701": addr(tunB), "127.0.0.1:9100": addr(statusA),
		"127.0.0.1:8080": addr(web), "127.0.0.1:7000": addr(freePort(t, "udp")), "127.0.0.1:1080": addr(freePort(t, "tcp")), "127.0.0.1:3128": addr(freePort(t, "tcp")),
		`target   = "10.99.0.2:80"`: `target   = "10.99.0.2:80"
  dial_timeout = "1s"`,
	})
	b := example(t, "two-peers-b.hcl", map[string]string{
		"127.0.0.1:4700": addr(tunA), "127.0.0.1:4701": addr(tunB), "127.0.0.1:9101": addr(statusB),
		"127.0.0.1:8000": addr(freePort(t, "tcp")), "127.0.0.1:7007": addr(freePort(t, "udp")),
		`"10.99.0.2/30"`: `"10.98.0.2/30"`, `"10.99.0.2:80"`: `"10.98.0.2:80"`, `listen       = "10.99.0.2:53"`: `listen       = "10.98.0.2:53"`,
	})
	pb := start(t, "peer B", "run", "-c", writeFile(t, "b.hcl", b))
	pa := start(t, "peer A", "run", "-c", writeFile(t, "a.hcl", a))
	pb.waitReady(t, addr(statusB))
	pa.waitReady(t, addr(statusA))
	connectAndRead(t, addr(web)) // SYN and its retransmissions, all dropped
	waitOutput(t, pb, 15*time.Second, "level=WARN", "tunnel dropping packets", "tunnel=a", "reason=spoofed_source",
		"outer_source="+addr(tunA), "inner_source=10.99.0.1", "inner_destination=10.99.0.2")
	if n := countLines(pb, "tunnel dropping packets"); n != 1 {
		t.Errorf("B logged %d first-drop warnings, want 1", n)
	}
}
