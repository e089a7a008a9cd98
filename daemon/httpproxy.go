package daemon

import (
	"log/slog"

	"github.com/ipipstack/ipipstack/config"
	"github.com/ipipstack/ipipstack/service"
	"github.com/ipipstack/ipipstack/service/httpproxy"
	"github.com/ipipstack/ipipstack/stack"
)

// KindHTTPProxy is the ServiceStatus.Kind of an http_proxy block.
const KindHTTPProxy = "http_proxy"

var _ server = (*httpproxy.Server)(nil)

// newHTTPProxies builds the HTTP proxies of cfg: they listen on the host
// and dial in st, passing host names to st unresolved.
func newHTTPProxies(cfg *config.Config, st *stack.Stack, log *slog.Logger) []*svc {
	var out []*svc
	for _, p := range cfg.HTTPProxies {
		srv := &httpproxy.Server{
			Network:       st,
			ClientNetwork: service.Host{},
			Listen:        p.Listen.String(),
			Username:      p.Username,
			Password:      p.Password,
			MaxConns:      maxConns(p.MaxConnections),
			// 0 (unset) keeps the server's default, a quarter of MaxConns.
			MaxConnsPerClient: p.MaxConnectionsPerClient,
			Logger:            log.With("http_proxy", p.Name),
		}
		out = append(out, &svc{
			name: p.Name, kind: KindHTTPProxy, proto: "tcp", listen: srv.Listen, srv: srv,
			stats: func(st *ServiceStatus) {
				x := srv.Stats()
				st.Active, st.Total, st.Rejected = x.Active, x.Accepted, x.Rejected
				st.AcceptErrors = x.AcceptErrors
				st.DialFailures = x.DialFailures
				st.BytesToTarget, st.BytesFromTarget = uint64(x.BytesToTarget), uint64(x.BytesFromTarget)
				st.Counters = map[string]uint64{
					"auth_failures":       x.AuthFailures,
					"bad_requests":        x.BadRequests,
					"requests":            x.Requests,
					"connects":            x.Connects,
					"timeouts":            x.Timeouts,
					"rejected_per_client": x.RejectedPerClient,
				}
			},
		})
	}
	return out
}
