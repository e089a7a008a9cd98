package stack_test

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/ipipstack/ipipstack/endpoint"
	"github.com/ipipstack/ipipstack/endpoint/endpointtest"
	"github.com/ipipstack/ipipstack/stack"
	gvstack "gvisor.dev/gvisor/pkg/tcpip/stack"
)

// TestOffloads moves data byte-exact in both directions, over inner IPv4
// and IPv6, with GSO and GRO each on and forced off.
func TestOffloads(t *testing.T) {
	size := int64(16 << 20)
	if testing.Short() {
		size = 2 << 20
	}
	for _, gso := range []bool{false, true} {
		for _, gro := range []bool{false, true} {
			t.Run(fmt.Sprintf("gso=%v/gro=%v", gso, gro), func(t *testing.T) {
				p := newPair(t, "127.0.0.1", func(side int, tun *stack.Tunnel) {
					tun.DisableGSO, tun.DisableGRO = !gso, !gro
				})
				if got := p.a.Endpoint("to-b").GSOMaxSize() != 0; got != gso {
					t.Errorf("GSOMaxSize set = %v, want %v", got, gso)
				}
				transfer(t, p.a, p.b, "10.99.0.2:5001", size)
				transfer(t, p.b, p.a, "[fd99::1]:5002", size)
				for _, s := range []*stack.Stack{p.a, p.b} {
					st := s.Stats()[0]
					if st.DropTotal() != 0 {
						t.Errorf("%s dropped %v", st.Name, st.Drops)
					}
					if n := s.GVisor().Stats().TCP.ChecksumErrors.Value(); n != 0 {
						t.Errorf("%s: %d TCP checksum errors", st.Name, n)
					}
					if n := s.GVisor().Stats().IP.MalformedPacketsReceived.Value(); n != 0 {
						t.Errorf("%s: %d malformed IP packets", st.Name, n)
					}
					// Both ends received a bulk transfer. On loopback the
					// kernel coalesces only what was sent with UDP GSO;
					// those reads reach TCP merged when GRO is on.
					if coalesced := st.RxCoalesced > 0; coalesced != (gso && gro) {
						t.Errorf("%s: %d of %d packets received coalesced, GSO %v, GRO %v", st.Name, st.RxCoalesced, st.RxPackets, gso, gro)
					}
				}
			})
		}
	}
}

// TestZeroChecksumPeer has A send its outer datagrams with UDP checksum 0,
// as Linux FOU does by default: B cannot trust the kernel with the inner
// bytes, so its endpoint verifies every inner checksum itself (rxcsum.go)
// and still declares RX checksum offload, and data crosses byte-exact.
func TestZeroChecksumPeer(t *testing.T) {
	p := newPair(t, "127.0.0.1", func(side int, tun *stack.Tunnel) {
		tun.ZeroUDPChecksum = side == 0
	})
	ea, eb := p.a.Endpoint("to-b"), p.b.Endpoint("to-a")
	const offload = gvstack.CapabilityRXChecksumOffload
	transfer(t, p.a, p.b, "10.99.0.2:5001", 4<<20)
	transfer(t, p.b, p.a, "10.99.0.1:5002", 4<<20)
	for _, e := range []*endpoint.Endpoint{ea, eb} {
		if e.Capabilities()&offload == 0 {
			t.Error("RX checksum offload not declared between deliveries")
		}
	}
	for _, s := range []*stack.Stack{p.a, p.b} {
		if n := s.GVisor().Stats().TCP.ChecksumErrors.Value(); n != 0 {
			t.Errorf("%d TCP checksum errors", n)
		}
		if st := s.Stats()[0]; st.DropTotal() != 0 {
			t.Errorf("%s dropped %v", st.Name, st.Drops)
		}
	}
}

// TestOffloadPipe moves data byte-exact both ways over an in-memory pipe
// with loopback UDP's offloads (the benchmarks' transport=mem): GSO
// super-segments travel whole and arrive coalesced.
func TestOffloadPipe(t *testing.T) {
	oa, ob := netip.MustParseAddrPort("198.51.100.1:4700"), netip.MustParseAddrPort("198.51.100.2:4700")
	ta, tb := endpointtest.OffloadPipe(oa, ob, 0)
	a := newStack(t, stack.Config{Tunnels: []stack.Tunnel{{Name: "a", Local: oa, Remote: ob, Conn: ta,
		Addresses: []netip.Prefix{netip.MustParsePrefix("10.98.0.1/24"), netip.MustParsePrefix("fd98::1/64")}}}})
	b := newStack(t, stack.Config{Tunnels: []stack.Tunnel{{Name: "b", Local: ob, Remote: oa, Conn: tb,
		Addresses: []netip.Prefix{netip.MustParsePrefix("10.98.0.2/24"), netip.MustParsePrefix("fd98::2/64")}}}})
	transfer(t, a, b, "10.98.0.2:5001", 8<<20)
	transfer(t, b, a, "[fd98::1]:5002", 8<<20)
	for _, s := range []*stack.Stack{a, b} {
		st := s.Stats()[0]
		if st.RxCoalesced == 0 || st.DropTotal() != 0 {
			t.Errorf("%s: %d of %d packets received coalesced, drops %v", st.Name, st.RxCoalesced, st.RxPackets, st.Drops)
		}
	}
}
