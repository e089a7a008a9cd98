package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// instruction is one Dockerfile instruction: its keyword (upper case) and
// the rest of its (continued) line.
type instruction struct {
	cmd, args string
	line      int
}

// parseDockerfile splits a Dockerfile into instructions: comments and
// blank lines dropped, backslash continuations joined.
func parseDockerfile(t *testing.T, src string) []instruction {
	t.Helper()
	var out []instruction
	var cur strings.Builder
	start := 0
	for i, l := range strings.Split(src, "\n") {
		trimmed := strings.TrimSpace(l)
		if strings.HasPrefix(trimmed, "#") || (trimmed == "" && cur.Len() == 0) {
			continue
		}
		if cur.Len() == 0 {
			start = i + 1
		}
		if s, ok := strings.CutSuffix(trimmed, `\`); ok {
			cur.WriteString(s + " ")
			continue
		}
		cur.WriteString(trimmed)
		cmd, args, _ := strings.Cut(cur.String(), " ")
		out = append(out, instruction{strings.ToUpper(cmd), strings.TrimSpace(args), start})
		cur.Reset()
	}
	if cur.Len() != 0 {
		t.Fatalf("Dockerfile ends in a continued line: %q", cur.String())
	}
	return out
}

// execForm decodes the JSON exec form of CMD, ENTRYPOINT or HEALTHCHECK CMD.
func execForm(t *testing.T, in instruction, s string) []string {
	t.Helper()
	var argv []string
	if err := json.Unmarshal([]byte(s), &argv); err != nil || len(argv) == 0 {
		t.Fatalf("Dockerfile:%d: %s %s: want the exec form [\"prog\", \"arg\", …] (distroless has no shell): %v", in.line, in.cmd, s, err)
	}
	return argv
}

// TestDockerfile checks the Dockerfile without Docker: a multi-stage
// build whose builder runs `make build` with CGO_ENABLED=0 and whose last
// stage is a minimal base holding the binary, run by a non-root user, with
// a HEALTHCHECK that is `ipipstack status`. The health check's command is
// run against a real daemon: it exits 0 while the daemon is ready and
// non-zero once it is gone; the default command's flags are ones run
// accepts.
func TestDockerfile(t *testing.T) {
	t.Parallel()
	src, err := os.ReadFile(filepath.Join("..", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	ins := parseDockerfile(t, string(src))
	var stages []string // each FROM's image
	var user, copied string
	var health, entry, cmd []string
	built := false
	for _, in := range ins {
		switch in.cmd {
		case "FROM":
			stages = append(stages, strings.Fields(in.args)[0])
			user, copied = "", ""
		case "RUN":
			if strings.Contains(in.args, "CGO_ENABLED=0") && strings.Contains(in.args, "make build") {
				built = true
			}
		case "COPY":
			if strings.Contains(in.args, "--from=") && strings.Contains(in.args, "bin/ipipstack") {
				copied = in.args
			}
		case "USER":
			user = in.args
		case "HEALTHCHECK":
			_, c, ok := strings.Cut(in.args, "CMD ")
			if !ok {
				t.Fatalf("Dockerfile:%d: HEALTHCHECK %s has no CMD", in.line, in.args)
			}
			health = execForm(t, in, strings.TrimSpace(c))
		case "ENTRYPOINT":
			entry = execForm(t, in, in.args)
		case "CMD":
			cmd = execForm(t, in, in.args)
		}
	}
	if len(stages) < 2 || !built {
		t.Errorf("Dockerfile: stages %q, a RUN with CGO_ENABLED=0 make build: %v; want a build stage that runs it and a run stage", stages, built)
	}
	if last := stages[len(stages)-1]; !strings.HasPrefix(last, "gcr.io/distroless/static") && last != "scratch" {
		t.Errorf("Dockerfile: the last stage is FROM %s, want gcr.io/distroless/static… or scratch", last)
	}
	if !strings.HasSuffix(copied, " "+installedBin) {
		t.Errorf("Dockerfile: the last stage copies %q, want the built bin/ipipstack to %s", copied, installedBin)
	}
	if name, _, _ := strings.Cut(user, ":"); name == "" || name == "root" || name == "0" {
		t.Errorf("Dockerfile: the last stage runs as USER %q, want a non-root user", user)
	}
	if len(health) < 2 || health[0] != installedBin || health[1] != "status" {
		t.Fatalf("Dockerfile: HEALTHCHECK CMD %q, want %s status …", health, installedBin)
	}
	if got := strings.Join(append(entry, cmd...), " "); got != installedBin+" run -c /etc/ipipstack/ipipstack.hcl" {
		t.Errorf("Dockerfile: ENTRYPOINT and CMD run %q, want %s run -c /etc/ipipstack/ipipstack.hcl", got, installedBin)
	}

	// The default command's flags: run with a missing file fails on the
	// file (exit 2, naming it), not on a flag.
	_, errOut, code := runCLI(t, cmd...)
	if code != 2 || !strings.Contains(errOut, "/etc/ipipstack/ipipstack.hcl") || strings.Contains(errOut, "flag") {
		t.Errorf("ipipstack %s: exit %d, %q; want exit 2 about the missing file", strings.Join(cmd, " "), code, errOut)
	}

	// The health check against a real daemon whose status server listens
	// where the check looks (the port replaced by a free one).
	statusPort := freePort(t, "tcp")
	args := strings.Join(health[1:], "\x00")
	if !strings.Contains(args, "127.0.0.1:9100") {
		t.Fatalf("HEALTHCHECK CMD %q does not ask 127.0.0.1:9100, the status default", health)
	}
	args = strings.ReplaceAll(args, "127.0.0.1:9100", addr(statusPort))
	cfg := writeFile(t, "d.hcl", fmt.Sprintf(`status {
  listen = %q
}
tunnel "p" {
  transport = "udp"
  local     = %q
  remote    = %q
  addresses = ["10.98.0.1/30"]
}
`, addr(statusPort), addr(freePort(t, "udp")), addr(freePort(t, "udp"))))
	d := start(t, "daemon", "run", "-c", cfg)
	d.waitReady(t, addr(statusPort))
	out, errOut, code := runCLI(t, strings.Split(args, "\x00")...)
	if code != 0 {
		t.Errorf("health check ipipstack %s on a ready daemon: exit %d, want 0\n%s%s", strings.Join(health[1:], " "), code, out, errOut)
	}
	d.stop(t, 10*time.Second)
	if _, _, code := runCLI(t, strings.Split(args, "\x00")...); code == 0 {
		t.Errorf("health check ipipstack %s with the daemon stopped: exit 0, want non-zero", strings.Join(health[1:], " "))
	}
}
