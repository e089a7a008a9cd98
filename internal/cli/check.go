package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/ipipstack/ipipstack/config"
	"github.com/ipipstack/ipipstack/daemon"
)

var checkCmd = &command{
	name:    "check",
	summary: "validate a configuration file",
	usage:   "ipipstack check -c FILE",
	doc: `Parse and validate FILE without starting anything (no socket is opened).
Problems are printed on stderr as file:line:col with the offending text
underlined; warnings do not make the file invalid. A valid file prints
"FILE: OK" and a one-line summary on stdout.

Check also warns (on stderr, still exit 0) about the capabilities the file
needs that this process lacks: CAP_NET_RAW for a raw tunnel, CAP_NET_ADMIN
for a TUN device. Run it as the user that will run the daemon.

Exit status: 0 valid, 2 invalid (or unreadable).`,
	flags: `  -c, --config FILE
        configuration file to check (required)
`,
	example: `  ipipstack check -c examples/two-peers-a.hcl
`,
}

func init() { checkCmd.run = runCheck }

func runCheck(_ context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	var file string
	fs.StringVar(&file, "c", "", "")
	fs.StringVar(&file, "config", "", "")
	if ok, code := parseFlags(checkCmd, fs, args, stdout, stderr); !ok {
		return code
	}
	if file == "" {
		return usageError(checkCmd, stderr, "missing -c FILE")
	}
	cfg, code := loadConfig(file, stderr)
	if cfg == nil {
		return code
	}
	for _, m := range daemon.MissingCapabilities(cfg, haveCapability) {
		fmt.Fprintf(stderr, "%s: warning: %s, which needs %s, and this process lacks it: %s\n", file, m.Why, m.Name, m.Hint)
	}
	fmt.Fprintf(stdout, "%s: OK\n%s\n", file, summary(cfg))
	return ExitOK
}

// haveCapability tells check which capabilities the process has; nil
// asks the process itself. Tests replace it.
var haveCapability func(bit int) bool

// loadConfig loads file and prints its diagnostics on stderr. It returns
// nil and ExitUsage if the file is invalid.
func loadConfig(file string, stderr io.Writer) (*config.Config, int) {
	var p config.Parser
	cfg, diags := p.Load(file)
	if len(diags) > 0 {
		p.WriteDiagnostics(stderr, diags, isTerminal(stderr))
	}
	if diags.HasErrors() || cfg == nil {
		fmt.Fprintf(stderr, "%s: invalid configuration (%s)\n", file, countErrors(diags))
		return nil, ExitUsage
	}
	return cfg, ExitOK
}

// loadConfigForRun is loadConfig for run: errors are printed on stderr as
// text (there is no logger before the file is valid), and warnings are
// returned, to be logged with logWarnings once the logger exists, so that
// all of run's output is in its log format.
func loadConfigForRun(file string, stderr io.Writer) (*config.Config, hcl.Diagnostics, int) {
	var p config.Parser
	cfg, diags := p.Load(file)
	if diags.HasErrors() || cfg == nil {
		p.WriteDiagnostics(stderr, diags, isTerminal(stderr))
		fmt.Fprintf(stderr, "%s: invalid configuration (%s)\n", file, countErrors(diags))
		return nil, nil, ExitUsage
	}
	return cfg, diags, ExitOK
}

// logWarnings logs each configuration warning at warn level with the
// file:line:col of its subject.
func logWarnings(log *slog.Logger, diags hcl.Diagnostics) {
	for _, d := range diags {
		if d.Severity != hcl.DiagWarning {
			continue
		}
		args := []any{"detail", d.Detail}
		if r := d.Subject; r != nil {
			args = append([]any{"at", fmt.Sprintf("%s:%d:%d", r.Filename, r.Start.Line, r.Start.Column)}, args...)
		}
		log.Warn("configuration warning: "+d.Summary, args...)
	}
}

func countErrors(diags interface{ Errs() []error }) string {
	return plural(len(diags.Errs()), "error")
}

// summary describes cfg in one line.
func summary(cfg *config.Config) string {
	var names []string
	for _, t := range cfg.Tunnels {
		names = append(names, t.Name)
	}
	parts := []string{
		plural(len(cfg.Tunnels), "tunnel") + " (" + strings.Join(names, ", ") + ")",
		plural(len(cfg.Forwards), "forward"),
		plural(len(cfg.Reverses), "reverse forward"),
		plural(len(cfg.SOCKS5), "SOCKS5 proxy"),
	}
	if cfg.Status.Enabled() {
		parts = append(parts, "status on "+cfg.Status.Listen.String())
	} else {
		parts = append(parts, "no status server")
	}
	if cfg.TUN != nil {
		parts = append(parts, "TUN device "+cfg.TUN.Name)
	}
	return strings.Join(parts, ", ")
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	if strings.HasSuffix(noun, "y") && !strings.HasSuffix(noun, "ey") {
		return fmt.Sprintf("%d %sies", n, strings.TrimSuffix(noun, "y"))
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
