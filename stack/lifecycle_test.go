package stack_test

import (
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/ipipstack/ipipstack/endpoint"
	"github.com/ipipstack/ipipstack/stack"
)

// closeCounter is a transport that counts its Close calls.
type closeCounter struct {
	endpoint.Transport
	closes atomic.Int32
}

func (c *closeCounter) Close() error {
	c.closes.Add(1)
	return c.Transport.Close()
}

// TestNewClosesConnsOnError checks that New, when it fails, closes every
// caller-supplied Conn exactly once, whichever step failed: the stack owns
// them from New on.
func TestNewClosesConnsOnError(t *testing.T) {
	tests := []struct {
		name string
		edit func(*stack.Config)
		text string
	}{
		{"bad TCP option", func(c *stack.Config) { c.TCP.CongestionControl = "bbr" }, "want reno or cubic"},
		{"bad UDP buffer", func(c *stack.Config) { c.UDPReceiveBuffer = 100 }, "UDP receive buffer"},
		{"first has no name", func(c *stack.Config) { c.Tunnels[0].Name = "" }, "no name"},
		{"second has no name", func(c *stack.Config) { c.Tunnels[1].Name = "" }, "no name"},
		{"duplicate name", func(c *stack.Config) { c.Tunnels[1].Name = c.Tunnels[0].Name }, "defined twice"},
		{"first addTunnel fails", func(c *stack.Config) { c.Tunnels[0].MTU = 40 }, "MTU 40"},
		{"second addTunnel fails", func(c *stack.Config) { c.Tunnels[1].MTU = 40 }, "MTU 40"},
		{"last addTunnel fails", func(c *stack.Config) { c.Tunnels[2].MTU = 40 }, "MTU 40"},
		{"bad address", func(c *stack.Config) { c.Tunnels[1].Addresses = []netip.Prefix{{}} }, "invalid address"},
		{"bad route", func(c *stack.Config) {
			c.Routes = []stack.Route{{Prefix: netip.MustParsePrefix("10.5.0.0/16"), Tunnel: "nope"}}
		}, "no such tunnel"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var cfg stack.Config
			var conns []*closeCounter
			for i, name := range []string{"t0", "t1", "t2"} {
				a, _ := pipeTunnels(name, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 80, byte(i), 1}), 24),
					"unused", netip.MustParsePrefix("10.80.99.1/24"))
				cc := &closeCounter{Transport: a.Conn}
				a.Conn = cc
				conns = append(conns, cc)
				cfg.Tunnels = append(cfg.Tunnels, a)
			}
			tt.edit(&cfg)
			s, err := stack.New(cfg)
			if err == nil {
				s.Close()
				t.Fatal("New succeeded")
			}
			if !strings.Contains(err.Error(), tt.text) {
				t.Errorf("New = %q, want it to say %q", err, tt.text)
			}
			for i, cc := range conns {
				if n := cc.closes.Load(); n != 1 {
					t.Errorf("tunnel %d: Conn closed %d times, want 1", i, n)
				}
			}
		})
	}
}
