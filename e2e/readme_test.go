package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// walkthroughMarker precedes the README's walk-through block.
const walkthroughMarker = "<!-- walkthrough: e2e/readme_test.go runs the next sh block -->"

// walkthroughTools are the programs the walk-through uses besides
// ipipstack, as the README lists them.
var walkthroughTools = []string{"bash", "curl", "python3", "nc", "timeout"}

// step is one command of the walk-through and what its output must hold
// (the "#>" lines under it).
type step struct {
	cmd   string
	wants []string
}

// walkthrough returns the steps of the README's walk-through block:
// every line that is not blank or a comment is a command, joined with
// its backslash continuations; "#> text" lines under a command are what
// its output must contain.
func walkthrough(t *testing.T, readme string) []step {
	t.Helper()
	_, rest, ok := strings.Cut(readme, walkthroughMarker)
	if !ok {
		t.Fatalf("README.md has no %q", walkthroughMarker)
	}
	rest = strings.TrimLeft(rest, "\n")
	body, ok := strings.CutPrefix(rest, "```sh\n")
	if !ok {
		t.Fatalf("README.md: the walk-through marker is not followed by a ```sh block")
	}
	body, _, ok = strings.Cut(body, "\n```\n")
	if !ok {
		t.Fatal("README.md: the walk-through block does not end")
	}
	var steps []step
	cont := ""
	for _, l := range strings.Split(body, "\n") {
		trimmed := strings.TrimSpace(l)
		switch {
		case cont != "":
		case strings.HasPrefix(trimmed, "#>"):
			if len(steps) == 0 {
				t.Fatalf("README.md walk-through: %q before any command", l)
			}
			steps[len(steps)-1].wants = append(steps[len(steps)-1].wants, strings.TrimSpace(trimmed[2:]))
			continue
		case trimmed == "" || strings.HasPrefix(trimmed, "#"):
			continue
		}
		if s, ok := strings.CutSuffix(l, `\`); ok {
			cont += s + "\n"
			continue
		}
		steps = append(steps, step{cmd: cont + l})
		cont = ""
	}
	if cont != "" {
		t.Fatal("README.md walk-through ends in a continued line")
	}
	return steps
}

// TestREADMEWalkthrough runs the README's walk-through, command for
// command, with bash in a temporary directory holding the binary under
// test as bin/ipipstack and the example files, and checks each command's
// exit status and the output the README promises. The walk-through fixes
// its ports (those of examples/two-peers-*.hcl): if one is in use, the
// test skips. Every process the walk-through starts must have ended when
// it is done.
func TestREADMEWalkthrough(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	steps := walkthrough(t, string(readme))
	for _, tool := range walkthroughTools {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("IPIPSTACK_PRIVILEGED") == "1" {
				t.Fatalf("%s is not installed (IPIPSTACK_PRIVILEGED=1 requires it; make deps installs it)", tool)
			}
			t.Skipf("%s is not installed; skipping the README walk-through (make deps installs it, or set IPIPSTACK_PRIVILEGED=1 to make this a failure)", tool)
		}
	}
	// Keep the list above and the README's in step.
	for _, tool := range walkthroughTools {
		if !strings.Contains(string(readme), "`"+tool+"`") {
			t.Errorf("README.md does not list %s, which the walk-through uses", tool)
		}
	}

	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(bin, filepath.Join(dir, "bin", "ipipstack")); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "examples"), 0o755); err != nil {
		t.Fatal(err)
	}
	// The text whose 127.0.0.1 ports the walk-through fixes: its commands
	// and the example files.
	var fixed strings.Builder
	for _, s := range steps {
		fixed.WriteString(s.cmd + "\n")
	}
	for _, name := range []string{"two-peers-a.hcl", "two-peers-b.hcl", "tunnel-dns.py"} {
		b, err := os.ReadFile(filepath.Join("..", "examples", name))
		if err != nil {
			t.Fatal(err)
		}
		fixed.Write(b)
		if err := os.WriteFile(filepath.Join(dir, "examples", name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// Every one must be free, for TCP and UDP.
	for _, m := range regexp.MustCompile(`127\.0\.0\.1:(\d+)`).FindAllStringSubmatch(fixed.String(), -1) {
		if err := portFree(m[1]); err != nil {
			t.Skipf("the README walk-through needs port %s on 127.0.0.1, which is in use (%v); skipping", m[1], err)
		}
	}
	for _, p := range []string{"8000", "7007"} { // B's host services, given without the address
		if err := portFree(p); err != nil {
			t.Skipf("the README walk-through needs port %s on 127.0.0.1, which is in use (%v); skipping", p, err)
		}
	}

	// One bash script, each command between markers that carry its
	// number and exit status.
	var script strings.Builder
	for i, s := range steps {
		fmt.Fprintf(&script, "printf '\\n@@begin %d@@\\n'\n%s\nprintf '\\n@@end %d %%d@@\\n' \"$?\"\n", i, s.cmd, i)
	}
	scriptPath := filepath.Join(dir, "walkthrough.sh")
	if err := os.WriteFile(scriptPath, []byte(script.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", scriptPath)
	cmd.Dir = dir
	cmd.Env = env()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// Kill the whole group on timeout, and whatever is left at the end.
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	// A file, not a pipe: a process the walk-through leaves behind must
	// not keep Wait from returning (it is found below).
	outPath := filepath.Join(dir, "walkthrough.out")
	outFile, err := os.Create(outPath)
	if err != nil {
		t.Fatal(err)
	}
	defer outFile.Close()
	cmd.Stdout, cmd.Stderr = outFile, outFile
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pgid := cmd.Process.Pid
	t.Cleanup(func() { syscall.Kill(-pgid, syscall.SIGKILL) })
	runErr := cmd.Wait()
	b, _ := os.ReadFile(outPath)
	text := string(b)
	logs := func() string {
		a, _ := os.ReadFile(filepath.Join(dir, "a.log"))
		b, _ := os.ReadFile(filepath.Join(dir, "b.log"))
		return fmt.Sprintf("walk-through output:\n%s\na.log:\n%s\nb.log:\n%s", text, a, b)
	}
	if ctx.Err() != nil {
		t.Fatalf("the walk-through did not finish within 2 minutes\n%s", logs())
	}
	if runErr != nil {
		t.Errorf("bash walkthrough.sh: %v", runErr)
	}

	for i, s := range steps {
		_, seg, ok := strings.Cut(text, fmt.Sprintf("@@begin %d@@\n", i))
		if !ok {
			t.Errorf("step %d `%s` did not run", i, s.cmd)
			continue
		}
		seg, status, ok := strings.Cut(seg, fmt.Sprintf("@@end %d ", i))
		if !ok {
			t.Errorf("step %d `%s` did not finish", i, s.cmd)
			continue
		}
		if code, _, _ := strings.Cut(status, "@@"); code != "0" {
			t.Errorf("`%s` exited with %s, want 0; its output:\n%s", s.cmd, code, seg)
		}
		for _, w := range s.wants {
			if !strings.Contains(seg, w) {
				t.Errorf("`%s` printed %q; the README says it prints %q", s.cmd, seg, w)
			}
		}
	}

	// Every process it started has ended (the group is empty).
	deadline := time.Now().Add(10 * time.Second)
	for syscall.Kill(-pgid, 0) == nil {
		if time.Now().After(deadline) {
			ps, _ := exec.Command("ps", "-o", "pid,args", "-g", strconv.Itoa(pgid)).CombinedOutput()
			t.Errorf("the walk-through left processes running 10s after its end:\n%s", ps)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if t.Failed() {
		t.Log(logs())
	}
}

// portFree reports whether TCP and UDP port on 127.0.0.1 can be bound.
func portFree(port string) error {
	ln, err := net.Listen("tcp4", "127.0.0.1:"+port)
	if err != nil {
		return err
	}
	ln.Close()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:"+port)
	if err != nil {
		return err
	}
	pc.Close()
	return nil
}
