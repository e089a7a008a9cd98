// Package service holds what the daemon's services (forwards, the SOCKS5
// and HTTP proxies) share: the Network they dial and listen on, and the
// Lifecycle that takes them from Start to Close or Shutdown (listener,
// accept loop, open connections, goroutines). The tunnel stack
// (*stack.Stack) and the host (Host) both satisfy Network, so a local
// forward is "listen on Host, dial on the stack" and a reverse forward the
// other way round.
package service

import (
	"context"
	"log/slog"
	"net"
)

// Network is a place where connections can be dialed and accepted.
// Addresses are "host:port" strings as in the net package.
type Network interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
	Listen(network, address string) (net.Listener, error)
	ListenPacket(network, address string) (net.PacketConn, error)
}

// Host is the host's own network, through the net package.
type Host struct{}

var _ Network = Host{}

// DialContext implements Network.DialContext.
func (Host) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, network, address)
}

// Listen implements Network.Listen.
func (Host) Listen(network, address string) (net.Listener, error) {
	return net.Listen(network, address)
}

// ListenPacket implements Network.ListenPacket.
func (Host) ListenPacket(network, address string) (net.PacketConn, error) {
	return net.ListenPacket(network, address)
}

// OrHost returns n, or Host{} if n is nil: the default of the services'
// Network fields.
func OrHost(n Network) Network {
	if n == nil {
		return Host{}
	}
	return n
}

// LoggerOrDiscard returns l, or a logger that discards everything if l is
// nil: the default of the services' Logger fields.
func LoggerOrDiscard(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}
