package daemon

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/ipipstack/ipipstack/config"
	"github.com/ipipstack/ipipstack/service"
	"github.com/ipipstack/ipipstack/stack"
)

// errNamesRefused is what a SOCKS5 proxy without a dns block answers a
// name with (reply 4, host unreachable).
var errNamesRefused = errors.New("no dns block: host names are not resolved, so that they do not leak to the host's DNS; " +
	"add a dns block (servers = [\"10.99.0.2:53\"]) to resolve them through the tunnels, or set resolve = \"host\" in the socks5 block")

// dnsServers maps the dns block onto stack.Config.DNS; nil without one.
func dnsServers(cfg *config.Config) []netip.AddrPort {
	if cfg.DNS == nil {
		return nil
	}
	return append([]netip.AddrPort(nil), cfg.DNS.Servers...)
}

// socks5Resolver returns the socks5.Server.Resolve of block s: the host's
// resolver if it says resolve = "host", the tunnels' DNS if there is a dns
// block, and otherwise a refusal, logged at Warn, rate limited.
func socks5Resolver(cfg *config.Config, s *config.SOCKS5, st *stack.Stack, log *slog.Logger) func(context.Context, string) ([]netip.Addr, error) {
	switch {
	case s.ResolveOnHost:
		return func(ctx context.Context, name string) ([]netip.Addr, error) {
			return net.DefaultResolver.LookupNetIP(ctx, "ip", name)
		}
	case cfg.DNS != nil:
		return func(ctx context.Context, name string) ([]netip.Addr, error) {
			return st.LookupNetIP(ctx, "ip", name)
		}
	}
	var limit service.LogLimiter[struct{}]
	return func(_ context.Context, name string) ([]netip.Addr, error) {
		if ok, suppressed := limit.Allow(struct{}{}, time.Now()); ok {
			log.Warn("refused a host name", "name", name, "suppressed", suppressed, "why", errNamesRefused)
		}
		return nil, errNamesRefused
	}
}

// forwardTarget is the address a forward dials: its IP address, or its
// host name, which the stack looks up through the dns block's servers.
func forwardTarget(f *config.Forward) string {
	if f.TargetName != "" {
		return f.TargetName
	}
	return f.Target.String()
}
