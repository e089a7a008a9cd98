package cli

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/config"
)

// check warns about the capabilities the file needs that the process
// lacks, and still says OK: the file is valid.
func TestCheckWarnsMissingCapabilities(t *testing.T) {
	raw := writeFile(t, "raw.hcl", `tunnel "r" {
  transport = "raw"
  local     = "127.0.0.1"
  remote    = "127.0.0.2"
  addresses = ["10.99.0.1/30"]
}`)
	old := haveCapability
	haveCapability = func(int) bool { return false }
	defer func() { haveCapability = old }()
	out, errOut, code := cli(t, t.Context(), "check", "-c", raw)
	if code != ExitOK || !strings.Contains(out, ": OK") {
		t.Fatalf("check = %d, stdout %q; want 0 and OK", code, out)
	}
	want := raw + `: warning: tunnel "r" has transport = "raw", which needs CAP_NET_RAW, and this process lacks it: a raw tunnel needs CAP_NET_RAW:`
	if !strings.Contains(errOut, want) || !strings.Contains(errOut, "setcap cap_net_raw+ep") {
		t.Errorf("check stderr =\n%s\nwant a line starting %q", errOut, want)
	}

	haveCapability = func(int) bool { return true }
	if _, errOut, _ := cli(t, t.Context(), "check", "-c", raw); errOut != "" {
		t.Errorf("check with CAP_NET_RAW: stderr %q, want none", errOut)
	}
}

// The command line's slips get a hint.
func TestUsageHints(t *testing.T) {
	good := writeFile(t, "good.hcl", `tunnel "t" {
  local     = "127.0.0.1:4700"
  remote    = "127.0.0.1:4701"
  addresses = ["10.99.0.1/30"]
}`)
	tests := []struct {
		args []string
		code int
		out  string // in stdout
		err  string // in stderr
	}{
		{[]string{"help", "--help"}, ExitOK, "Usage: ipipstack <command>", ""},
		{[]string{"help", "-h"}, ExitOK, "Commands:", ""},
		{[]string{"run", good}, ExitUsage, "", `unexpected argument "` + good + `": did you mean 'ipipstack run -c ` + good + `'?`},
		{[]string{"check", good}, ExitUsage, "", `did you mean 'ipipstack check -c ` + good + `'?`},
		{[]string{"stauts"}, ExitUsage, "", `unknown command "stauts": did you mean "status"?`},
		{[]string{"run", "-c", good, "--log-levl", "debug"}, ExitUsage, "", `flag provided but not defined: -log-levl: did you mean --log-level?`},
		{[]string{"status", "--jsn"}, ExitUsage, "", `did you mean --json?`},
	}
	for _, tt := range tests {
		out, errOut, code := cli(t, t.Context(), tt.args...)
		if code != tt.code || !strings.Contains(out, tt.out) || !strings.Contains(errOut, tt.err) {
			t.Errorf("ipipstack %s = %d\nstdout:\n%s\nstderr:\n%s\nwant %d, stdout with %q, stderr with %q",
				strings.Join(tt.args, " "), code, out, errOut, tt.code, tt.out, tt.err)
		}
	}
}

// JSON logs write durations as Go duration strings, as the text format does.
func TestJSONLogDurations(t *testing.T) {
	var b strings.Builder
	log := newLogger(&b, config.Log{Format: config.LogJSON, Level: config.LogInfo})
	log.Info("x", "drain_timeout", 1500*time.Millisecond, slog.Group("g", "after", 2*time.Minute))
	for _, want := range []string{`"drain_timeout":"1.5s"`, `"g":{"after":"2m0s"}`} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("JSON log %s lacks %s", b.String(), want)
		}
	}
}
