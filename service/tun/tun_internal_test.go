package tun

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func TestWrapErr(t *testing.T) {
	tests := []struct {
		name     string
		err      error
		wantHint bool
	}{
		{"ioctl EPERM", os.NewSyscallError("ioctl", syscall.EPERM), true},
		{"netlink EPERM", syscall.EPERM, true},
		{"open EACCES", &os.PathError{Op: "open", Path: "/dev/net/tun", Err: syscall.EACCES}, true},
		{"busy", os.NewSyscallError("ioctl", syscall.EBUSY), false},
		{"no device node", syscall.ENOENT, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := wrapErr(`create device "ipip0"`, tt.err)
			if !errors.Is(got, tt.err) {
				t.Errorf("wrapErr(%v) = %v, does not wrap it", tt.err, got)
			}
			if !strings.HasPrefix(got.Error(), `tun: create device "ipip0": `) {
				t.Errorf("wrapErr(%v) = %q, want the package and operation first", tt.err, got)
			}
			const hint = "TUN mode needs CAP_NET_ADMIN (run as root or grant the capability)"
			if has := strings.Contains(got.Error(), hint); has != tt.wantHint {
				t.Errorf("wrapErr(%v) = %q, mentions CAP_NET_ADMIN: %v, want %v", tt.err, got, has, tt.wantHint)
			}
			if tt.wantHint && !errors.Is(got, os.ErrPermission) {
				t.Errorf("wrapErr(%v) = %v, want errors.Is(err, os.ErrPermission)", tt.err, got)
			}
		})
	}
}

func TestStackSide(t *testing.T) {
	pp := func(ss ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, s := range ss {
			out = append(out, netip.MustParsePrefix(s))
		}
		return out
	}
	tests := []struct {
		host               []netip.Prefix
		wantAddrs, wantRts []netip.Prefix
	}{
		{host: pp("10.99.1.1/24"), wantAddrs: pp("10.99.1.2/24")},
		{host: pp("10.99.1.1/24", "10.99.1.2/24"), wantAddrs: pp("10.99.1.3/24")},
		{host: pp("10.99.1.254/24"), wantAddrs: pp("10.99.1.1/24")}, // skips .255 and .0
		{host: pp("10.99.1.1/30"), wantAddrs: pp("10.99.1.2/30")},
		{host: pp("10.99.1.2/30"), wantAddrs: pp("10.99.1.1/30")},
		{host: pp("10.99.1.1/30", "10.99.1.2/30"), wantRts: pp("10.99.1.0/30")},
		{host: pp("10.99.1.0/31"), wantAddrs: pp("10.99.1.1/31")}, // RFC 3021
		{host: pp("10.99.1.1/31"), wantAddrs: pp("10.99.1.0/31")},
		{host: pp("10.99.1.1/32"), wantRts: pp("10.99.1.1/32")},
		{host: pp("fd99:1::1/64"), wantAddrs: pp("fd99:1::2/64")},
		{host: pp("fd99:1::ffff:ffff:ffff:ffff/64"), wantAddrs: pp("fd99:1::1/64")},
		{host: pp("fd99:1::/127"), wantAddrs: pp("fd99:1::1/127")}, // RFC 6164
		{host: pp("fd99:1::1/128"), wantRts: pp("fd99:1::1/128")},
		{host: pp("10.99.1.1/24", "fd99:1::1/64", "10.99.2.1/32"),
			wantAddrs: pp("10.99.1.2/24", "fd99:1::2/64"), wantRts: pp("10.99.2.1/32")},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.host), func(t *testing.T) {
			addrs, routes := stackSide(tt.host)
			opt := cmpopts.EquateComparable(netip.Prefix{})
			if diff := cmp.Diff(tt.wantAddrs, addrs, opt); diff != "" {
				t.Errorf("stackSide(%v) addresses (-want +got):\n%s", tt.host, diff)
			}
			if diff := cmp.Diff(tt.wantRts, routes, opt); diff != "" {
				t.Errorf("stackSide(%v) routes (-want +got):\n%s", tt.host, diff)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	v4 := []netip.Prefix{netip.MustParsePrefix("10.99.1.1/24")}
	v6 := []netip.Prefix{netip.MustParsePrefix("fd99:1::1/64")}
	tests := []struct {
		name    string
		opts    Options
		wantErr string
	}{
		{"default MTU", Options{Name: "ipip0", Addresses: v4}, ""},
		{"no name", Options{Addresses: v4}, ""},
		{"long name", Options{Name: "ipip0123456789ab", Addresses: v4}, "longer than 15"},
		{"no addresses", Options{Name: "ipip0"}, "no addresses"},
		{"bad address", Options{Addresses: []netip.Prefix{{}}}, "invalid address"},
		{"bad route", Options{Addresses: v4, Routes: []netip.Prefix{{}}}, "invalid route"},
		{"MTU too small", Options{Addresses: v4, MTU: 67}, "MTU 67 out of range [68,"},
		{"IPv6 MTU", Options{Addresses: v6, MTU: 1279}, "MTU 1279 out of range [1280,"},
		{"MTU too big", Options{Addresses: v4, MTU: 65536}, "out of range"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := tt.opts
			err := o.validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("validate(%+v) = %v, want nil", tt.opts, err)
				}
				if o.MTU != DefaultMTU || o.Logger == nil {
					t.Errorf("validate(%+v) left MTU %d, Logger %v, want %d and a logger", tt.opts, o.MTU, o.Logger, DefaultMTU)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("validate(%+v) = %v, want an error containing %q", tt.opts, err, tt.wantErr)
			}
		})
	}
}
