package endpointtest

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/ipipstack/ipipstack/endpoint"
)

// TestPipeRoundTripNoAllocs checks that a datagram through a Pipe arrives
// intact and that, once the buffer pool is warm, moving it allocates
// nothing: the pool holds pointers, so Put does not box a slice header
// (staticcheck SA6002).
//
// Under -race, sync.Pool drops a quarter of Puts at random, which costs
// two allocations (the buffer and its pointer) a quarter of the time: 0.5
// per datagram on average, which AllocsPerRun's integer result rounds to
// 0, where boxing []byte in Put costs at least 1 every time.
func TestPipeRoundTripNoAllocs(t *testing.T) {
	a, b := Pipe(netip.MustParseAddrPort("10.0.0.1:1"), netip.MustParseAddrPort("10.0.0.2:2"), 4)
	t.Cleanup(func() { a.Close(); b.Close() })
	r := b.Receivers()[0]

	hdr, payload := []byte{0x45, 0x00}, []byte("inner packet bytes")
	want := append(append([]byte{}, hdr...), payload...)
	out := []endpoint.Message{{Buffers: [][]byte{hdr, payload}, Addr: b.LocalAddr()}}
	in := []endpoint.Message{{Buffers: [][]byte{make([]byte, 2048)}}}
	roundTrip := func() {
		if n, err := a.WriteBatch(out); n != 1 || err != nil {
			t.Fatalf("WriteBatch = %d, %v, want 1, nil", n, err)
		}
		if n, err := r.ReadBatch(in); n != 1 || err != nil {
			t.Fatalf("ReadBatch = %d, %v, want 1, nil", n, err)
		}
	}
	roundTrip()
	if got := in[0].Buffers[0][:in[0].N]; !bytes.Equal(got, want) {
		t.Fatalf("read %x, want %x", got, want)
	}
	if in[0].Addr != a.LocalAddr() {
		t.Errorf("read from %v, want %v", in[0].Addr, a.LocalAddr())
	}
	if allocs := testing.AllocsPerRun(1000, roundTrip); allocs != 0 {
		t.Errorf("a write and read of one datagram allocate %v times, want 0", allocs)
	}
}
