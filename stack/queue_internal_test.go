package stack

import (
	"slices"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	gvstack "gvisor.dev/gvisor/pkg/tcpip/stack"
)

// gateWriter is a LinkWriter that records the first payload byte of each
// packet written and blocks each WritePackets call until told to go on.
type gateWriter struct {
	entered chan int      // the batch size of each call, on entry
	proceed chan struct{} // one receive per call
	got     []byte        // written under the gate: read after the last call
}

func (w *gateWriter) WritePackets(pkts gvstack.PacketBufferList) (int, tcpip.Error) {
	w.entered <- pkts.Len()
	<-w.proceed
	for _, p := range pkts.AsSlice() {
		w.got = append(w.got, p.Data().AsRange().ToSlice()[0])
	}
	return pkts.Len(), nil
}

func queuePacket(b byte) *gvstack.PacketBuffer {
	return gvstack.NewPacketBuffer(gvstack.PacketBufferOptions{Payload: buffer.MakeWithData([]byte{b})})
}

// TestLazyQueue checks lazyQueue's contract: packets reach the link in
// order, in batches, the queue holds limit packets besides the batch
// being written and drops the next with ErrNoBufferSpace, the drain
// goroutine returns when the queue is empty, and Close drops what is left.
func TestLazyQueue(t *testing.T) {
	const limit = 90 // grows the queue's slice past keptQueueCap
	w := &gateWriter{entered: make(chan int), proceed: make(chan struct{})}
	q := newLazyQueue(w, limit)
	write := func(b byte) tcpip.Error {
		p := queuePacket(b)
		defer p.DecRef() // the queue took its own reference
		return q.WritePacket(p)
	}
	if err := write(0); err != nil {
		t.Fatalf("WritePacket(0) = %v", err)
	}
	if n := <-w.entered; n != 1 {
		t.Fatalf("first batch has %d packets, want 1", n)
	}
	// The drain goroutine is writing packet 0: limit more fit.
	for i := 1; i <= limit; i++ {
		if err := write(byte(i)); err != nil {
			t.Fatalf("WritePacket(%d) = %v, want nil", i, err)
		}
	}
	if err := write(limit + 1); err == nil {
		t.Fatalf("WritePacket to a full queue = nil, want ErrNoBufferSpace")
	} else if _, ok := err.(*tcpip.ErrNoBufferSpace); !ok {
		t.Fatalf("WritePacket to a full queue = %v, want ErrNoBufferSpace", err)
	}
	var batches []int
	w.proceed <- struct{}{}
	for got := 0; got < limit; {
		n := <-w.entered
		batches = append(batches, n)
		got += n
		w.proceed <- struct{}{}
	}
	if want := []int{47, limit - 47}; !slices.Equal(batches, want) {
		t.Errorf("batches of %v packets, want %v", batches, want)
	}
	waitDrained := func() {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
			q.mu.Lock()
			d := q.draining
			q.mu.Unlock()
			if !d {
				return
			}
			if time.Now().After(deadline) {
				t.Fatal("the drain goroutine did not return with the queue empty")
			}
		}
	}
	waitDrained()
	want := make([]byte, limit+1)
	for i := range want {
		want[i] = byte(i)
	}
	if !slices.Equal(w.got, want) {
		t.Errorf("link got packets %v, want %v", w.got, want)
	}
	if cap(q.pkts) > keptQueueCap {
		t.Errorf("drained queue keeps room for %d packets, want at most %d", cap(q.pkts), keptQueueCap)
	}

	// Close while the goroutine writes a batch: the rest is dropped.
	write(100)
	<-w.entered
	write(101)
	closed := make(chan struct{})
	go func() { q.Close(); close(closed) }()
	for {
		q.mu.Lock()
		c := q.closed
		q.mu.Unlock()
		if c {
			break
		}
		time.Sleep(time.Millisecond)
	}
	w.proceed <- struct{}{}
	<-closed
	if got := w.got[len(w.got)-1]; got != 100 {
		t.Errorf("last packet written = %d, want 100 (101 dropped at Close)", got)
	}
	if err := write(102); err == nil {
		t.Error("WritePacket after Close = nil, want ErrClosedForSend")
	}
}
