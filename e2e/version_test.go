package e2e

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestMakeBuildStampsVersion runs the command `make build` runs, with
// VERSION set, into a temporary file, and checks that `ipipstack version`
// reports it.
func TestMakeBuildStampsVersion(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("no make")
	}
	const version = "v9.8.7-test"
	out, err := exec.Command("make", "-C", "..", "--no-print-directory", "-n", "build", "VERSION="+version).Output()
	if err != nil {
		t.Fatalf("make -n build: %v", err)
	}
	cmd := strings.TrimSpace(string(out))
	if !strings.Contains(cmd, "-X github.com/ipipstack/ipipstack/internal/buildinfo.version="+version) || !strings.Contains(cmd, "-o bin/ipipstack") {
		t.Fatalf("make build runs %q, want it to stamp %s into bin/ipipstack", cmd, version)
	}
	bin := filepath.Join(t.TempDir(), "ipipstack")
	build := exec.Command("sh", "-c", strings.Replace(cmd, "-o bin/ipipstack", "-o "+bin, 1))
	build.Dir = ".."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", cmd, err, out)
	}
	got, err := exec.Command(bin, "version").Output()
	if err != nil {
		t.Fatalf("version: %v", err)
	}
	if !strings.HasPrefix(string(got), "ipipstack "+version+"\n") {
		t.Errorf("version printed %q, want it to start with %q", got, "ipipstack "+version)
	}
}
