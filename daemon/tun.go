package daemon

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"syscall"

	"github.com/ipipstack/ipipstack/service/tun"
	"github.com/ipipstack/ipipstack/stack"
)

// TUNOptions configure the TUN device, as service/tun.Options.
type TUNOptions struct {
	// Name is the interface name.
	Name string
	// Addresses are the host-side addresses of the device, with their
	// prefix lengths; Routes are prefixes the host routes into it.
	Addresses, Routes []netip.Prefix
	// MTU is the device MTU.
	MTU    int
	Logger *slog.Logger
}

// TUNStarter creates the host TUN device and bridges it into s; closing the
// result removes the device. The stack has forwarding enabled.
type TUNStarter func(ctx context.Context, s *stack.Stack, o TUNOptions) (io.Closer, error)

// defaultStartTUN is the TUNStarter used when Options.StartTUN is nil:
// service/tun's device.
func defaultStartTUN(ctx context.Context, s *stack.Stack, o TUNOptions) (io.Closer, error) {
	dev, err := tun.Start(ctx, s, tun.Options{Name: o.Name, Addresses: o.Addresses, Routes: o.Routes, MTU: o.MTU, Logger: o.Logger})
	if err != nil {
		return nil, err
	}
	return dev, nil
}

// hasNetAdmin reports whether the process has CAP_NET_ADMIN in its
// effective set (privilege.go). A variable so that tests can pretend
// either way.
var hasNetAdmin = func() bool { return hasCapability(CapNetAdmin) }

// errNeedNetAdmin explains a missing privilege.
var errNeedNetAdmin = errors.New("creating a TUN device needs CAP_NET_ADMIN (or root): run as root, or grant it with `setcap cap_net_admin+ep ipipstack`")

// isPermission reports whether err is a privilege error.
func isPermission(err error) bool {
	return errors.Is(err, os.ErrPermission) || errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EACCES)
}
