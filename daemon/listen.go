package daemon

import (
	"net"
	"time"

	"golang.org/x/net/netutil"

	"github.com/ipipstack/ipipstack/service"
)

// The daemon's own listener, the status server, must not let a flood of
// connections take the process's file descriptors from the services: it
// serves at most statusMaxConns connections at once (more wait in the
// kernel's accept queue, where they cost no descriptor), and net/http
// closes one that sends no request header within statusReadHeaderTimeout
// or idles for statusIdleTimeout. And
// every listener must outlive a moment without descriptors (EMFILE,
// ENFILE): the services retry their accepts with backoff themselves
// (service.AcceptErrors), and the status listener is wrapped to do the
// same (service.RetryListener) so that net/http never sees the error.

// StatusServerStatus is the state of the status server.
type StatusServerStatus struct {
	Listen string `json:"listen"`
	// AcceptErrors counts failed accepts (out of file descriptors, most
	// likely), retried with backoff.
	AcceptErrors uint64 `json:"accept_errors"`
}

// Limits of the status server.
const (
	// statusMaxConns caps its open connections: scrapers and `ipipstack
	// status` need a few, and each costs a descriptor and buffers.
	statusMaxConns          = 32
	statusReadHeaderTimeout = 10 * time.Second
	statusIdleTimeout       = 60 * time.Second
	statusMaxHeaderBytes    = 16 << 10 // requests are a GET line and a few headers
)

// statusListener wraps the status server's listener ln: accept failures
// are retried and counted, and connections capped at statusMaxConns.
func (d *Daemon) statusListener(ln net.Listener) net.Listener {
	ln = service.RetryListener(ln, &d.statusErrs, d.log.With("listener", "status"))
	return netutil.LimitListener(ln, statusMaxConns)
}

// statusServerStatus returns the status server's state, or nil if it is
// not running.
func (d *Daemon) statusServerStatus() *StatusServerStatus {
	if d.statusLn == nil {
		return nil
	}
	return &StatusServerStatus{Listen: d.statusLn.Addr().String(), AcceptErrors: d.statusErrs.Count()}
}

// collectListeners returns the metric families of the listeners' accept
// errors.
func (d *Daemon) collectListeners() []*family {
	svc := &family{name: "ipipstack_service_accept_errors_total", typ: counter,
		help: "Failed accepts (out of file descriptors, most likely), retried with backoff; TCP services only."}
	for _, s := range d.serviceList() { // reload.go
		if st := s.status(); st.Protocol == "tcp" {
			svc.add(u64(st.AcceptErrors), "service", st.Name, "kind", st.Kind)
		}
	}
	out := []*family{svc}
	if ss := d.statusServerStatus(); ss != nil {
		f := &family{name: "ipipstack_status_accept_errors_total", typ: counter,
			help: "Failed accepts of the status server (out of file descriptors, most likely), retried with backoff."}
		f.add(u64(ss.AcceptErrors))
		out = append(out, f)
	}
	return out
}
