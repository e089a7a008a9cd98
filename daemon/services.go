package daemon

import (
	"context"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/ipipstack/ipipstack/config"
	"github.com/ipipstack/ipipstack/service"
	"github.com/ipipstack/ipipstack/service/forward"
	"github.com/ipipstack/ipipstack/service/socks5"
	"github.com/ipipstack/ipipstack/stack"
)

// server is what the daemon needs of every service: forward.TCP,
// forward.UDP and socks5.Server all have these methods.
type server interface {
	Start(ctx context.Context) error
	Addr() net.Addr
	Close() error
	Shutdown(ctx context.Context) error
}

var (
	_ server = (*forward.TCP)(nil)
	_ server = (*forward.UDP)(nil)
	_ server = (*socks5.Server)(nil)
)

// svc is one running service and how to read its counters.
type svc struct {
	name, kind, proto string
	listen, target    string // as configured
	srv               server
	stats             func(*ServiceStatus)
}

// status returns the service's ServiceStatus.
func (s *svc) status() ServiceStatus {
	st := ServiceStatus{Name: s.name, Kind: s.kind, Protocol: s.proto, Listen: s.listenAddr(), Target: s.target}
	s.stats(&st)
	return st
}

// listenAddr returns the address the service is bound to: the listener's,
// which has the port picked for port 0, unless it lost the host part (a
// wildcard listener inside the stack says ":7").
func (s *svc) listenAddr() string {
	a := s.srv.Addr()
	if a == nil {
		return s.listen
	}
	if str := a.String(); !strings.HasPrefix(str, ":") {
		return str
	}
	return s.listen
}

// newServices builds, without starting them, the services of cfg: local
// forwards listen on the host and dial in st, reverse forwards the other
// way round, and SOCKS5 proxies listen on the host and dial in st.
func newServices(cfg *config.Config, st *stack.Stack, log *slog.Logger) []*svc {
	var out []*svc
	for _, f := range cfg.Forwards {
		out = append(out, withDialTimeout(withPerSource(newForward(KindForward, f.Name, f.Protocol, f.Listen.String(), forwardTarget(&f),
			f.MaxConnections, f.IdleTimeout, service.Host{}, st, log), f.MaxSessionsPerSource), f.DialTimeout))
	}
	for _, r := range cfg.Reverses {
		out = append(out, withDialTimeout(withPerSource(newForward(KindReverse, r.Name, r.Protocol, r.Listen.String(), r.Target.String(),
			r.MaxConnections, r.IdleTimeout, st, service.Host{}, log), r.MaxSessionsPerSource), r.DialTimeout))
	}
	for i, s := range cfg.SOCKS5 {
		srv := &socks5.Server{
			Resolve:       socks5Resolver(cfg, &cfg.SOCKS5[i], st, log.With("socks5", s.Name)), // dns.go
			Network:       st,
			ClientNetwork: service.Host{},
			Listen:        s.Listen.String(),
			Username:      s.Username,
			Password:      s.Password,
			MaxConns:      maxConns(s.MaxConnections),
			Logger:        log.With("socks5", s.Name),
			// 0 (unset) keeps the server's default, a quarter of MaxConns.
			MaxConnsPerClient: s.MaxConnectionsPerClient,
			// 0 (a config not from Parse) keeps the server's default.
			DialTimeout: s.DialTimeout,
		}
		out = append(out, &svc{
			name: s.Name, kind: KindSOCKS5, proto: "tcp", listen: srv.Listen, srv: srv,
			stats: func(st *ServiceStatus) {
				x := srv.Stats()
				st.Active, st.Total, st.Rejected = x.Active, x.Accepted, x.Rejected
				st.AcceptErrors = x.AcceptErrors
				st.DialFailures = x.ConnectFailures
				st.BytesToTarget = uint64(x.BytesToTarget) + x.UDPBytesToTarget
				st.BytesFromTarget = uint64(x.BytesFromTarget) + x.UDPBytesFromTarget
				st.Counters = map[string]uint64{
					"handshake_errors":        x.HandshakeErrors,
					"auth_failures":           x.AuthFailures,
					"connects":                x.Connects,
					"connect_failures":        x.ConnectFailures,
					"udp_associations":        x.UDPAssociations,
					"udp_packets_to_target":   x.UDPPacketsToTarget,
					"udp_packets_from_target": x.UDPPacketsFromTarget,
					"udp_fragments":           x.UDPFragments,
					"udp_dropped":             x.UDPDropped,
					"udp_foreign":             x.UDPForeign,
					"rejected_per_client":     x.RejectedPerClient,
					"auth_throttled":          x.AuthThrottled,
				}
			},
		})
	}
	out = append(out, newHTTPProxies(cfg, st, log)...) // httpproxy.go
	return out
}

// newForward builds a TCP or UDP forward listening in from and dialing in to.
func newForward(kind, name string, proto config.Protocol, listen, target string, maxConn int,
	idle time.Duration, from, to service.Network, log *slog.Logger) *svc {
	s := &svc{name: name, kind: kind, proto: proto.String(), listen: listen, target: target}
	flog := log.With("kind", kind)
	switch proto {
	case config.UDP:
		f := &forward.UDP{
			Name: name, From: from, Listen: listen, To: to, Target: target,
			MaxSessions: maxConns(maxConn), IdleTimeout: idle, Logger: flog,
		}
		s.srv = f
		s.stats = func(st *ServiceStatus) {
			x := f.Stats()
			st.Active, st.Total, st.Rejected, st.DialFailures = x.Sessions, x.SessionsCreated, x.Rejected, x.DialFailures
			st.BytesToTarget, st.BytesFromTarget = x.BytesToTarget, x.BytesFromTarget
			st.Counters = map[string]uint64{
				"sessions_expired":    x.SessionsExpired,
				"dropped":             x.Dropped,
				"packets_to_target":   x.PacketsToTarget,
				"packets_from_target": x.PacketsFromTarget,
				"rejected_per_source": x.RejectedPerSource,
			}
		}
	default:
		f := &forward.TCP{
			Name: name, From: from, Listen: listen, To: to, Target: target,
			MaxConns: maxConns(maxConn), IdleTimeout: idle, Logger: flog,
		}
		s.srv = f
		s.stats = func(st *ServiceStatus) {
			x := f.Stats()
			st.Active, st.Total, st.Rejected, st.DialFailures = x.Active, x.Accepted, x.Rejected, x.DialFailures
			st.BytesToTarget, st.BytesFromTarget = uint64(x.BytesToTarget), uint64(x.BytesFromTarget)
			st.AcceptErrors = x.AcceptErrors
			if idle > 0 {
				st.Counters = map[string]uint64{"idle_closed": x.IdleClosed}
			}
		}
	}
	return s
}

// withPerSource sets the MaxSessionsPerSource of s if it is a UDP forward
// (0, max_sessions_per_source unset, keeps its default: a quarter of
// MaxSessions).
func withPerSource(s *svc, n int) *svc {
	if f, ok := s.srv.(*forward.UDP); ok {
		f.MaxSessionsPerSource = n
	}
	return s
}

// withDialTimeout sets the DialTimeout of the forward s (0 keeps the
// forward's default, DefaultDialTimeout).
func withDialTimeout(s *svc, d time.Duration) *svc {
	switch f := s.srv.(type) {
	case *forward.TCP:
		f.DialTimeout = d
	case *forward.UDP:
		f.DialTimeout = d
	}
	return s
}

// maxConns maps max_connections (always ≥ 1 from config) onto the
// services' MaxConns, where 0 would mean their default.
func maxConns(n int) int {
	if n <= 0 {
		return config.DefaultMaxConnections
	}
	return n
}
