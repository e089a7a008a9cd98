// Package daemon runs the ipipstack tunnel process: it maps a validated
// config.Config onto a stack.Stack and starts every service of the file on
// it (local and reverse forwards, SOCKS5 proxies, the TUN device and the
// HTTP status server), then stops them all in order.
//
// # Usage
//
//	cfg, diags := config.Load("tunnel.hcl")
//	...
//	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
//	defer stop()
//	err := daemon.Run(ctx, cfg, daemon.Options{Logger: log})
//
// Run returns when ctx is cancelled and everything is shut down. Callers
// that need the running daemon (its status, the addresses it bound) use
// [Start] and [Daemon.Shutdown] instead.
//
// # Shutdown
//
// Shutdown stops every listener at once, then waits for the open
// connections to finish on their own for up to Options.DrainTimeout, then
// closes what is left, the TUN device, the status server and the stack,
// and flushes the capture files. When it returns, every goroutine the
// daemon started has returned.
//
// # Peers and reload
//
// Tunnels with a keepalive probe their peer (keepalive.go); /readyz and
// Status.Ready say whether every such peer is up. Daemon.Reload applies a
// new configuration as a difference from the running one (reload.go), and
// Options.Reload is what POST /reload on the status server runs.
//
// # Privileges
//
// UDP tunnels, forwards, SOCKS5 and the status server need no privileges.
// Raw tunnels need CAP_NET_RAW and fail Start without it, with an error
// that says how to grant it ([MissingCapabilities] finds this before
// Start). A TUN device
// needs CAP_NET_ADMIN; without it the daemon logs an error, reports the
// device as down in its status and runs the other services.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ipipstack/ipipstack/config"
	"github.com/ipipstack/ipipstack/endpoint/encap"
	"github.com/ipipstack/ipipstack/internal/buildinfo"
	"github.com/ipipstack/ipipstack/service"
	"github.com/ipipstack/ipipstack/stack"
)

// DefaultDrainTimeout is how long Shutdown lets open connections finish
// when Options.DrainTimeout is 0.
const DefaultDrainTimeout = 10 * time.Second

// statusShutdownTimeout bounds the wait for in-flight status requests.
const statusShutdownTimeout = 2 * time.Second

// Options configure a Daemon. The zero value is usable.
type Options struct {
	// Logger receives what came up and what happened. Nil discards logs.
	Logger *slog.Logger
	// DrainTimeout bounds how long Run (on cancellation) waits for open
	// connections before it closes them. 0 means DefaultDrainTimeout;
	// negative means close at once.
	DrainTimeout time.Duration
	// StartTUN creates the TUN device of a config with a tun block. Nil
	// means the built-in one.
	StartTUN TUNStarter
	// Reload, if set, is what POST /reload on the status server runs:
	// re-read the configuration file and apply it with Daemon.Reload (see
	// reload.go). Nil answers 501.
	Reload ReloadFunc
}

func (o *Options) drainTimeout() time.Duration {
	switch {
	case o.DrainTimeout == 0:
		return DefaultDrainTimeout
	case o.DrainTimeout < 0:
		return 0
	}
	return o.DrainTimeout
}

// Daemon is a running tunnel process. Its methods are safe for concurrent
// use.
type Daemon struct {
	cfg     *config.Config
	opts    Options
	log     *slog.Logger
	build   buildinfo.Info
	started time.Time

	st       *stack.Stack
	drops    *dropWatch // logs the tunnels' drops; nil before the stack is up
	captures []*captureFile
	services []*svc // in the order of Status.Services

	statusLn   net.Listener
	statusSrv  *http.Server
	statusDone chan struct{}
	statusErrs service.AcceptErrors // the status listener's failed accepts

	peers peers // keepalive.go
	// reloadMu serializes Reload (reload.go), which replaces cfg and
	// services under mu.
	reloadMu sync.Mutex
	// diagSlots bounds the diagnostics running at once (diag.go).
	diagOnce  sync.Once
	diagSlots chan struct{}

	draining     atomic.Bool
	shutdownOnce sync.Once
	shutdownErr  error

	mu sync.Mutex
	// The fields below are guarded by mu.
	tun       io.Closer
	tunStatus TUNStatus
}

// Run starts the daemon, serves until ctx is cancelled, and then shuts it
// down, draining open connections for up to opts.DrainTimeout. It returns
// an error if the daemon could not start or did not stop cleanly; an
// orderly shutdown that had to cut connections is logged, not an error.
func Run(ctx context.Context, cfg *config.Config, opts Options) error {
	d, err := Start(ctx, cfg, opts)
	if err != nil {
		return err
	}
	<-ctx.Done()
	d.log.Info("shutting down", "cause", context.Cause(ctx), "drain_timeout", opts.drainTimeout())
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), opts.drainTimeout())
	defer cancel()
	return d.Shutdown(dctx)
}

// Start brings up the stack and every service of cfg and returns once they
// are all listening. On error, everything started so far is closed again.
// ctx bounds Start only; stop the daemon with Shutdown.
func Start(ctx context.Context, cfg *config.Config, opts Options) (_ *Daemon, err error) {
	if cfg == nil {
		return nil, errors.New("daemon: nil config")
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d := &Daemon{cfg: cfg, opts: opts, log: log, build: buildinfo.Get(), started: time.Now()}
	log.Info("starting ipipstack", "version", d.build.Version, "go", d.build.GoVersion, "gvisor", d.build.GVisor)

	sc, err := stackConfig(cfg)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			d.closeAll(context.Background())
		}
	}()
	for i := range cfg.Tunnels {
		t := &cfg.Tunnels[i]
		if t.Capture == "" {
			continue
		}
		c, err := openCapture(t.Capture, log.With("tunnel", t.Name))
		if err != nil {
			return nil, fmt.Errorf("daemon: tunnel %q: %w", t.Name, err)
		}
		d.captures = append(d.captures, c)
		sc.Tunnels[i].Capture = c
	}
	sc.Logger = log
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("daemon: %w", err)
	}
	d.st, err = stack.New(sc)
	if err != nil {
		return nil, fmt.Errorf("daemon: %w", explainStartError(err))
	}
	d.drops = startDropWatch(d.st, log)
	for _, ts := range d.st.Stats() {
		t := d.tunnelConfig(ts.Name)
		log.Info("tunnel ready", "tunnel", ts.Name, "transport", t.Transport.String(),
			"local", ts.Local.String(), "remote", t.Remote.String(), "addresses", fmt.Sprint(t.Addresses),
			"routes", fmt.Sprint(t.RoutePrefixes()), "mtu", ts.MTU, "capture", t.Capture, "roaming", t.Roaming)
		d.watchPeer(t)
	}

	for _, s := range newServices(cfg, d.st, log) {
		if err := s.srv.Start(ctx); err != nil {
			s.srv.Close()
			return nil, &serviceError{s.kind, s.name, err}
		}
		d.services = append(d.services, s)
		args := []any{"kind", s.kind, "service", s.name, "protocol", s.proto, "listen", s.listenAddr()}
		if s.target != "" {
			args = append(args, "target", s.target)
		}
		log.Info("service listening", args...)
	}

	if cfg.TUN != nil {
		d.startTUN(ctx)
	}

	// The status server comes last, so that an answer from it means
	// everything else is up.
	if cfg.Status.Enabled() {
		if err := d.startStatus(); err != nil {
			return nil, err
		}
	}
	log.Info("ipipstack running", "tunnels", len(cfg.Tunnels), "services", len(d.services))
	return d, nil
}

// startTUN creates the TUN device. Failure is logged and leaves the rest
// of the daemon running.
func (d *Daemon) startTUN(ctx context.Context) {
	o := TUNOptions{
		Name:      d.cfg.TUN.Name,
		Addresses: clonePrefixes(d.cfg.TUN.Addresses),
		Routes:    clonePrefixes(d.cfg.TUN.Routes),
		MTU:       tunMTU(d.cfg),
		Logger:    d.log.With("tun", d.cfg.TUN.Name),
	}
	d.mu.Lock()
	d.tunStatus = TUNStatus{Name: o.Name, MTU: o.MTU}
	d.mu.Unlock()
	fail := func(err error) {
		d.log.Error("TUN device not created; continuing without it", "tun", o.Name, "err", err)
		d.mu.Lock()
		d.tunStatus.Error = err.Error()
		d.mu.Unlock()
	}
	if !hasNetAdmin() {
		fail(errNeedNetAdmin)
		return
	}
	start := d.opts.StartTUN
	if start == nil {
		start = defaultStartTUN
	}
	dev, err := start(ctx, d.st, o)
	if err != nil {
		if isPermission(err) {
			err = fmt.Errorf("%w: %w", errNeedNetAdmin, err)
		}
		fail(err)
		return
	}
	d.mu.Lock()
	d.tun = dev
	d.tunStatus.Up = true
	d.mu.Unlock()
	d.log.Info("TUN device up", "tun", o.Name, "addresses", fmt.Sprint(o.Addresses),
		"routes", fmt.Sprint(o.Routes), "mtu", o.MTU)
}

func (d *Daemon) startStatus() error {
	ln, err := net.Listen("tcp", d.cfg.Status.Listen.String())
	if err != nil {
		return fmt.Errorf("daemon: status server: %w", err)
	}
	ln = d.statusListener(ln)
	d.statusLn = ln
	d.statusSrv = &http.Server{
		Handler:           d.Handler(),
		ReadHeaderTimeout: statusReadHeaderTimeout,
		IdleTimeout:       statusIdleTimeout,
		MaxHeaderBytes:    statusMaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(d.log.Handler(), slog.LevelDebug),
	}
	d.statusDone = make(chan struct{})
	go func() {
		defer close(d.statusDone)
		if err := d.statusSrv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			d.log.Error("status server stopped", "err", err)
		}
	}()
	d.log.Info("status server listening", "listen", ln.Addr().String(), "endpoints", "/status /metrics /healthz /readyz")
	return nil
}

// StatusAddr returns the address the status server listens on, or nil if
// it is disabled.
func (d *Daemon) StatusAddr() net.Addr {
	if d.statusLn == nil {
		return nil
	}
	return d.statusLn.Addr()
}

// Stack returns the daemon's stack.
func (d *Daemon) Stack() *stack.Stack { return d.st }

// Handler returns the status server's handler (/status, /metrics,
// /healthz, /readyz, POST /reload, and the diagnostics POST /v1/ping and
// /v1/traceroute of diag.go), for tests and for embedding it elsewhere.
func (d *Daemon) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/status", d.serveStatus)
	metrics := d.metricsHandler()
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, r *http.Request) { d.serveMetrics(w, r, metrics) })
	mux.HandleFunc("/healthz", serveHealthz)
	mux.HandleFunc("/readyz", d.serveReadyz)
	mux.HandleFunc("/reload", d.serveReload)
	d.diagRoutes(mux)
	mux.HandleFunc("/", serveIndex)
	return mux
}

// Shutdown stops the daemon: every service stops accepting at once, open
// connections may finish until ctx is done, and then everything is closed.
// It returns when all of the daemon's goroutines have; calling it again
// returns the first call's result.
func (d *Daemon) Shutdown(ctx context.Context) error {
	d.shutdownOnce.Do(func() { d.shutdownErr = d.closeAll(ctx) })
	return d.shutdownErr
}

// closeAll drains and closes whatever has been started. It also cleans up
// after a failed Start.
func (d *Daemon) closeAll(ctx context.Context) error {
	d.draining.Store(true)
	// A reload in progress finishes first, and none starts after.
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	services := d.serviceList()
	var errs []error
	begin := time.Now()
	var active int64
	for _, s := range services {
		active += s.status().Active
	}
	if len(services) > 0 {
		d.log.Info("stopped accepting; draining connections", "active", active)
	}
	var (
		wg  sync.WaitGroup
		mu  sync.Mutex
		cut []string
	)
	for _, s := range services {
		wg.Go(func() {
			err := s.srv.Shutdown(ctx)
			if err == nil {
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
				cut = append(cut, s.kind+" "+s.name)
				return
			}
			errs = append(errs, fmt.Errorf("daemon: %s %q: %w", s.kind, s.name, err))
		})
	}
	wg.Wait()
	if len(cut) > 0 {
		d.log.Warn("drain timed out; closed the remaining connections", "services", cut, "after", time.Since(begin).Round(time.Millisecond))
	} else if len(services) > 0 {
		d.log.Info("services stopped", "after", time.Since(begin).Round(time.Millisecond))
	}

	d.mu.Lock()
	tun := d.tun
	d.tun = nil
	d.tunStatus.Up = false
	d.mu.Unlock()
	if tun != nil {
		if err := tun.Close(); err != nil {
			errs = append(errs, fmt.Errorf("daemon: TUN device: %w", err))
		}
	}

	if d.statusSrv != nil {
		sctx, cancel := context.WithTimeout(context.Background(), statusShutdownTimeout)
		if err := d.statusSrv.Shutdown(sctx); err != nil {
			d.statusSrv.Close()
		}
		cancel()
		<-d.statusDone
	}

	d.stopPeers()
	d.drops.close()
	if d.st != nil {
		if err := d.st.Close(); err != nil {
			errs = append(errs, fmt.Errorf("daemon: %w", err))
		}
		for _, ts := range d.st.Stats() {
			d.log.Info("tunnel closed", "tunnel", ts.Name, "rx_packets", ts.RxPackets, "tx_packets", ts.TxPackets,
				"rx_bytes", ts.RxBytes, "tx_bytes", ts.TxBytes, "drops", ts.DropTotal())
		}
	}
	for _, c := range d.captures {
		n, err := c.Close()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		d.log.Info("capture closed", "file", c.path, "records", n)
	}
	err := errors.Join(errs...)
	if err != nil {
		d.log.Error("shutdown finished with errors", "err", err)
	} else {
		d.log.Info("stopped")
	}
	return err
}

// tunnelConfig returns the tunnel block named name, or nil.
func (d *Daemon) tunnelConfig(name string) *config.Tunnel {
	cfg := d.config() // reload.go
	for i := range cfg.Tunnels {
		if cfg.Tunnels[i].Name == name {
			return &cfg.Tunnels[i]
		}
	}
	return nil
}

// reasonNames returns the names of the drop reasons: encap.OK excepted,
// QueueFull included.
func reasonNames() []string {
	out := make([]string, 0, encap.NumReasons)
	for r := 1; r < encap.NumReasons; r++ {
		out = append(out, encap.Reason(r).String())
	}
	return append(out, QueueFull)
}
