package cli

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/ipipstack/ipipstack/config"
	"github.com/ipipstack/ipipstack/daemon"
)

var reloadCmd = &command{
	name:    "reload",
	summary: "make a running process re-read its configuration file",
	usage:   "ipipstack reload -c FILE [--pid PID] [--timeout 30s]",
	doc: `Ask the ipipstack running FILE to re-read it and apply what changed, without
a restart: tunnels, forwards, reverse forwards and SOCKS5 proxies that did not
change keep running with their connections; removed ones drain and stop;
changed ones restart; added ones start. An invalid file is rejected and the
running configuration stays. The log, status, stack and tun blocks take
effect at the next restart.

With --pid, the process gets SIGHUP, as "kill -HUP PID" does, and its log
says how the reload went. Otherwise the request goes to the status server of
FILE's status block (POST /reload), and the answer is printed: the file's
diagnostics if it is invalid.

Exit status: 0 when the reload was applied (or SIGHUP sent), 1 if it failed
or the process cannot be reached, 2 on a usage error or if FILE is invalid
or has no status block (and no --pid is given).`,
	flags: `  -c, --config FILE
        the configuration file the process runs (required)
  --pid PID
        send SIGHUP to this process instead of calling its status server
  --timeout DURATION
        give up on the request after this long (default 30s)
`,
	example: `  ipipstack reload -c examples/two-peers-a.hcl
  ipipstack reload -c tunnel.hcl --pid "$(pidof ipipstack)"
`,
}

func init() { reloadCmd.run = runReload }

func runReload(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("reload", flag.ContinueOnError)
	var (
		file    string
		pid     int
		timeout = 30 * time.Second
	)
	fs.StringVar(&file, "c", "", "")
	fs.StringVar(&file, "config", "", "")
	fs.IntVar(&pid, "pid", 0, "")
	fs.DurationVar(&timeout, "timeout", timeout, "")
	if ok, code := parseFlags(reloadCmd, fs, args, stdout, stderr); !ok {
		return code
	}
	if file == "" {
		return usageError(reloadCmd, stderr, "missing -c FILE")
	}
	if timeout <= 0 {
		return usageError(reloadCmd, stderr, "--timeout must be positive")
	}
	// The file is checked here too, so that its errors show where the
	// user typed the command.
	cfg, code := loadConfig(file, stderr)
	if cfg == nil {
		return code
	}
	if pid != 0 {
		if err := sendHUP(pid); err != nil {
			fmt.Fprintf(stderr, "ipipstack reload: SIGHUP to process %d: %v\n", pid, err)
			return ExitFailure
		}
		fmt.Fprintf(stdout, "sent SIGHUP to process %d; its log says how the reload went\n", pid)
		return ExitOK
	}
	if !cfg.Status.Enabled() {
		fmt.Fprintf(stderr, "ipipstack reload: %s has no status block to reach the process through; give --pid PID to send it SIGHUP\n", file)
		return ExitUsage
	}
	url := "http://" + dialable(cfg.Status.Listen).String() + "/reload"
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, nil)
	if err != nil {
		fmt.Fprintf(stderr, "ipipstack reload: %v\n", err)
		return ExitFailure
	}
	c := &http.Client{Transport: &http.Transport{Proxy: nil}}
	defer c.CloseIdleConnections()
	resp, err := c.Do(req)
	if err != nil {
		fmt.Fprintf(stderr, "ipipstack reload: is ipipstack running %s? %v\n", file, err)
		return ExitFailure
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(stderr, "ipipstack reload: POST %s: %s\n%s\n", url, resp.Status, bytes.TrimSpace(body))
		return ExitFailure
	}
	stdout.Write(body)
	return ExitOK
}

// reloader returns the daemon.ReloadFunc of run: it re-reads file, applies
// the command line's log overrides, logs the diagnostics, and applies a
// valid file to the daemon that d returns (nil while it starts).
func reloader(file string, format *config.LogFormat, level *config.LogLevel, log *slog.Logger, d func() *daemon.Daemon) daemon.ReloadFunc {
	return func(ctx context.Context) error {
		dm := d()
		if dm == nil {
			return errors.New("the daemon is still starting; try again")
		}
		log.Info("reloading the configuration", "file", file)
		var p config.Parser
		cfg, diags := p.Load(file)
		if diags.HasErrors() || cfg == nil {
			var b strings.Builder
			p.WriteDiagnostics(&b, diags, false)
			for _, dg := range diags {
				if dg.Severity != hcl.DiagError {
					continue
				}
				args := []any{"detail", dg.Detail}
				if r := dg.Subject; r != nil {
					args = append([]any{"at", fmt.Sprintf("%s:%d:%d", r.Filename, r.Start.Line, r.Start.Column)}, args...)
				}
				log.Error("reload rejected: "+dg.Summary, args...)
			}
			log.Error("reload rejected: invalid configuration; the running configuration stays", "file", file, "errors", countErrors(diags))
			return fmt.Errorf("%s: invalid configuration (%s); the running configuration stays\n%s", file, countErrors(diags), b.String())
		}
		logWarnings(log, diags)
		if format != nil {
			cfg.Log.Format = *format
		}
		if level != nil {
			cfg.Log.Level = *level
		}
		return dm.Reload(ctx, cfg)
	}
}
