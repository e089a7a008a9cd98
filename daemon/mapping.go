package daemon

import (
	"fmt"
	"net/netip"

	"github.com/ipipstack/ipipstack/config"
	"github.com/ipipstack/ipipstack/endpoint"
	"github.com/ipipstack/ipipstack/endpoint/encap"
	"github.com/ipipstack/ipipstack/endpoint/impair"
	"github.com/ipipstack/ipipstack/stack"
)

// stackConfig maps the tunnels and the stack block of cfg onto a
// stack.Config. It opens nothing: Tunnel.Capture and Logger are left nil
// for the caller to fill in.
func stackConfig(cfg *config.Config) (stack.Config, error) {
	sc := stack.Config{
		TCP: stack.TCPOptions{
			DisableSACK:                  !cfg.Stack.TCPSACK,
			CongestionControl:            congestion(cfg.Stack.TCPCongestion),
			SendBuffer:                   cfg.Stack.TCPSendBuffer,
			ReceiveBuffer:                cfg.Stack.TCPReceiveBuffer,
			DisableModerateReceiveBuffer: !cfg.Stack.TCPModerateReceiveBuffer,
			MinRTO:                       cfg.Stack.TCPMinRTO,
			// Every TCP connection of the daemon's stack is a forwarded
			// one (forward, reverse, SOCKS5).
			Keepalive: cfg.Stack.TCPKeepalive,
		},
		// A TUN device is useless without forwarding: its packets are
		// addressed to the peers, not to the stack.
		Forwarding: cfg.Stack.Forwarding || cfg.TUN != nil,
		// config's defaults are gVisor's; passing them as zero keeps
		// IPv6's 60 s timeout (RFC 8200) and lets a gVisor version where
		// the limits cannot be set run with the defaults.
		ReassemblyTimeout: unlessDefault(cfg.Stack.ReassemblyTimeout, config.DefaultReassemblyTimeout),
		ReassemblyMemory:  unlessDefault(cfg.Stack.ReassemblyMemory, config.DefaultReassemblyMemory),
		DNS:               dnsServers(cfg), // dns.go
	}
	for i := range cfg.Tunnels {
		t := &cfg.Tunnels[i]
		st, err := stackTunnel(t)
		if err != nil {
			return stack.Config{}, err
		}
		sc.Tunnels = append(sc.Tunnels, st)
	}
	return sc, nil
}

// congestion maps config's algorithm onto stack.TCPOptions'; the default
// goes as "", which is stack.DefaultCongestionControl. config leaves every
// TCP default to the stack, so that there is one definition of them.
func congestion(c config.Congestion) string {
	if c == config.CongestionDefault {
		return ""
	}
	return c.String()
}

func stackTunnel(t *config.Tunnel) (stack.Tunnel, error) {
	var tr stack.TransportKind
	switch t.Transport {
	case config.TransportUDP:
		tr = stack.UDP
	case config.TransportRaw:
		tr = stack.Raw
	default:
		return stack.Tunnel{}, fmt.Errorf("daemon: tunnel %q: unknown transport %v", t.Name, t.Transport)
	}
	pol, err := policy(t)
	if err != nil {
		return stack.Tunnel{}, err
	}
	var wrap func(endpoint.Transport) endpoint.Transport
	if im := t.Impair; im != nil {
		opts := impair.Options{Loss: im.Loss, Reorder: im.Reorder, Duplicate: im.Duplicate,
			Corrupt: im.Corrupt, Delay: im.Delay, Jitter: im.Jitter, Rate: im.Rate, Seed: im.Seed}
		if err := opts.Validate(); err != nil {
			return stack.Tunnel{}, fmt.Errorf("daemon: tunnel %q: impair: %w", t.Name, err)
		}
		wrap = func(tr endpoint.Transport) endpoint.Transport { return impair.Wrap(tr, opts) }
	}
	return stack.Tunnel{
		Wrap:           wrap,
		Name:           t.Name,
		Transport:      tr,
		Local:          t.Local,
		Remote:         t.Remote,
		Addresses:      clonePrefixes(t.Addresses),
		Routes:         clonePrefixes(t.Routes),
		DefaultRoute:   t.DefaultRoute,
		AllowedSources: t.AllowedSourcePrefixes(),
		MTU:            t.MTU,
		PathMTU:        t.PathMTU,
		Policy:         pol,
		Roaming:        t.Roaming,
		AnySourcePort:  t.AnySourcePort,
		Filter:         stackFilter(t.Filter),
	}, nil
}

// stackFilter maps a tunnel's filter block onto stack.Filter; nil (no
// block) stays nil, which lets everything in. config validated every
// value; stack.New checks them again.
func stackFilter(f *config.Filter) *stack.Filter {
	if f == nil {
		return nil
	}
	sf := &stack.Filter{Default: filterAction(f.Default), MaxFlows: f.MaxFlows}
	for _, r := range f.Rules {
		sr := stack.FilterRule{Action: filterAction(r.Action), Destinations: clonePrefixes(r.Destinations)}
		switch r.Protocol {
		case config.FilterTCP:
			sr.Protocol = stack.FilterTCP
		case config.FilterUDP:
			sr.Protocol = stack.FilterUDP
		case config.FilterICMP:
			sr.Protocol = stack.FilterICMP
		default:
			sr.Protocol = stack.FilterAny
		}
		for _, p := range r.Ports {
			sr.Ports = append(sr.Ports, stack.PortRange{First: p.First, Last: p.Last})
		}
		sf.Rules = append(sf.Rules, sr)
	}
	return sf
}

func filterAction(a config.FilterAction) stack.FilterAction {
	if a == config.FilterAllow {
		return stack.FilterAllow
	}
	return stack.FilterDeny
}

// policy maps a tunnel's ttl, tos, df and encap_limit onto encap.Policy.
func policy(t *config.Tunnel) (encap.Policy, error) {
	var p encap.Policy
	// config.TTLInherit is 0, which is also encap.Policy's "inherit".
	p.TTL = uint8(t.TTL)
	switch {
	case t.TOS == config.TOSInherit:
		p.TOSInherit = true
	case t.TOS >= 0 && t.TOS <= 255:
		p.TOS = uint8(t.TOS)
	default:
		return p, fmt.Errorf("daemon: tunnel %q: tos %d out of range", t.Name, int(t.TOS))
	}
	switch t.DF {
	case config.DFSet:
		p.DF = encap.DFSet
	case config.DFInherit:
		p.DF = encap.DFInherit
	case config.DFClear:
		p.DF = encap.DFClear
	default:
		return p, fmt.Errorf("daemon: tunnel %q: unknown df policy %v", t.Name, t.DF)
	}
	switch {
	case t.EncapLimit == config.EncapLimitNone:
	case t.EncapLimit >= 0 && t.EncapLimit <= 255:
		p.UseEncapLimit = true
		p.EncapLimit = uint8(t.EncapLimit)
	default:
		return p, fmt.Errorf("daemon: tunnel %q: encap_limit %d out of range", t.Name, t.EncapLimit)
	}
	return p, nil
}

// tunMTU is the MTU of the TUN device: the configured one, or the smallest
// tunnel MTU so that host packets never need fragmenting in the stack.
func tunMTU(cfg *config.Config) int {
	if cfg.TUN != nil && cfg.TUN.MTU != 0 {
		return cfg.TUN.MTU
	}
	m := 0
	for i := range cfg.Tunnels {
		if e := cfg.Tunnels[i].EffectiveMTU(); m == 0 || e < m {
			m = e
		}
	}
	return m
}

// unlessDefault returns v, or the zero value if v is def.
func unlessDefault[T comparable](v, def T) T {
	if v == def {
		var zero T
		return zero
	}
	return v
}

func clonePrefixes(p []netip.Prefix) []netip.Prefix {
	if p == nil {
		return nil
	}
	return append([]netip.Prefix(nil), p...)
}
