package e2e

import (
	"fmt"
	"regexp"
	"testing"
)

// TestPingTracerouteChain: three processes in a line, A — B — C, B
// forwarding; A's ipipstack ping and traceroute reach C and name B as the
// hop between.
func TestPingTracerouteChain(t *testing.T) {
	t.Parallel()
	pab, pba, pbc, pcb, status := freePort(t, "udp"), freePort(t, "udp"), freePort(t, "udp"), freePort(t, "udp"), freePort(t, "tcp")
	cfgA := writeFile(t, "a.hcl", fmt.Sprintf(`status {
  listen = %q
}
tunnel "b" {
  local     = %q
  remote    = %q
  addresses = ["10.98.1.1/30", "fd98:1::1/64"]
  routes    = ["10.98.2.0/30", "fd98:2::/64"]
}`, addr(status), addr(pab), addr(pba)))
	cfgB := writeFile(t, "b.hcl", fmt.Sprintf(`stack {
  forwarding = true
}
tunnel "a" {
  local     = %q
  remote    = %q
  addresses = ["10.98.1.2/30", "fd98:1::2/64"]
}
tunnel "c" {
  local     = %q
  remote    = %q
  addresses = ["10.98.2.1/30", "fd98:2::1/64"]
}`, addr(pba), addr(pab), addr(pbc), addr(pcb)))
	cfgC := writeFile(t, "c.hcl", fmt.Sprintf(`tunnel "b" {
  local     = %q
  remote    = %q
  addresses = ["10.98.2.2/30", "fd98:2::2/64"]
  routes    = ["10.98.1.0/30", "fd98:1::/64"]
}`, addr(pcb), addr(pbc)))
	start(t, "peer C", "run", "-c", cfgC)
	start(t, "peer B", "run", "-c", cfgB)
	a := start(t, "peer A", "run", "-c", cfgA)
	a.waitReady(t, addr(status))

	for _, tc := range []struct{ dst, hop string }{{"10.98.2.2", "10.98.1.2"}, {"fd98:2::2", "fd98:1::2"}} {
		out, errOut, code := runCLI(t, "traceroute", "-c", cfgA, tc.dst)
		want := regexp.MustCompile(fmt.Sprintf(`^traceroute to %s, 30 hops max, from the ipipstack at %s
 1  %s  \d+\.\d{3} ms
 2  %s  \d+\.\d{3} ms
$`, regexp.QuoteMeta(tc.dst), regexp.QuoteMeta(addr(status)), regexp.QuoteMeta(tc.hop), regexp.QuoteMeta(tc.dst)))
		if code != 0 || !want.MatchString(out) {
			t.Errorf("traceroute %s = %d\n%s%s\nwant it to match\n%s", tc.dst, code, out, errOut, want)
		}
		out, errOut, code = runCLI(t, "ping", "-c", cfgA, "--count", "2", "--interval", "200ms", tc.dst)
		if code != 0 || !regexp.MustCompile(`(?m)^2 packets transmitted, 2 received, 0% packet loss$`).MatchString(out) {
			t.Errorf("ping %s = %d\n%s%s", tc.dst, code, out, errOut)
		}
	}
}
