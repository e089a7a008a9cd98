package config

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDeps keeps config a leaf: no gVisor and no other package of this
// module (DESIGN.md: config must not import gVisor).
func TestDeps(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go tool not found")
	}
	out, err := exec.Command(goTool, "list", "-deps", ".").Output()
	if err != nil {
		t.Skipf("go list: %v", err)
	}
	for _, dep := range strings.Fields(string(out)) {
		if strings.HasPrefix(dep, "gvisor.dev/") ||
			strings.HasPrefix(dep, "github.com/ipipstack/ipipstack/") && dep != "github.com/ipipstack/ipipstack/config" {
			t.Errorf("config depends on %s", dep)
		}
	}
}
