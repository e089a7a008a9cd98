package e2e

import (
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

func TestCheckExamples(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob(filepath.Join("..", "examples", "*.hcl"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no examples: %v", err)
	}
	for _, f := range files {
		out, errOut, code := runCLI(t, "check", "-c", f)
		if code != 0 || !strings.Contains(out, f+": OK\n") {
			t.Errorf("check -c %s: exit %d, want 0 and %q\n%s%s", f, code, f+": OK", out, errOut)
		}
		if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 2 || !strings.Contains(lines[1], "tunnel") {
			t.Errorf("check -c %s printed %q, want OK and a one-line summary", f, out)
		}
	}
}

func TestCheckBroken(t *testing.T) {
	t.Parallel()
	broken := writeFile(t, "broken.hcl", `tunnel "t" {
  local     = "127.0.0.1:4700"
  remote    = "127.0.0.1:4701"
  addresses = ["10.99.0.1/30"]
  mtu       = 40
}
`)
	out, errOut, code := runCLI(t, "check", "-c", broken)
	if code != 2 {
		t.Errorf("check of a broken file: exit %d, want 2", code)
	}
	if !regexp.MustCompile(regexp.QuoteMeta(broken) + `:5:\d+`).MatchString(errOut) {
		t.Errorf("check of a broken file: no %s:5:col diagnostic on stderr:\n%s", broken, errOut)
	}
	mustContain(t, "diagnostic", errOut, "Error:", "mtu       = 40", "^^")
	if strings.Contains(out, "OK") {
		t.Errorf("check of a broken file printed OK: %s", out)
	}
	// A file that does not exist is a configuration error too.
	if _, _, code := runCLI(t, "check", "-c", filepath.Join(t.TempDir(), "missing.hcl")); code != 2 {
		t.Errorf("check of a missing file: exit %d, want 2", code)
	}
	// So is running one.
	if _, errOut, code := runCLI(t, "run", "-c", broken); code != 2 || !strings.Contains(errOut, broken+":5:") {
		t.Errorf("run with a broken file: exit %d, want 2 and the diagnostic\n%s", code, errOut)
	}
}

func TestHelp(t *testing.T) {
	t.Parallel()
	out, _, code := runCLI(t, "--help")
	if code != 0 {
		t.Errorf("--help: exit %d, want 0", code)
	}
	mustContain(t, "ipipstack --help", out, "Usage: ipipstack <command>", "run", "check", "status", "version", "demo",
		"Exit status:", "0  success", "1  runtime failure", "2  usage or configuration error")

	flags := map[string][]string{
		"run":     {"-c, --config FILE", "--log-format", "--log-level", "--drain-timeout", "Example:"},
		"check":   {"-c, --config FILE", "Example:"},
		"status":  {"-c, --config FILE", "--addr", "--json", "Example:"},
		"version": {"Example:"},
		"demo":    {"--size", "Example:"},
	}
	for cmd, wants := range flags {
		for _, h := range []string{"-h", "--help"} {
			out, errOut, code := runCLI(t, cmd, h)
			if code != 0 {
				t.Errorf("%s %s: exit %d, want 0\n%s", cmd, h, code, errOut)
			}
			mustContain(t, "ipipstack "+cmd+" "+h, out, append(wants, "Usage: ipipstack "+cmd)...)
		}
	}
}

func TestUsageErrors(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{},
		{"frobnicate"},
		{"--frobnicate"},
		{"run"},
		{"run", "-c", "x.hcl", "--frobnicate"},
		{"run", "-c", "x.hcl", "--log-level", "loud"},
		{"check", "--bogus"},
		{"check"},
		{"check", "-c", "a.hcl", "extra"},
		{"status", "--addr", "127.0.0.1:1", "-c", "x.hcl"},
		{"version", "--json"},
		{"demo", "--size", "many"},
	} {
		_, errOut, code := runCLI(t, args...)
		if code != 2 {
			t.Errorf("ipipstack %s: exit %d, want 2", strings.Join(args, " "), code)
		}
		if !strings.Contains(errOut, "Usage:") {
			t.Errorf("ipipstack %s: no usage on stderr:\n%s", strings.Join(args, " "), errOut)
		}
	}
}

func TestVersion(t *testing.T) {
	t.Parallel()
	out, _, code := runCLI(t, "version")
	if code != 0 {
		t.Errorf("version: exit %d", code)
	}
	if !regexp.MustCompile(`(?m)^ipipstack \S+\ngo +go1\.\d+.*\ngvisor +v\S+$`).MatchString(out) {
		t.Errorf("version printed %q, want the module, Go and gVisor versions", out)
	}
}

// TestRunFailure: a listener that cannot bind is a runtime failure (1).
func TestRunFailure(t *testing.T) {
	t.Parallel()
	status := addr(freePort(t, "tcp"))
	cfg := writeFile(t, "a.hcl", example(t, "two-peers-a.hcl", map[string]string{
		"127.0.0.1:4700": addr(freePort(t, "udp")), "127.0.0.1:4701": addr(freePort(t, "udp")),
		"127.0.0.1:9100": status, "127.0.0.1:7000": addr(freePort(t, "udp")),
		"127.0.0.1:8080": addr(freePort(t, "tcp")), "127.0.0.1:1080": addr(freePort(t, "tcp")),
		"127.0.0.1:3128": addr(freePort(t, "tcp")),
	}))
	// The first process holds every port of the file; the second cannot
	// bind them.
	hold := start(t, "holder", "run", "-c", cfg)
	hold.waitReady(t, status)
	_, errOut, code := runCLI(t, "run", "-c", cfg)
	if code != 1 {
		t.Errorf("run with its ports taken: exit %d, want 1\n%s", code, errOut)
	}
	mustContain(t, "run's log", errOut, "failed to start", "address already in use")
	hold.stop(t, 10*time.Second)
}
