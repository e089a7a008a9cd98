package tun

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"

	"github.com/ipipstack/ipipstack/stack"
	"github.com/songgao/water"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/link/fdbased"
	gvstack "gvisor.dev/gvisor/pkg/tcpip/stack"
)

// Start creates the TUN device described by opts in the calling thread's
// network namespace, joins it to s as one more NIC (see the package doc
// for its addresses) and configures the host side: MTU, addresses, the
// link up, then the routes. s must forward (stack.Config.Forwarding); ctx
// bounds Start only. On error nothing is left behind.
func Start(ctx context.Context, s *stack.Stack, opts Options) (_ *Device, err error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("tun: %w", err)
	}
	if err := opts.validate(); err != nil {
		return nil, err
	}
	gv := s.GVisor()
	if err := checkForwarding(gv, opts.Addresses); err != nil {
		return nil, err
	}

	// water, netlink and the sockets they open act in the namespace of
	// the thread they run on: keep them on one.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	nl, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, wrapErr("netlink", err)
	}
	defer nl.Close()
	if opts.Name != "" {
		var nf netlink.LinkNotFoundError
		if _, err := nl.LinkByName(opts.Name); err == nil {
			return nil, fmt.Errorf("tun: device %q already exists", opts.Name)
		} else if !errors.As(err, &nf) {
			return nil, wrapErr(fmt.Sprintf("look up %q", opts.Name), err)
		}
	}

	fd, name, err := createDevice(opts.Name)
	if err != nil {
		return nil, wrapErr(fmt.Sprintf("create device %q", opts.Name), err)
	}
	ep, err := fdbased.New(&fdbased.Options{
		FDs: []int{fd},
		MTU: uint32(opts.MTU),
		// One processor: the read goroutine delivers each packet itself
		// rather than handing it to a pool of goroutines.
		ProcessorsPerChannel: 1,
	})
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tun: %s: endpoint: %w", name, err)
	}
	l := &link{LinkEndpoint: ep, fd: fd}
	d := &Device{name: name, s: s, link: l, log: opts.Logger}
	addrs, routes := stackSide(opts.Addresses)
	// From here on, Close undoes everything: closing the last descriptor
	// of a non-persistent TUN device deletes it, with its addresses and
	// routes.
	if err := s.AddLink(name, l, addrs, routes); err != nil {
		d.Close()
		return nil, fmt.Errorf("tun: %w", err)
	}
	defer func() {
		if err != nil {
			d.Close()
		}
	}()
	nic := nicByName(gv, name)
	// The NIC took the stack's default; make sure, in case the NICs were
	// switched one by one through GVisor().
	for _, a := range opts.Addresses {
		if _, terr := gv.SetNICForwarding(nic, protocol(a.Addr()), true); terr != nil {
			return nil, fmt.Errorf("tun: %s: forwarding: %s", name, terr)
		}
	}
	if err := configure(nl, name, opts); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("tun: %w", err)
	}
	d.up = true
	opts.Logger.Info("tun up", "device", name, "mtu", opts.MTU, "addresses", fmt.Sprint(opts.Addresses),
		"routes", fmt.Sprint(opts.Routes), "stack_addresses", fmt.Sprint(addrs), "stack_routes", fmt.Sprint(routes))
	return d, nil
}

// createDevice makes a TUN device (no packet information header) with
// water and returns a close-on-exec descriptor of its own for it, owned by
// the caller, and the device's name.
func createDevice(name string) (fd int, actual string, err error) {
	ifce, err := water.New(water.Config{
		DeviceType:             water.TUN,
		PlatformSpecificParams: water.PlatformSpecificParams{Name: name},
	})
	if err != nil {
		// TODO(tun owner): water leaks the /dev/net/tun descriptor when
		// TUNSETIFF fails (songgao/water syscalls_linux_go1.11.go).
		return -1, "", err
	}
	// water's *os.File is registered with Go's poller and is not
	// close-on-exec; fdbased wants a plain descriptor it can poll itself.
	// A duplicate shares the open file, hence the TUN queue.
	defer ifce.Close()
	f, ok := ifce.ReadWriteCloser.(*os.File)
	if !ok {
		return -1, "", fmt.Errorf("water returned a %T, not an *os.File", ifce.ReadWriteCloser)
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return -1, "", err
	}
	var dupErr error
	if err := rc.Control(func(raw uintptr) {
		fd, dupErr = unix.FcntlInt(raw, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return -1, "", err
	}
	if dupErr != nil {
		return -1, "", os.NewSyscallError("fcntl", dupErr)
	}
	return fd, ifce.Name(), nil
}

// configure sets the host side of the device up through nl: MTU,
// addresses, link up, routes (the kernel refuses routes through a link
// that is down).
func configure(nl *netlink.Handle, name string, opts Options) error {
	dev, err := nl.LinkByName(name)
	if err != nil {
		return wrapErr(fmt.Sprintf("%s: look up", name), err)
	}
	if err := nl.LinkSetMTU(dev, opts.MTU); err != nil {
		return wrapErr(fmt.Sprintf("%s: set MTU %d", name, opts.MTU), err)
	}
	onLink := map[netip.Prefix]bool{}
	for _, a := range opts.Addresses {
		addr := &netlink.Addr{IPNet: ipNet(a)}
		if a.Addr().Is6() {
			// A TUN device is IFF_NOARP, so Linux skips DAD anyway.
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := nl.AddrAdd(dev, addr); err != nil {
			return wrapErr(fmt.Sprintf("%s: add address %v", name, a), err)
		}
		onLink[a.Masked()] = true
	}
	if err := nl.LinkSetUp(dev); err != nil {
		return wrapErr(fmt.Sprintf("%s: set up", name), err)
	}
	for _, r := range opts.Routes {
		r = r.Masked()
		if onLink[r] {
			continue // the kernel made it with the address
		}
		route := &netlink.Route{LinkIndex: dev.Attrs().Index, Dst: ipNet(r)}
		if r.Addr().Is4() {
			route.Scope = netlink.SCOPE_LINK // as `ip route add P dev D` does
		}
		if err := nl.RouteAdd(route); err != nil {
			return wrapErr(fmt.Sprintf("%s: add route %v", name, r), err)
		}
	}
	return nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func nicByName(gv *gvstack.Stack, name string) tcpip.NICID {
	for id, info := range gv.NICInfo() {
		if info.Name == name {
			return id
		}
	}
	return 0
}

// link is the stack's end of the device: gVisor's fdbased endpoint reading
// and writing the TUN descriptor (IP packets, no link header), plus the
// descriptor, which fdbased does not own. The stack owns link once
// AddLink is called and closes it; so does Device.Close.
type link struct {
	gvstack.LinkEndpoint
	fd int

	// attachMu serializes Attach and Close.
	attachMu sync.Mutex
	// mu guards closed. Writers hold it shared, so that the descriptor is
	// never closed (and its number reused) under a write.
	mu sync.RWMutex
	// +checklocks:mu
	closed bool
}

var _ gvstack.LinkEndpoint = (*link)(nil)

// Attach implements stack.LinkEndpoint.Attach; a closed link stays
// detached.
func (l *link) Attach(d gvstack.NetworkDispatcher) {
	l.attachMu.Lock()
	defer l.attachMu.Unlock()
	l.mu.RLock()
	closed := l.closed
	l.mu.RUnlock()
	if closed {
		return
	}
	l.LinkEndpoint.Attach(d)
}

// WritePackets implements stack.LinkEndpoint.WritePackets. Once the link is
// closed, packets are dropped.
func (l *link) WritePackets(pkts gvstack.PacketBufferList) (int, tcpip.Error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return 0, &tcpip.ErrClosedForSend{}
	}
	return l.LinkEndpoint.WritePackets(pkts)
}

// Close implements stack.LinkEndpoint.Close: it stops the read goroutine
// and waits for it, then closes the descriptor, which deletes the device.
// It is idempotent.
func (l *link) Close() {
	l.attachMu.Lock()
	defer l.attachMu.Unlock()
	l.mu.RLock()
	closed := l.closed
	l.mu.RUnlock()
	if closed {
		return
	}
	l.LinkEndpoint.Attach(nil) // stops reading and waits; no-op if detached
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
	unix.Close(l.fd)
}
