package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/ipipstack/ipipstack/config"
	"github.com/ipipstack/ipipstack/stack"
)

// Reload without a restart: Reload applies a new, valid configuration as
// a difference from the running one.
//
//   - Tunnels, forwards, reverse forwards and SOCKS5 proxies are matched by
//     kind and name. Those whose block is unchanged keep running and keep
//     their connections.
//   - Removed ones stop: a service stops accepting and its connections
//     may finish for up to Options.DrainTimeout; a tunnel's routes, NIC and
//     socket go (stack.Stack.RemoveTunnel).
//   - Changed ones restart (stop as removed, then start as added); a tunnel
//     whose routes are all that changed keeps running and has its routes
//     changed in place.
//   - Added ones start.
//   - The log, status, stack and tun blocks cannot change while the daemon
//     runs: a change to them is logged with a warning and takes effect at
//     the next restart.
//
// Services stop before tunnels go, and tunnels come before services
// start. Something that fails to start is logged and left out of the
// running configuration, so that the next reload tries it again.

// ReloadFunc re-reads the daemon's configuration and applies it; it is
// what SIGHUP and POST /reload do. An invalid file leaves the daemon as it
// was and returns an error that holds the diagnostics.
type ReloadFunc func(ctx context.Context) error

// config returns the running configuration.
func (d *Daemon) config() *config.Config {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cfg
}

// serviceList returns the running services, in the order of
// Status.Services.
func (d *Daemon) serviceList() []*svc {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.services)
}

// svcKey identifies a service across configurations.
type svcKey struct{ kind, name string }

// serviceBlocks returns the service blocks of cfg by key, in order.
func serviceBlocks(cfg *config.Config) ([]svcKey, map[svcKey]any) {
	var keys []svcKey
	blocks := map[svcKey]any{}
	for _, f := range cfg.Forwards {
		k := svcKey{KindForward, f.Name}
		keys, blocks[k] = append(keys, k), f
	}
	for _, r := range cfg.Reverses {
		k := svcKey{KindReverse, r.Name}
		keys, blocks[k] = append(keys, k), r
	}
	for _, s := range cfg.SOCKS5 {
		k := svcKey{KindSOCKS5, s.Name}
		keys, blocks[k] = append(keys, k), s
	}
	return keys, blocks
}

// Reload applies cfg, which must be valid (config.Load without errors),
// as a difference from the running configuration (see above). It returns
// an error if something could not be stopped or started; the rest is
// applied nonetheless. Reloads are serialized; Reload fails once Shutdown
// has begun.
func (d *Daemon) Reload(ctx context.Context, cfg *config.Config) error {
	if cfg == nil {
		return errors.New("daemon: reload: nil config")
	}
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	if d.draining.Load() {
		return errors.New("daemon: reload: the daemon is shutting down")
	}
	old := d.config()
	begin := time.Now()
	// eff is what runs afterwards: cfg, less what failed to start, with
	// the blocks that cannot change taken from old.
	eff := *cfg
	eff.Log, eff.Status, eff.Stack, eff.TUN = old.Log, old.Status, old.Stack, old.TUN
	for _, c := range []struct {
		block   string
		changed bool
	}{
		{"log", !reflect.DeepEqual(old.Log, cfg.Log)},
		{"status", !reflect.DeepEqual(old.Status, cfg.Status)},
		{"stack", !reflect.DeepEqual(old.Stack, cfg.Stack)},
		{"tun", !reflect.DeepEqual(old.TUN, cfg.TUN)},
	} {
		if c.changed {
			d.log.Warn("reload: the "+c.block+" block changed; it cannot change while the daemon runs and takes effect at the next restart", "block", c.block)
		}
	}

	// The tunnels' fate.
	oldTun := map[string]*config.Tunnel{}
	for i := range old.Tunnels {
		oldTun[old.Tunnels[i].Name] = &old.Tunnels[i]
	}
	newTun := map[string]*config.Tunnel{}
	for i := range cfg.Tunnels {
		newTun[cfg.Tunnels[i].Name] = &cfg.Tunnels[i]
	}
	var removeTun, addTun, rerouteTun []string
	for _, t := range old.Tunnels {
		switch n := newTun[t.Name]; {
		case n == nil:
			removeTun = append(removeTun, t.Name)
		case reflect.DeepEqual(&t, n):
		case onlyRoutesDiffer(&t, n):
			rerouteTun = append(rerouteTun, t.Name)
		default:
			removeTun = append(removeTun, t.Name)
			addTun = append(addTun, t.Name)
		}
	}
	for _, t := range cfg.Tunnels {
		if oldTun[t.Name] == nil {
			addTun = append(addTun, t.Name)
		}
	}

	// The services' fate.
	oldKeys, oldBlocks := serviceBlocks(old)
	newKeys, newBlocks := serviceBlocks(cfg)
	running := map[svcKey]*svc{}
	for _, s := range d.serviceList() {
		running[svcKey{s.kind, s.name}] = s
	}
	var stopSvc []*svc
	startSvc := map[svcKey]bool{}
	for _, k := range oldKeys {
		nb, ok := newBlocks[k]
		if ok && reflect.DeepEqual(oldBlocks[k], nb) {
			continue
		}
		if s := running[k]; s != nil {
			stopSvc = append(stopSvc, s)
			delete(running, k)
		}
		if ok {
			startSvc[k] = true
		}
	}
	for _, k := range newKeys {
		if _, ok := oldBlocks[k]; !ok {
			startSvc[k] = true
		}
	}
	if len(removeTun)+len(addTun)+len(rerouteTun)+len(stopSvc)+len(startSvc) == 0 {
		d.mu.Lock()
		d.cfg = &eff
		d.mu.Unlock()
		d.log.Info("reload: nothing changed")
		return nil
	}
	d.log.Info("reload: applying", "tunnels_removed", removeTun, "tunnels_added", addTun, "tunnels_rerouted", rerouteTun,
		"services_stopped", len(stopSvc), "services_started", len(startSvc))

	var errs []error
	// 1. Stop the services that go or change, draining them together.
	d.mu.Lock()
	d.services = slices.DeleteFunc(d.services, func(s *svc) bool { return slices.Contains(stopSvc, s) })
	d.mu.Unlock()
	errs = append(errs, d.stopServices(ctx, stopSvc)...)

	// 2. Tunnels: removed (and changed) ones go, rerouted ones change
	// their routes, added (and changed) ones come.
	for _, name := range removeTun {
		d.unwatchPeer(name)
		if err := d.st.RemoveTunnel(name); err != nil {
			errs = append(errs, fmt.Errorf("daemon: reload: %w", err))
		}
		d.closeCapture(oldTun[name].Capture)
		d.log.Info("reload: tunnel removed", "tunnel", name)
	}
	for _, name := range rerouteTun {
		if err := d.reroute(oldTun[name], newTun[name]); err != nil {
			errs = append(errs, err)
		}
	}
	for _, name := range addTun {
		if err := d.addTunnel(newTun[name]); err != nil {
			errs = append(errs, err)
			d.log.Error("reload: tunnel not started; fix the file and reload again", "tunnel", name, "err", err)
			eff.Tunnels = slices.DeleteFunc(slices.Clone(eff.Tunnels), func(t config.Tunnel) bool { return t.Name == name })
		}
	}

	// 3. Start the services that are new or changed, in file order.
	var sub config.Config
	for _, f := range cfg.Forwards {
		if startSvc[svcKey{KindForward, f.Name}] {
			sub.Forwards = append(sub.Forwards, f)
		}
	}
	for _, r := range cfg.Reverses {
		if startSvc[svcKey{KindReverse, r.Name}] {
			sub.Reverses = append(sub.Reverses, r)
		}
	}
	for _, s := range cfg.SOCKS5 {
		if startSvc[svcKey{KindSOCKS5, s.Name}] {
			sub.SOCKS5 = append(sub.SOCKS5, s)
		}
	}
	for _, s := range newServices(&sub, d.st, d.log) {
		if err := s.srv.Start(ctx); err != nil {
			s.srv.Close()
			errs = append(errs, fmt.Errorf("daemon: reload: %s %q: %w", s.kind, s.name, err))
			d.log.Error("reload: service not started; fix the file and reload again", "kind", s.kind, "service", s.name, "err", err)
			eff.Forwards = slices.DeleteFunc(slices.Clone(eff.Forwards), func(f config.Forward) bool { return s.kind == KindForward && f.Name == s.name })
			eff.Reverses = slices.DeleteFunc(slices.Clone(eff.Reverses), func(f config.Reverse) bool { return s.kind == KindReverse && f.Name == s.name })
			eff.SOCKS5 = slices.DeleteFunc(slices.Clone(eff.SOCKS5), func(f config.SOCKS5) bool { return s.kind == KindSOCKS5 && f.Name == s.name })
			continue
		}
		running[svcKey{s.kind, s.name}] = s
		d.log.Info("reload: service listening", "kind", s.kind, "service", s.name, "protocol", s.proto, "listen", s.listenAddr())
	}
	// The services in the order of the new file.
	var list []*svc
	for _, k := range newKeys {
		if s := running[k]; s != nil {
			list = append(list, s)
		}
	}
	d.mu.Lock()
	d.services = list
	d.cfg = &eff
	d.mu.Unlock()

	err := errors.Join(errs...)
	if err != nil {
		d.log.Error("reload finished with errors", "err", err, "after", time.Since(begin).Round(time.Millisecond))
	} else {
		d.log.Info("reload done", "after", time.Since(begin).Round(time.Millisecond))
	}
	return err
}

// onlyRoutesDiffer reports whether a and b differ in their routes only.
func onlyRoutesDiffer(a, b *config.Tunnel) bool {
	x, y := *a, *b
	x.Routes, y.Routes = nil, nil
	return reflect.DeepEqual(x, y)
}

// reroute changes a running tunnel's routes from old's to new's.
func (d *Daemon) reroute(old, new *config.Tunnel) error {
	var errs []error
	for _, p := range old.Routes {
		if !slices.Contains(new.Routes, p) {
			if err := d.st.RemoveRoute(stack.Route{Prefix: p.Masked(), Tunnel: old.Name}); err != nil && !errors.Is(err, stack.ErrRouteNotFound) {
				errs = append(errs, fmt.Errorf("daemon: reload: %w", err))
			}
		}
	}
	for _, p := range new.Routes {
		if !slices.Contains(old.Routes, p) {
			if err := d.st.AddRoute(stack.Route{Prefix: p.Masked(), Tunnel: new.Name}); err != nil && !errors.Is(err, stack.ErrRouteExists) {
				errs = append(errs, fmt.Errorf("daemon: reload: %w", err))
			}
		}
	}
	d.log.Info("reload: tunnel routes changed", "tunnel", new.Name, "routes", fmt.Sprint(new.Routes))
	return errors.Join(errs...)
}

// addTunnel starts tunnel t in the running stack, with its capture file
// and its peer watch.
func (d *Daemon) addTunnel(t *config.Tunnel) error {
	st, err := stackTunnel(t)
	if err != nil {
		return err
	}
	if t.Capture != "" {
		c, err := openCapture(t.Capture, d.log.With("tunnel", t.Name))
		if err != nil {
			return fmt.Errorf("daemon: tunnel %q: %w", t.Name, err)
		}
		d.mu.Lock()
		d.captures = append(d.captures, c)
		d.mu.Unlock()
		st.Capture = c
	}
	if err := d.st.AddTunnel(st); err != nil {
		d.closeCapture(t.Capture)
		return fmt.Errorf("daemon: reload: %w", err)
	}
	d.log.Info("reload: tunnel added", "tunnel", t.Name, "transport", t.Transport.String(), "local", t.Local.String(),
		"remote", t.Remote.String(), "addresses", fmt.Sprint(t.Addresses), "routes", fmt.Sprint(t.RoutePrefixes()))
	d.watchPeer(t)
	return nil
}

// closeCapture closes and forgets the capture file at path, if any.
func (d *Daemon) closeCapture(path string) {
	if path == "" {
		return
	}
	d.mu.Lock()
	i := slices.IndexFunc(d.captures, func(c *captureFile) bool { return c.path == path })
	var c *captureFile
	if i >= 0 {
		c = d.captures[i]
		d.captures = slices.Delete(slices.Clone(d.captures), i, i+1)
	}
	d.mu.Unlock()
	if c == nil {
		return
	}
	if n, err := c.Close(); err != nil {
		d.log.Error("capture not flushed", "file", path, "err", err)
	} else {
		d.log.Info("capture closed", "file", path, "records", n)
	}
}

// stopServices stops ss at once, letting their connections finish for up
// to the drain timeout (and ctx), then closing the rest.
func (d *Daemon) stopServices(ctx context.Context, ss []*svc) []error {
	if len(ss) == 0 {
		return nil
	}
	dctx, cancel := context.WithTimeout(ctx, d.opts.drainTimeout())
	defer cancel()
	errc := make(chan error, len(ss))
	for _, s := range ss {
		go func() {
			err := s.srv.Shutdown(dctx)
			switch {
			case err == nil:
				d.log.Info("reload: service stopped", "kind", s.kind, "service", s.name)
			case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled):
				d.log.Warn("reload: drain timed out; closed the service's remaining connections", "kind", s.kind, "service", s.name)
				err = nil
			default:
				err = fmt.Errorf("daemon: reload: %s %q: %w", s.kind, s.name, err)
			}
			errc <- err
		}()
	}
	var errs []error
	for range ss {
		if err := <-errc; err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// serveReload runs Options.Reload for POST /reload: 200 when applied, 422
// with the diagnostics when the file is invalid or something failed.
func (d *Daemon) serveReload(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		http.Error(w, "method not allowed: POST to reload the configuration file", http.StatusMethodNotAllowed)
		return
	}
	if d.opts.Reload == nil {
		http.Error(w, "this daemon was started without a configuration file to re-read", http.StatusNotImplemented)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if err := d.opts.Reload(r.Context()); err != nil {
		w.WriteHeader(http.StatusUnprocessableEntity)
		w.Write([]byte(strings.TrimSpace(err.Error()) + "\n"))
		return
	}
	w.Write([]byte("reloaded\n"))
}
