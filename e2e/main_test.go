// Package e2e runs the ipipstack binary as a user would: two processes on
// one host joined by a UDP tunnel over loopback, with real curl and tshark
// on the host side. All traffic stays on 127.0.0.1.
//
// TestMain builds the binary once (with -race when IPIPSTACK_E2E_RACE=1).
// Tests that need a tool that is missing (tshark) skip, unless
// IPIPSTACK_PRIVILEGED=1, which turns the skip into a failure as in CI.
package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// bin is the ipipstack binary under test.
var bin string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "ipipstack-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	bin = filepath.Join(dir, "ipipstack")
	args := []string{"build", "-o", bin}
	if os.Getenv("IPIPSTACK_E2E_RACE") == "1" {
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, "./cmd/ipipstack")...)
	build.Dir = ".." // the module root
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: go build: %v\n%s", err, out)
		return 1
	}
	return m.Run()
}
