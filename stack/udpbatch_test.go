package stack_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/stack"
)

// udpBatchPair returns a UDP socket of stack A at 10.97.0.1:5001 connected
// to one of stack B at 10.97.0.2:5002, which is unconnected, over an
// in-memory tunnel (lossless and in order below 4096 datagrams in flight).
func udpBatchPair(t *testing.T) (sa, sb *stack.Stack, ca, cb *stack.UDPConn) {
	t.Helper()
	a, b := pipeTunnels("to-b", netip.MustParsePrefix("10.97.0.1/24"), "to-a", netip.MustParsePrefix("10.97.0.2/24"))
	sa = newStack(t, stack.Config{Tunnels: []stack.Tunnel{a}})
	sb = newStack(t, stack.Config{Tunnels: []stack.Tunnel{b}})
	var err error
	if cb, err = sb.ListenUDPAddrPort(netip.MustParseAddrPort("10.97.0.2:5002")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cb.Close() })
	if ca, err = sa.DialUDPAddrPort(netip.MustParseAddrPort("10.97.0.1:5001"), netip.MustParseAddrPort("10.97.0.2:5002")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ca.Close() })
	return sa, sb, ca, cb
}

// readAll reads want datagrams with ReadBatch, batch messages at a time,
// each message a 100-byte and a 1400-byte buffer, and returns their
// payloads and sources in arrival order.
func readAll(t *testing.T, c *stack.UDPConn, want, batch int) (payloads [][]byte, from []netip.AddrPort) {
	t.Helper()
	msgs := make([]stack.Message, batch)
	for i := range msgs {
		msgs[i].Buffers = [][]byte{make([]byte, 100), make([]byte, 1400)}
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for len(payloads) < want {
		n, err := c.ReadBatch(msgs[:min(batch, want-len(payloads))])
		if err != nil {
			t.Fatalf("ReadBatch after %d of %d datagrams: %v", len(payloads), want, err)
		}
		if n == 0 {
			t.Fatalf("ReadBatch returned 0 datagrams and no error")
		}
		for _, m := range msgs[:n] {
			if m.Truncated {
				t.Fatalf("datagram %d: Truncated with %d bytes of buffer", len(payloads), 1500)
			}
			p := append(bytes.Clone(m.Buffers[0][:min(m.N, 100)]), m.Buffers[1][:max(m.N-100, 0)]...)
			payloads = append(payloads, p)
			from = append(from, m.Addr)
		}
	}
	return payloads, from
}

// TestUDPWriteReadBatch sends 1000 datagrams of 0 to 1400 random bytes,
// each split over two to three buffers, in batches of 64 with WriteBatch
// and receives them with ReadBatch, in batches of 32: the same bytes in
// the same order (SHA-256 over all), the right source, N and counters.
// B then echoes them all to A with addressed WriteBatch messages.
func TestUDPWriteReadBatch(t *testing.T) {
	const total, batch = 1000, 64
	sa, sb, ca, cb := udpBatchPair(t)
	rng := rand.New(rand.NewPCG(17, 2))
	var sent [][]byte
	sentHash := sha256.New()
	udpA, udpB := sa.GVisor().Stats().UDP, sb.GVisor().Stats().UDP
	sent0, recv0 := udpA.PacketsSent.Value(), udpB.PacketsReceived.Value()
	for len(sent) < total {
		msgs := make([]stack.Message, min(batch, total-len(sent)))
		for i := range msgs {
			p := make([]byte, rng.IntN(1401))
			for j := range p {
				p[j] = byte(rng.Uint32())
			}
			cut1 := rng.IntN(len(p) + 1)
			cut2 := cut1 + rng.IntN(len(p)-cut1+1)
			msgs[i].Buffers = [][]byte{p[:cut1], p[cut1:cut2], p[cut2:]}
			msgs[i].N = -1
			sent = append(sent, p)
			sentHash.Write(p)
		}
		n, err := ca.WriteBatch(msgs)
		if err != nil || n != len(msgs) {
			t.Fatalf("WriteBatch of %d = %d, %v", len(msgs), n, err)
		}
		for i, m := range msgs {
			if want := len(sent[len(sent)-len(msgs)+i]); m.N != want {
				t.Fatalf("WriteBatch message %d: N = %d, want %d", i, m.N, want)
			}
		}
		// Stay below the in-memory link's 4096 datagrams in flight.
		waitFor(t, "the batch to reach B's UDP", func() bool {
			return udpB.PacketsReceived.Value()-recv0 >= uint64(len(sent))
		})
	}
	if got := udpA.PacketsSent.Value() - sent0; got != total {
		t.Errorf("A's UDP PacketsSent moved by %d, want %d", got, total)
	}
	got, from := readAll(t, cb, total, 32)
	gotHash := sha256.New()
	for i, p := range got {
		if !bytes.Equal(p, sent[i]) {
			t.Fatalf("datagram %d: %d bytes %x..., want %d bytes %x...", i, len(p), p[:min(len(p), 8)], len(sent[i]), sent[i][:min(len(sent[i]), 8)])
		}
		if want := netip.MustParseAddrPort("10.97.0.1:5001"); from[i] != want {
			t.Fatalf("datagram %d: Addr = %v, want %v", i, from[i], want)
		}
		gotHash.Write(p)
	}
	if g, w := gotHash.Sum(nil), sentHash.Sum(nil); !bytes.Equal(g, w) {
		t.Errorf("SHA-256 received %x, sent %x", g, w)
	}

	// Echo, addressed: B's socket is not connected.
	for off := 0; off < total; off += batch {
		msgs := make([]stack.Message, min(batch, total-off))
		for i := range msgs {
			msgs[i] = stack.Message{Buffers: [][]byte{got[off+i]}, Addr: from[off+i]}
		}
		if n, err := cb.WriteBatch(msgs); err != nil || n != len(msgs) {
			t.Fatalf("echo WriteBatch = %d, %v", n, err)
		}
		waitFor(t, "the echo to reach A's UDP", func() bool {
			return udpA.PacketsReceived.Value() >= uint64(off+len(msgs))
		})
	}
	echo, efrom := readAll(t, ca, total, 7)
	for i, p := range echo {
		if !bytes.Equal(p, sent[i]) || efrom[i] != netip.MustParseAddrPort("10.97.0.2:5002") {
			t.Fatalf("echo %d: %d bytes from %v, want %d from 10.97.0.2:5002", i, len(p), efrom[i], len(sent[i]))
		}
	}
}

// TestUDPReadBatchTruncates: a datagram longer than a message's buffers
// fills them, reports Truncated and loses its tail; the next datagram goes
// to the next message whole, as recvmmsg does.
func TestUDPReadBatchTruncates(t *testing.T) {
	_, sb, ca, cb := udpBatchPair(t)
	long := make([]byte, 100)
	for i := range long {
		long[i] = byte(i)
	}
	for _, p := range [][]byte{long, long[:30], long[:5], {}} {
		if _, err := ca.Write(p); err != nil {
			t.Fatal(err)
		}
	}
	udpB := sb.GVisor().Stats().UDP
	waitFor(t, "4 datagrams at B", func() bool { return udpB.PacketsReceived.Value() >= 4 })
	msgs := []stack.Message{
		{Buffers: [][]byte{make([]byte, 10), make([]byte, 20)}}, // 100 bytes: truncated to 30
		{Buffers: [][]byte{make([]byte, 10), make([]byte, 20)}}, // 30 bytes: fits exactly
		{Buffers: nil},              // 5 bytes, no room: N 0, truncated
		{Buffers: [][]byte{{0xFF}}}, // empty datagram
		{Buffers: [][]byte{{0xFF}}}, // nothing queued: left alone
	}
	cb.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := cb.ReadBatch(msgs)
	if err != nil || n != 4 {
		t.Fatalf("ReadBatch = %d, %v; want 4 datagrams", n, err)
	}
	for i, want := range []struct {
		n     int
		trunc bool
	}{{30, true}, {30, false}, {0, true}, {0, false}} {
		if m := msgs[i]; m.N != want.n || m.Truncated != want.trunc {
			t.Errorf("message %d: N %d, Truncated %v; want %d, %v", i, m.N, m.Truncated, want.n, want.trunc)
		}
	}
	for i := range 2 {
		if got := append(bytes.Clone(msgs[i].Buffers[0]), msgs[i].Buffers[1]...); !bytes.Equal(got, long[:30]) {
			t.Errorf("message %d: %x, want %x", i, got, long[:30])
		}
	}
	if msgs[3].Buffers[0][0] != 0xFF || msgs[4].N != 0 || msgs[4].Addr.IsValid() {
		t.Errorf("messages 3 and 4 were written to: %x, %+v", msgs[3].Buffers[0], msgs[4])
	}
}

// TestUDPBatchErrors: deadlines, Close and unroutable addresses stop the
// batch calls with the net package's errors and say how far they got.
func TestUDPBatchErrors(t *testing.T) {
	_, _, ca, cb := udpBatchPair(t)
	one := []stack.Message{{Buffers: [][]byte{[]byte("x")}}}
	if n, err := ca.WriteBatch(nil); n != 0 || err != nil {
		t.Errorf("WriteBatch(nil) = %d, %v; want 0, nil", n, err)
	}
	if n, err := cb.ReadBatch(nil); n != 0 || err != nil {
		t.Errorf("ReadBatch(nil) = %d, %v; want 0, nil", n, err)
	}

	// Deadlines in the past, on a socket with a datagram queued.
	if _, err := ca.WriteBatch(one); err != nil {
		t.Fatal(err)
	}
	isTimeout := func(err error) bool {
		var ne net.Error
		return errors.As(err, &ne) && ne.Timeout() && errors.Is(err, os.ErrDeadlineExceeded)
	}
	ca.SetWriteDeadline(time.Now().Add(-time.Second))
	if n, err := ca.WriteBatch(one); n != 0 || !isTimeout(err) {
		t.Errorf("WriteBatch after the write deadline = %d, %v; want 0, i/o timeout", n, err)
	}
	ca.SetWriteDeadline(time.Time{})
	cb.SetReadDeadline(time.Now().Add(-time.Second))
	if n, err := cb.ReadBatch(make([]stack.Message, 1)); n != 0 || !isTimeout(err) {
		t.Errorf("ReadBatch after the read deadline = %d, %v; want 0, i/o timeout", n, err)
	}
	// A deadline reached while waiting: read the queued one, then wait.
	cb.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := cb.ReadBatch(make([]stack.Message, 4)); n != 1 || err != nil {
		t.Fatalf("ReadBatch = %d, %v; want the 1 queued datagram", n, err)
	}
	cb.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if n, err := cb.ReadBatch(make([]stack.Message, 4)); n != 0 || !isTimeout(err) {
		t.Errorf("ReadBatch on an empty socket past its deadline = %d, %v; want 0, i/o timeout", n, err)
	}

	// A deadline moved into the past wakes a waiting reader.
	cb.SetReadDeadline(time.Time{})
	done := make(chan error, 1)
	go func() {
		_, err := cb.ReadBatch(make([]stack.Message, 4))
		done <- err
	}()
	time.Sleep(20 * time.Millisecond) // let it wait; the result holds either way
	cb.SetReadDeadline(time.Now().Add(-time.Second))
	if err := <-done; !isTimeout(err) {
		t.Errorf("waiting ReadBatch after SetReadDeadline(past) = %v, want i/o timeout", err)
	}

	// Unroutable destination in the middle of a batch: the first two are
	// sent, the third fails, the fourth is not tried.
	msgs := []stack.Message{
		{Buffers: [][]byte{[]byte("a")}, Addr: netip.MustParseAddrPort("10.97.0.1:5001")},
		{Buffers: [][]byte{[]byte("b")}, Addr: netip.MustParseAddrPort("10.97.0.1:5001")},
		{Buffers: [][]byte{[]byte("c")}, Addr: netip.MustParseAddrPort("192.0.2.1:9")},
		{Buffers: [][]byte{[]byte("d")}, Addr: netip.MustParseAddrPort("10.97.0.1:5001"), N: -1},
	}
	n, err := cb.WriteBatch(msgs)
	var oe *net.OpError
	if n != 2 || !errors.Is(err, syscall.ENETUNREACH) || !errors.As(err, &oe) || oe.Addr.String() != "192.0.2.1:9" {
		t.Errorf("WriteBatch with an unroutable third message = %d, %v; want 2, network is unreachable to 192.0.2.1:9", n, err)
	}
	if msgs[1].N != 1 || msgs[3].N != -1 {
		t.Errorf("N of messages 1 and 3 = %d, %d; want 1 (sent), -1 (untouched)", msgs[1].N, msgs[3].N)
	}
	ca.SetReadDeadline(time.Now().Add(10 * time.Second))
	if got, _ := readAll(t, ca, 2, 4); string(got[0])+string(got[1]) != "ab" {
		t.Errorf("A received %q, %q; want \"a\", \"b\"", got[0], got[1])
	}

	// Close wakes a waiting reader with net.ErrClosed; then both fail.
	go func() {
		_, err := ca.ReadBatch(make([]stack.Message, 4))
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	ca.Close()
	if err := <-done; !errors.Is(err, net.ErrClosed) {
		t.Errorf("waiting ReadBatch after Close = %v, want net.ErrClosed", err)
	}
	if n, err := ca.WriteBatch(one); n != 0 || !errors.Is(err, net.ErrClosed) {
		t.Errorf("WriteBatch after Close = %d, %v; want 0, net.ErrClosed", n, err)
	}
	if n, err := ca.ReadBatch(make([]stack.Message, 1)); n != 0 || !errors.Is(err, net.ErrClosed) {
		t.Errorf("ReadBatch after Close = %d, %v; want 0, net.ErrClosed", n, err)
	}
}

// TestUDPWriteBatchWaitsForRoom writes far more than the send buffer holds
// (212 KiB, about 2,100 small datagrams) in one batch over a real loopback
// tunnel: WriteBatch must wait for room and send every datagram, none
// dropped at the tunnel NIC's queue.
func TestUDPWriteBatchWaitsForRoom(t *testing.T) {
	const total = 20000
	p := newPair(t, "127.0.0.1", nil)
	// Nobody reads it: its 4 MiB receive buffer holds 20,000 datagrams
	// of 64 bytes.
	srv, err := p.b.ListenUDPAddrPort(netip.MustParseAddrPort("10.99.0.2:7002"))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	c, err := p.a.DialUDPAddrPort(netip.MustParseAddrPort("10.99.0.1:7002"), netip.MustParseAddrPort("10.99.0.2:7002"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msgs := make([]stack.Message, total)
	for i := range msgs {
		b := make([]byte, 64)
		binary.BigEndian.PutUint32(b, uint32(i))
		msgs[i].Buffers = [][]byte{b}
	}
	st := p.a.GVisor().Stats()
	sent0 := st.UDP.PacketsSent.Value()
	if n, err := c.WriteBatch(msgs); n != total || err != nil {
		t.Fatalf("WriteBatch of %d = %d, %v", total, n, err)
	}
	if sent := st.UDP.PacketsSent.Value() - sent0; sent != total {
		t.Errorf("A's UDP PacketsSent moved by %d, want %d", sent, total)
	}
	if d := st.NICs.TxPacketsDroppedNoBufferSpace.Value(); d != 0 {
		t.Errorf("A's NIC queue dropped %d of %d datagrams; the writer should have been held back", d, total)
	}
}

// TestUDPBatchIPv6 sends a batch over inner IPv6 on a real loopback tunnel
// and checks the bytes and the IPv6 source ReadBatch reports.
func TestUDPBatchIPv6(t *testing.T) {
	p := newPair(t, "127.0.0.1", nil)
	srv, err := p.b.ListenUDPAddrPort(netip.MustParseAddrPort("[fd99::2]:7003"))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	cl, err := p.a.DialUDPAddrPort(netip.MustParseAddrPort("[fd99::1]:7004"), netip.MustParseAddrPort("[fd99::2]:7003"))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	msgs := make([]stack.Message, 8)
	for i := range msgs {
		msgs[i].Buffers = [][]byte{{byte(i), 0xA5}, bytes.Repeat([]byte{byte(i)}, i)}
	}
	if n, err := cl.WriteBatch(msgs); n != len(msgs) || err != nil {
		t.Fatalf("WriteBatch = %d, %v", n, err)
	}
	got, from := readAll(t, srv, len(msgs), 8)
	for i, g := range got {
		want := append([]byte{byte(i), 0xA5}, bytes.Repeat([]byte{byte(i)}, i)...)
		if !bytes.Equal(g, want) || from[i] != netip.MustParseAddrPort("[fd99::1]:7004") {
			t.Errorf("datagram %d: %x from %v, want %x from [fd99::1]:7004", i, g, from[i], want)
		}
	}
}
