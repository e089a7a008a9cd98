package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"

	"github.com/ipipstack/ipipstack/config"
	"github.com/ipipstack/ipipstack/daemon"
)

var runCmd = &command{
	name:    "run",
	summary: "run the tunnel process from a configuration file",
	usage:   "ipipstack run -c FILE [--log-format text|json] [--log-level debug|info|warn|error] [--drain-timeout 10s]",
	doc: `Bring up the tunnels of FILE and serve its forwards, reverse forwards,
SOCKS5 proxies, TUN device and status server until SIGINT or SIGTERM.

On SIGHUP (or "ipipstack reload -c FILE") the process re-reads FILE and
applies what changed: unchanged tunnels and services keep running with their
connections, removed ones drain and stop, changed ones restart, added ones
start. An invalid file is logged with its diagnostics and the running
configuration stays.

On the signal, every listener closes at once and open connections get up to
--drain-timeout to finish; then the rest are closed, the stack is shut down
and capture files are flushed. A second signal cuts the drain short.

Configuration warnings (such as a listener other hosts can reach) are logged
at warn level with their file:line:col.

A TUN device that cannot be created (it needs CAP_NET_ADMIN, or root) is
logged as an error and the other services keep running; it does not change
the exit status. Logs go to stderr; in JSON, durations are strings ("1.5s").

At the default level (info) the log warns, each at most every 10 s per
service or once a minute per tunnel with a count of the rest: a failed dial
of a forward's or reverse forward's target or of a SOCKS5 CONNECT (service,
target, reason), and the first packet a tunnel drops for each reason (outer
and inner addresses, with a hint).

Exit status: 0 after a clean shutdown, 1 if something failed to start or
stop, 2 if FILE is invalid.`,
	flags: `  -c, --config FILE
        configuration file (required)
  --log-format text|json
        log format; overrides the file's log block
  --log-level debug|info|warn|error
        minimum log level; overrides the file's log block
  --drain-timeout DURATION
        how long open connections may finish after SIGINT/SIGTERM (default 10s)
`,
	example: `  ipipstack run -c examples/two-peers-b.hcl &
  ipipstack run -c examples/two-peers-a.hcl --log-level debug
`,
}

func init() { runCmd.run = runRun }

// shutdownSignals stop the daemon.
var shutdownSignals = []os.Signal{syscall.SIGINT, syscall.SIGTERM}

func runRun(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	var (
		file, logFormat, logLevel string
		drain                     = daemon.DefaultDrainTimeout
	)
	fs.StringVar(&file, "c", "", "")
	fs.StringVar(&file, "config", "", "")
	fs.StringVar(&logFormat, "log-format", "", "")
	fs.StringVar(&logLevel, "log-level", "", "")
	fs.DurationVar(&drain, "drain-timeout", drain, "")
	if ok, code := parseFlags(runCmd, fs, args, stdout, stderr); !ok {
		return code
	}
	if file == "" {
		return usageError(runCmd, stderr, "missing -c FILE")
	}
	if drain < 0 {
		return usageError(runCmd, stderr, "--drain-timeout must not be negative, not %v", drain)
	}
	format, level, err := logOverrides(logFormat, logLevel)
	if err != nil {
		return usageError(runCmd, stderr, "%v", err)
	}
	cfg, warnings, code := loadConfigForRun(file, stderr)
	if cfg == nil {
		return code
	}
	if format != nil {
		cfg.Log.Format = *format
	}
	if level != nil {
		cfg.Log.Level = *level
	}
	log := newLogger(stderr, cfg.Log)
	logWarnings(log, warnings)

	// Signals: the first starts the shutdown, a second cuts the drain short.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, shutdownSignals...)
	defer signal.Stop(sigs)

	// SIGHUP reloads the file (reload.go); without this, it would kill
	// the process.
	hups := make(chan os.Signal, 1)
	signal.Notify(hups, syscall.SIGHUP)
	defer signal.Stop(hups)

	var running atomic.Pointer[daemon.Daemon]
	opts := daemon.Options{Logger: log, DrainTimeout: drain, Reload: reloader(file, format, level, log, running.Load)}
	if drain == 0 {
		opts.DrainTimeout = -1 // close at once
	}
	d, err := daemon.Start(ctx, cfg, opts)
	if err != nil {
		log.Error("failed to start", "err", err)
		return ExitFailure
	}
	running.Store(d)
wait:
	for {
		select {
		case sig := <-sigs:
			log.Info("received signal; shutting down", "signal", sig.String(), "drain_timeout", drain)
			break wait
		case <-ctx.Done():
			log.Info("shutting down", "cause", context.Cause(ctx), "drain_timeout", drain)
			break wait
		case <-hups:
			// In the background, so that SIGTERM is heard while a
			// reload drains; the daemon serializes reloads, and
			// Shutdown waits for the one in progress.
			go opts.Reload(context.WithoutCancel(ctx)) // it logs its outcome
		}
	}
	dctx, cancel := context.WithTimeout(context.Background(), drain)
	defer cancel()
	go func() {
		select {
		case sig := <-sigs:
			log.Warn("received second signal; closing connections now", "signal", sig.String())
			cancel()
		case <-dctx.Done():
		}
	}()
	if err := d.Shutdown(dctx); err != nil {
		return ExitFailure
	}
	return ExitOK
}

// logOverrides parses the --log-format and --log-level flags; nil means
// not given.
func logOverrides(format, level string) (*config.LogFormat, *config.LogLevel, error) {
	var f *config.LogFormat
	var l *config.LogLevel
	switch format {
	case "":
	case "text":
		f = ptr(config.LogText)
	case "json":
		f = ptr(config.LogJSON)
	default:
		return nil, nil, fmt.Errorf("invalid --log-format %q: want text or json", format)
	}
	switch level {
	case "":
	case "debug":
		l = ptr(config.LogDebug)
	case "info":
		l = ptr(config.LogInfo)
	case "warn":
		l = ptr(config.LogWarn)
	case "error":
		l = ptr(config.LogError)
	default:
		return nil, nil, fmt.Errorf("invalid --log-level %q: want debug, info, warn or error", level)
	}
	return f, l, nil
}

func ptr[T any](v T) *T { return &v }

// newLogger returns the daemon's logger, writing to w.
func newLogger(w io.Writer, c config.Log) *slog.Logger {
	ho := &slog.HandlerOptions{Level: c.Level.SlogLevel()}
	if c.Format == config.LogJSON {
		ho.ReplaceAttr = durationString
		return slog.New(slog.NewJSONHandler(w, ho))
	}
	return slog.New(slog.NewTextHandler(w, ho))
}

// durationString writes a time.Duration as its string ("1.5s") instead of
// slog's JSON default, an integer of nanoseconds no reader can take in at
// a glance; the text format already does so.
func durationString(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		return slog.String(a.Key, a.Value.Duration().String())
	}
	return a
}
