// Package tun routes the host's traffic into a tunnel stack through a TUN
// device. The host sees an ordinary interface (ipip0, say) with addresses
// and routes; every IP packet it sends there enters the stack on one more
// NIC, which the stack forwards into its tunnels, and the replies come back
// the same way.
//
// # Usage
//
//	s, err := stack.New(stack.Config{Forwarding: true, Tunnels: tunnels})
//	...
//	dev, err := tun.Start(ctx, s, tun.Options{
//		Name:      "ipip0",
//		Addresses: []netip.Prefix{netip.MustParsePrefix("10.99.1.1/24")},
//		Routes:    []netip.Prefix{netip.MustParsePrefix("10.99.0.0/16")},
//	})
//	...
//	defer dev.Close()
//
// # What the caller must guarantee
//
// The stack must be built with stack.Config.Forwarding set: the device and
// the tunnels are different NICs, and gVisor forwards between NICs only
// when forwarding is on for the NIC a packet arrives on. Start returns
// ErrNoForwarding otherwise.
//
// Creating and configuring the device needs CAP_NET_ADMIN. The device is
// made in the network namespace of the calling OS thread (Start locks the
// thread while it works, so a caller that has moved a locked thread into
// another namespace gets the device there) and stays in it.
//
// The tunnels' addresses and routes in the stack must cover what
// Options.Routes sends into the device; anything else is answered with
// ICMP "network unreachable" by the stack.
//
// # Addresses inside the stack
//
// The stack's end of the device is a NIC that gets, for each prefix of
// Options.Addresses, one address of that prefix that the host does not use:
// the next one after the host's, skipping the network and IPv4 broadcast
// addresses (10.99.1.2/24 for a host at 10.99.1.1/24). Its prefix is the
// stack's route back to the host. gVisor needs no address to forward, but
// it sends the ICMP errors it generates for the host (fragmentation needed,
// time exceeded, unreachable) from the address of the NIC they leave
// through, and the host can ping it. A host address with a full-length
// prefix (/32, /128) leaves no room: then the NIC gets only a route to it.
package tun

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"syscall"

	"github.com/ipipstack/ipipstack/stack"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	gvstack "gvisor.dev/gvisor/pkg/tcpip/stack"
)

// DefaultMTU is the device's MTU when Options.MTU is 0: that of a Linux
// ipip device over a 1500-byte path.
const DefaultMTU = 1480

// maxNameLen is the longest interface name Linux accepts (IFNAMSIZ - 1).
const maxNameLen = 15

// ErrNoForwarding is returned by Start when the stack does not forward
// packets between its NICs (stack.Config.Forwarding is false).
var ErrNoForwarding = errors.New("tun: the stack must be built with stack.Config.Forwarding = true")

// Options configure a TUN device.
type Options struct {
	// Name is the device name, at most 15 bytes, e.g. "ipip0". Empty lets
	// the kernel pick one (tun0, tun1, ...); Device.Name tells which. A
	// device of that name must not exist yet.
	Name string
	// Addresses are the host-side addresses of the device, with the
	// prefix of the link (10.99.1.1/24). At least one is required.
	Addresses []netip.Prefix
	// Routes are the host routes that point into the device
	// (10.99.0.0/16): the inner networks the host reaches through the
	// stack.
	Routes []netip.Prefix
	// MTU is the device's MTU; 0 means DefaultMTU (1480).
	MTU int
	// Logger receives the device's logs; nil discards them.
	Logger *slog.Logger
}

// Device is a TUN device joined to a stack. Close it to remove it.
type Device struct {
	name string
	s    *stack.Stack
	link interface{ Close() }
	log  *slog.Logger
	up   bool // Start succeeded

	closeOnce sync.Once
	closeErr  error
}

// Name returns the device's name, as the kernel knows it.
func (d *Device) Name() string { return d.name }

// Close removes the device from the host and its link from the stack
// (stack.Stack.RemoveLink: its NIC, addresses and routes), and returns
// once the goroutine reading the device has stopped. The stack itself
// keeps running, and a device of the same name can be started again.
// Closing the stack also stops the device's traffic and removes the
// device; Close is still safe to call afterwards. Close is idempotent.
func (d *Device) Close() error {
	d.closeOnce.Do(func() {
		// Stop reading and writing first, outside gVisor's locks: gVisor
		// removes a NIC holding its stack lock, which a packet being
		// forwarded may be waiting for.
		d.link.Close()
		if err := d.s.RemoveLink(d.name); err != nil && !errors.Is(err, stack.ErrClosed) { // gone with the stack
			d.closeErr = fmt.Errorf("tun: %s: %w", d.name, err)
		}
		if d.up {
			d.log.Info("tun down", "device", d.name)
		}
	})
	return d.closeErr
}

// permissionHint is what a missing CAP_NET_ADMIN looks like to the user.
const permissionHint = "TUN mode needs CAP_NET_ADMIN (run as root or grant the capability)"

// wrapErr prefixes err with the package and what was being done, and says
// which capability is missing when the kernel refused the operation.
func wrapErr(op string, err error) error {
	if errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EACCES) {
		return fmt.Errorf("tun: %s: %s: %w", op, permissionHint, err)
	}
	return fmt.Errorf("tun: %s: %w", op, err)
}

// validate checks opts and fills in the defaults.
func (o *Options) validate() error {
	if len(o.Name) > maxNameLen {
		return fmt.Errorf("tun: device name %q is longer than %d bytes", o.Name, maxNameLen)
	}
	if o.MTU == 0 {
		o.MTU = DefaultMTU
	}
	if len(o.Addresses) == 0 {
		return errors.New("tun: no addresses: the stack needs the host's prefix to route replies back")
	}
	minMTU := 68 // RFC 791
	for _, a := range o.Addresses {
		if !a.IsValid() || a.Addr().Is4In6() || a.Addr().Zone() != "" || a.Addr().IsUnspecified() {
			return fmt.Errorf("tun: invalid address %v", a)
		}
		if a.Addr().Is6() {
			minMTU = 1280 // RFC 8200
		}
	}
	for _, r := range o.Routes {
		if !r.IsValid() || r.Addr().Is4In6() || r.Addr().Zone() != "" {
			return fmt.Errorf("tun: invalid route %v", r)
		}
	}
	if o.MTU < minMTU || o.MTU > 65535 {
		return fmt.Errorf("tun: MTU %d out of range [%d, 65535]", o.MTU, minMTU)
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

func protocol(a netip.Addr) tcpip.NetworkProtocolNumber {
	if a.Is4() {
		return ipv4.ProtocolNumber
	}
	return ipv6.ProtocolNumber
}

// checkForwarding makes sure every NIC of gv forwards the protocols of
// addrs: the tunnels must forward the replies to the device.
func checkForwarding(gv *gvstack.Stack, addrs []netip.Prefix) error {
	for id, info := range gv.NICInfo() {
		for _, a := range addrs {
			p := protocol(a.Addr())
			if on, terr := gv.NICForwarding(id, p); terr == nil && !on {
				return fmt.Errorf("%w (NIC %q does not forward %s)", ErrNoForwarding, info.Name, familyName(p))
			}
		}
	}
	return nil
}

func familyName(p tcpip.NetworkProtocolNumber) string {
	if p == ipv4.ProtocolNumber {
		return "IPv4"
	}
	return "IPv6"
}

// stackSide returns the addresses and routes of the stack's NIC for a
// device whose host side has hostAddrs: per host prefix one free address of
// it, or a route when the prefix has no room (see the package doc).
func stackSide(hostAddrs []netip.Prefix) (addrs, routes []netip.Prefix) {
	taken := map[netip.Addr]bool{}
	for _, a := range hostAddrs {
		taken[a.Addr()] = true
	}
	seen := map[netip.Prefix]bool{}
	for _, h := range hostAddrs {
		p := h.Masked()
		if seen[p] {
			continue
		}
		seen[p] = true
		if a, ok := freeAddr(h, taken); ok {
			taken[a] = true
			addrs = append(addrs, netip.PrefixFrom(a, h.Bits()))
		} else {
			routes = append(routes, p)
		}
	}
	return addrs, routes
}

// freeAddr returns the first usable address of h's prefix after h's own,
// wrapping around, that is not taken.
func freeAddr(h netip.Prefix, taken map[netip.Addr]bool) (netip.Addr, bool) {
	p := h.Masked()
	first, last := p.Addr(), lastAddr(p)
	// RFC 3021 (IPv4 /31) and RFC 6164 (IPv6 /127) links have no network
	// or broadcast address; elsewhere skip the network address (IPv6's
	// subnet-router anycast, RFC 4291 2.6.1) and the IPv4 broadcast.
	pointToPoint := p.Bits() >= p.Addr().BitLen()-1
	a := h.Addr()
	for range len(taken) + 3 {
		if a == last {
			a = first
		} else {
			a = a.Next()
		}
		if a == h.Addr() {
			break
		}
		if taken[a] || !pointToPoint && (a == first || a == last && a.Is4()) {
			continue
		}
		return a, true
	}
	return netip.Addr{}, false
}

// lastAddr returns the highest address of p.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}
