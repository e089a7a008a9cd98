package daemon

import (
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
)

// A raw tunnel that cannot open its socket says what it needs and how to
// grant it.
func TestExplainRawPermission(t *testing.T) {
	cause := fmt.Errorf("stack: tunnel %q: endpoint: raw socket for IP protocol 255: %w", "t", os.NewSyscallError("socket", syscall.EPERM))
	got := explainStartError(cause).Error()
	for _, want := range []string{"raw socket for IP protocol 255", "CAP_NET_RAW", "setcap cap_net_raw+ep", `transport = "udp"`} {
		if !strings.Contains(got, want) {
			t.Errorf("explainStartError = %q, lacks %q", got, want)
		}
	}
	// Other errors pass unchanged.
	other := fmt.Errorf("stack: bind: %w", syscall.EADDRINUSE)
	if got := explainStartError(other); got != other {
		t.Errorf("explainStartError(%v) = %v, want it unchanged", other, got)
	}
}

func TestMissingCapabilities(t *testing.T) {
	cfg := parse(t, `
tunnel "r" {
  transport = "raw"
  local     = "127.0.0.1"
  remote    = "127.0.0.2"
  addresses = ["10.99.0.1/30"]
}
tun {
  addresses = ["10.99.9.1/24"]
}`)
	none := func(int) bool { return false }
	var got []string
	for _, m := range MissingCapabilities(cfg, none) {
		got = append(got, m.Name+": "+m.Why)
	}
	want := []string{
		`CAP_NET_RAW: tunnel "r" has transport = "raw"`,
		`CAP_NET_ADMIN: the tun block creates a TUN device`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("MissingCapabilities =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if m := MissingCapabilities(cfg, func(int) bool { return true }); len(m) != 0 {
		t.Errorf("MissingCapabilities with every capability = %v, want none", m)
	}
}
