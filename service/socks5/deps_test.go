package socks5

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDeps keeps the package on service.Network alone: no gVisor, no HCL,
// no daemon code, so that it runs against the host in tests.
func TestDeps(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command:", err)
	}
	out, err := exec.Command(goBin, "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, dep := range strings.Fields(string(out)) {
		for _, bad := range []string{"gvisor.dev/", "github.com/hashicorp/hcl", "github.com/ipipstack/ipipstack/cmd",
			"github.com/ipipstack/ipipstack/stack", "github.com/ipipstack/ipipstack/endpoint", "github.com/ipipstack/ipipstack/config"} {
			if strings.HasPrefix(dep, bad) {
				t.Errorf("imports %s", dep)
			}
		}
	}
}
