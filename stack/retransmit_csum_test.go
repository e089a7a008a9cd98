//go:build linux

package stack_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/endpoint"
	"github.com/ipipstack/ipipstack/endpoint/encap"
	"github.com/ipipstack/ipipstack/endpoint/impair"
	"github.com/ipipstack/ipipstack/stack"
)

// TestRetransmitChecksums: over a lossy link, with the stack segmenting
// TCP itself (GSO off) or handing the endpoint super-segments, every
// segment, retransmissions included, leaves with a correct checksum: the
// receiver, which checks each one itself (a wrapped transport is never
// trusted with the kernel's verification), counts no bad one.
func TestRetransmitChecksums(t *testing.T) {
	for _, gso := range []bool{false, true} {
		t.Run(fmt.Sprintf("gso=%v", gso), func(t *testing.T) {
			var conns [2]*impair.Conn
			p := newPair(t, "127.0.0.1", func(side int, tun *stack.Tunnel) {
				tr, err := endpoint.ListenUDP(tun.Local, endpoint.SocketOptions{})
				if err != nil {
					t.Fatal(err)
				}
				conns[side] = impair.Wrap(tr, impair.Options{Loss: 0.02, Seed: uint64(7 + side)})
				tun.Conn = conns[side]
				tun.DisableGSO = !gso
			})
			lossyTransfers(t, p)
			if conns[0].Stats().Lost == 0 {
				t.Error("nothing was lost: no retransmission was tested")
			}
		})
	}
}

// TestRetransmitChecksumsRaw is TestRetransmitChecksums over raw IPv4
// sockets in namespaces, where nothing verifies the inner bytes on the
// way: with GSO off the stack's own segments, retransmissions included,
// must leave with correct checksums.
func TestRetransmitChecksumsRaw(t *testing.T) {
	rawPrivileged(t)
	n := rawNewNet(t)
	for _, gso := range []bool{false, true} {
		t.Run(fmt.Sprintf("gso=%v", gso), func(t *testing.T) {
			var conns [2]*impair.Conn
			p := rawPair(t, n, false, func(side int, tun *stack.Tunnel) {
				tun.DisableGSO = !gso
				tun.Wrap = func(tr endpoint.Transport) endpoint.Transport {
					conns[side] = impair.Wrap(tr, impair.Options{Loss: 0.02, Seed: uint64(11 + side)})
					return conns[side]
				}
			})
			lossyTransfers(t, p)
		})
	}
}

// TestRetransmitChecksumsMTUDrop: the sender's tunnel MTU drops in the
// middle of a transfer, so gVisor's TCP learns a smaller segment size from
// the endpoint's Fragmentation Needed and cuts what it retransmits anew;
// every piece must leave with a correct checksum, and the transfer must
// finish.
func TestRetransmitChecksumsMTUDrop(t *testing.T) {
	for _, gso := range []bool{false, true} {
		t.Run(fmt.Sprintf("gso=%v", gso), func(t *testing.T) {
			p := newPair(t, "127.0.0.1", func(side int, tun *stack.Tunnel) {
				tun.DisableGSO = !gso
				tun.ZeroUDPChecksum = true // the receiver checks every checksum itself
			})
			ea := p.a.Endpoint("to-b")
			go func() {
				time.Sleep(20 * time.Millisecond)
				ea.SetMTU(1000)
			}()
			transfer(t, p.a, p.b, "10.99.0.2:5001", 16<<20)
			for _, s := range []*stack.Stack{p.a, p.b} {
				st := s.Stats()[0]
				if n := st.Drops[encap.BadChecksum]; n != 0 {
					t.Errorf("%s: %d packets arrived with a bad checksum", st.Name, n)
				}
			}
			if ea.MTU() != 1000 {
				t.Fatalf("MTU %d, want 1000", ea.MTU())
			}
		})
	}
}

// lossyTransfers moves 4 MiB each way over p, inner IPv4 then IPv6, and
// checks that neither end received a segment with a bad checksum.
func lossyTransfers(t *testing.T, p *pair) {
	t.Helper()
	setMinRTO(t, 20*time.Millisecond, p.a, p.b)
	transfer(t, p.a, p.b, "10.99.0.2:5001", 4<<20)
	transfer(t, p.b, p.a, "[fd99::1]:5002", 4<<20)
	for _, s := range []*stack.Stack{p.a, p.b} {
		st := s.Stats()[0]
		if n := st.Drops[encap.BadChecksum]; n != 0 {
			t.Errorf("%s: %d packets arrived with a bad checksum", st.Name, n)
		}
		if n := s.GVisor().Stats().TCP.ChecksumErrors.Value(); n != 0 {
			t.Errorf("%s: gVisor counted %d TCP checksum errors", st.Name, n)
		}
	}
}
