package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// installedBin is where dist/ipipstack.service and the Dockerfile expect
// the binary.
const installedBin = "/usr/local/bin/ipipstack"

// systemdVerify runs systemd-analyze verify on unit (a file named
// ipipstack.service) and returns its output and error. systemd-analyze
// exits 0 on unknown keys and only prints them, so callers treat any
// output as a failure.
func systemdVerify(t *testing.T, analyze, unit string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, analyze, "verify", unit)
	cmd.Env = append(env(), "SYSTEMD_LOG_COLOR=0", "SYSTEMD_PAGER=")
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// TestSystemdUnit: dist/ipipstack.service passes systemd-analyze verify
// without a warning (with its binary path pointing at the binary under
// test, since verify checks that ExecStart is executable), and has the
// hardening and the reload the README documents.
func TestSystemdUnit(t *testing.T) {
	t.Parallel()
	src, err := os.ReadFile(filepath.Join("..", "dist", "ipipstack.service"))
	if err != nil {
		t.Fatal(err)
	}
	unit := string(src)
	// Directives a change must not lose (each as a whole line).
	for _, want := range []string{
		"ExecStart=" + installedBin + " run -c /etc/ipipstack/ipipstack.hcl",
		"ExecReload=/bin/kill -HUP $MAINPID",
		"Restart=on-failure",
		"DynamicUser=yes",
		"AmbientCapabilities=",
		"CapabilityBoundingSet=",
		"NoNewPrivileges=yes",
		"ProtectSystem=strict",
		"ProtectHome=yes",
		"PrivateTmp=yes",
		"RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
		"SystemCallFilter=@system-service",
		"LockPersonality=yes",
		"MemoryDenyWriteExecute=yes",
	} {
		if !hasLine(unit, want) {
			t.Errorf("dist/ipipstack.service has no line %q", want)
		}
	}
	// The commands the unit runs are ones the CLI accepts.
	if _, errOut, code := runCLI(t, "run", "--help"); code != 0 {
		t.Errorf("ipipstack run --help: exit %d\n%s", code, errOut)
	}

	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed (Debian package systemd); skipping the verification of dist/ipipstack.service")
	}
	dir := t.TempDir()
	verify := func(t *testing.T, text string) (string, error) {
		path := filepath.Join(dir, t.Name()[strings.LastIndex(t.Name(), "/")+1:], "ipipstack.service")
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(strings.ReplaceAll(text, installedBin, bin)), 0o644); err != nil {
			t.Fatal(err)
		}
		return systemdVerify(t, analyze, path)
	}
	t.Run("unit", func(t *testing.T) {
		if out, err := verify(t, unit); err != nil || out != "" {
			t.Errorf("systemd-analyze verify dist/ipipstack.service: %v\n%s", err, out)
		}
	})
	// The check sees a mistake: a misspelled key is reported.
	t.Run("typo", func(t *testing.T) {
		bad := strings.Replace(unit, "ProtectHome=yes", "ProtectHomes=yes", 1)
		if out, err := verify(t, bad); err == nil && !strings.Contains(out, "ProtectHomes") {
			t.Errorf("systemd-analyze verify of a unit with ProtectHomes=yes: no error and no warning\n%s", out)
		}
	})
}

// hasLine reports whether text has line as one of its lines.
func hasLine(text, line string) bool {
	for _, l := range strings.Split(text, "\n") {
		if strings.TrimSpace(l) == line {
			return true
		}
	}
	return false
}
