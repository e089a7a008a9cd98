package impair_test

import (
	"bytes"
	"encoding/binary"
	"math/bits"
	"net/netip"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/ipipstack/ipipstack/endpoint"
	"github.com/ipipstack/ipipstack/endpoint/endpointtest"
	"github.com/ipipstack/ipipstack/endpoint/impair"
)

var (
	addrA = netip.MustParseAddrPort("127.0.0.1:1")
	addrB = netip.MustParseAddrPort("127.0.0.1:2")
)

// rig is an impaired transport whose datagrams a test reads at the other end
// of a pipe.
type rig struct {
	c  *impair.Conn
	rx endpoint.Receiver
}

func newRig(t testing.TB, opts impair.Options) *rig {
	t.Helper()
	a, b := endpointtest.Pipe(addrA, addrB, 1<<16)
	c := impair.Wrap(a, opts)
	t.Cleanup(func() { c.Close(); b.Close() })
	return &rig{c: c, rx: b.Receivers()[0]}
}

// datagram is a test payload: a sequence number and padding to size.
func datagram(seq, size int) []byte {
	b := make([]byte, max(size, 4))
	binary.BigEndian.PutUint32(b, uint32(seq))
	for i := 4; i < len(b); i++ {
		b[i] = byte(seq + i)
	}
	return b
}

// write sends n datagrams of size bytes, in batches of 16.
func (r *rig) write(t testing.TB, n, size int) {
	t.Helper()
	var msgs []endpoint.Message
	flush := func() {
		if got, err := r.c.WriteBatch(msgs); err != nil || got != len(msgs) {
			t.Fatalf("WriteBatch(%d) = %d, %v", len(msgs), got, err)
		}
		msgs = msgs[:0]
	}
	for i := range n {
		b := datagram(i, size)
		// Two segments, as the endpoint gives an outer header and a packet.
		msgs = append(msgs, endpoint.Message{Buffers: [][]byte{b[:2], b[2:]}, Addr: addrB})
		if len(msgs) == 16 {
			flush()
		}
	}
	if len(msgs) > 0 {
		flush()
	}
}

type arrival struct {
	b  []byte
	at time.Time
}

// read collects datagrams until none has come for quiet.
func (r *rig) read(t testing.TB, quiet time.Duration) []arrival {
	t.Helper()
	type batch struct {
		a   []arrival
		err error
	}
	ch := make(chan batch, 64)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		msgs := make([]endpoint.Message, 16)
		for i := range msgs {
			msgs[i].Buffers = [][]byte{make([]byte, 65536)}
		}
		for {
			n, err := r.rx.ReadBatch(msgs)
			var bt batch
			bt.err = err
			now := time.Now()
			for i := range n {
				bt.a = append(bt.a, arrival{bytes.Clone(msgs[i].Buffers[0][:msgs[i].N]), now})
			}
			select {
			case ch <- bt:
			case <-stop:
				return
			}
			if err != nil {
				return
			}
		}
	}()
	var out []arrival
	deadline := time.After(30 * time.Second)
	for {
		select {
		case bt := <-ch:
			if bt.err != nil {
				t.Fatalf("ReadBatch: %v", bt.err)
			}
			out = append(out, bt.a...)
		case <-time.After(quiet):
			return out
		case <-deadline:
			t.Fatal("read did not go quiet in 30 s")
		}
	}
}

func seqOf(b []byte) int { return int(binary.BigEndian.Uint32(b)) }

func TestNoImpairment(t *testing.T) {
	r := newRig(t, impair.Options{})
	r.write(t, 1000, 100)
	got := r.read(t, 50*time.Millisecond)
	if len(got) != 1000 {
		t.Fatalf("received %d datagrams, want 1000", len(got))
	}
	for i, a := range got {
		if !bytes.Equal(a.b, datagram(i, 100)) {
			t.Fatalf("datagram %d = %x, want %x", i, a.b, datagram(i, 100))
		}
	}
	if diff := cmp.Diff(impair.Stats{Datagrams: 1000, Sent: 1000}, r.c.Stats()); diff != "" {
		t.Errorf("Stats (-want +got):\n%s", diff)
	}
}

func TestLoss(t *testing.T) {
	r := newRig(t, impair.Options{Loss: 0.1, Seed: 1})
	r.write(t, 10000, 64)
	got := r.read(t, 50*time.Millisecond)
	st := r.c.Stats()
	if uint64(len(got))+st.Lost != 10000 || st.Sent != uint64(len(got)) {
		t.Errorf("received %d, stats %+v: want received + lost = 10000 = sent + lost", len(got), st)
	}
	if st.Lost < 850 || st.Lost > 1150 {
		t.Errorf("lost %d of 10000 at 10%%, want about 1000", st.Lost)
	}
	last := -1
	for _, a := range got {
		if s := seqOf(a.b); s <= last {
			t.Fatalf("datagram %d after %d: loss alone must not reorder", s, last)
		} else {
			last = s
		}
	}
}

func TestDuplicate(t *testing.T) {
	r := newRig(t, impair.Options{Duplicate: 0.05, Seed: 2})
	r.write(t, 10000, 64)
	got := r.read(t, 50*time.Millisecond)
	st := r.c.Stats()
	if uint64(len(got)) != 10000+st.Duplicated {
		t.Errorf("received %d, want 10000 + %d duplicated", len(got), st.Duplicated)
	}
	if st.Duplicated < 400 || st.Duplicated > 600 {
		t.Errorf("duplicated %d of 10000 at 5%%, want about 500", st.Duplicated)
	}
	seen := map[int]int{}
	for _, a := range got {
		seen[seqOf(a.b)]++
	}
	dups := 0
	for i := range 10000 {
		switch seen[i] {
		case 1:
		case 2:
			dups++
		default:
			t.Fatalf("datagram %d arrived %d times", i, seen[i])
		}
	}
	if uint64(dups) != st.Duplicated {
		t.Errorf("%d datagrams arrived twice, Stats says %d", dups, st.Duplicated)
	}
}

func TestCorrupt(t *testing.T) {
	r := newRig(t, impair.Options{Corrupt: 0.02, Seed: 3})
	r.write(t, 10000, 200)
	got := r.read(t, 50*time.Millisecond)
	if len(got) != 10000 {
		t.Fatalf("received %d, want 10000", len(got))
	}
	corrupted := 0
	for i, a := range got {
		want := datagram(i, 200)
		flipped := 0
		for k := range want {
			flipped += bits.OnesCount8(want[k] ^ a.b[k])
		}
		switch flipped {
		case 0:
		case 1:
			corrupted++
		default:
			t.Fatalf("datagram %d has %d bits flipped, want 0 or 1", i, flipped)
		}
	}
	st := r.c.Stats()
	if uint64(corrupted) != st.Corrupted || corrupted < 150 || corrupted > 250 {
		t.Errorf("%d datagrams corrupted, Stats says %d, want about 200", corrupted, st.Corrupted)
	}
}

func TestReorder(t *testing.T) {
	// A long ReorderTimeout: only later datagrams release held ones.
	r := newRig(t, impair.Options{Reorder: 0.05, ReorderGap: 2, ReorderTimeout: 300 * time.Millisecond, Seed: 4})
	r.write(t, 10000, 64)
	got := r.read(t, 500*time.Millisecond)
	if len(got) != 10000 {
		t.Fatalf("received %d, want all 10000", len(got))
	}
	late, seen := 0, map[int]bool{}
	maxSeen := -1
	for _, a := range got {
		s := seqOf(a.b)
		if seen[s] {
			t.Fatalf("datagram %d arrived twice", s)
		}
		seen[s] = true
		if s < maxSeen {
			late++
			// Overtaken by ReorderGap datagrams, a few more if they
			// were held too, fewer if it was held at the end.
			if maxSeen-s > 10 {
				t.Errorf("datagram %d arrived after %d", s, maxSeen)
			}
		}
		maxSeen = max(maxSeen, s)
	}
	st := r.c.Stats()
	if uint64(late) != st.Reordered || late < 400 || late > 600 {
		t.Errorf("%d datagrams arrived late, Stats says %d reordered, want about 500", late, st.Reordered)
	}
}

// TestReorderTimeout checks that a held datagram with nothing after it is
// released after ReorderTimeout, not lost.
func TestReorderTimeout(t *testing.T) {
	r := newRig(t, impair.Options{Reorder: 1, ReorderTimeout: 20 * time.Millisecond})
	start := time.Now()
	r.write(t, 1, 64)
	got := r.read(t, 100*time.Millisecond)
	if len(got) != 1 {
		t.Fatalf("received %d, want the held datagram", len(got))
	}
	if d := got[0].at.Sub(start); d < 20*time.Millisecond || d > 80*time.Millisecond {
		t.Errorf("held datagram arrived after %v, want about 20ms", d)
	}
}

func TestDelayJitter(t *testing.T) {
	r := newRig(t, impair.Options{Delay: 20 * time.Millisecond, Jitter: 10 * time.Millisecond, Seed: 5})
	start := time.Now()
	r.write(t, 200, 64)
	got := r.read(t, 100*time.Millisecond)
	if len(got) != 200 {
		t.Fatalf("received %d, want 200", len(got))
	}
	var lo, hi time.Duration = time.Hour, 0
	reordered := 0
	for i, a := range got {
		d := a.at.Sub(start)
		lo, hi = min(lo, d), max(hi, d)
		if i > 0 && seqOf(a.b) < seqOf(got[i-1].b) {
			reordered++
		}
	}
	// 10..30 ms, with slack for a loaded machine at the top.
	if lo < 10*time.Millisecond || hi > 80*time.Millisecond {
		t.Errorf("delays %v..%v, want within 10ms..30ms (+ scheduling)", lo, hi)
	}
	if hi-lo < 5*time.Millisecond {
		t.Errorf("delays %v..%v: jitter did not spread them", lo, hi)
	}
	if reordered == 0 {
		t.Error("jitter of 10ms over 200 back-to-back datagrams reordered none")
	}
	if st := r.c.Stats(); st.Delayed != 200 {
		t.Errorf("Stats.Delayed = %d, want 200", st.Delayed)
	}
}

func TestRateQueue(t *testing.T) {
	// 8 Mbit/s = 1 MB/s; 512 KiB with a 64 KiB burst takes about 0.46 s.
	r := newRig(t, impair.Options{Rate: 8e6, RateBurst: 64 << 10, RateQueue: 1 << 20})
	start := time.Now()
	r.write(t, 512, 1024)
	got := r.read(t, 100*time.Millisecond)
	if len(got) != 512 {
		t.Fatalf("received %d, want 512 (queue large enough)", len(got))
	}
	d := got[len(got)-1].at.Sub(start)
	if d < 400*time.Millisecond || d > 700*time.Millisecond {
		t.Errorf("512 KiB at 1 MB/s took %v, want about 460ms", d)
	}
	for i, a := range got {
		if seqOf(a.b) != i {
			t.Fatalf("datagram %d arrived at position %d: the rate limit must keep order", seqOf(a.b), i)
		}
	}
}

func TestRateDrop(t *testing.T) {
	// A policer: the 64 KiB burst passes, the rest of 512 KiB is dropped.
	r := newRig(t, impair.Options{Rate: 8e6, RateBurst: 64 << 10, RateQueue: -1})
	start := time.Now()
	r.write(t, 512, 1024)
	elapsed := time.Since(start)
	got := r.read(t, 100*time.Millisecond)
	st := r.c.Stats()
	if uint64(len(got))+st.RateDropped != 512 {
		t.Errorf("received %d + rate dropped %d, want 512", len(got), st.RateDropped)
	}
	// The burst, plus what the bucket refilled while writing.
	most := 64 + 1 + int(elapsed.Seconds()*1e6/1024)
	if len(got) < 64 || len(got) > most {
		t.Errorf("received %d datagrams of 1 KiB through a 64 KiB bucket in %v, want 64..%d", len(got), elapsed, most)
	}
}

// TestDeterministic checks that the same seed gives the same impairments.
func TestDeterministic(t *testing.T) {
	opts := impair.Options{Loss: 0.05, Duplicate: 0.05, Corrupt: 0.05, Reorder: 0.05, Seed: 42}
	var runs [2][]string
	var stats [2]impair.Stats
	for i := range runs {
		r := newRig(t, opts)
		r.write(t, 2000, 64)
		for _, a := range r.read(t, 50*time.Millisecond) {
			runs[i] = append(runs[i], string(a.b))
		}
		// Holds may be released by timeout at different moments: the
		// datagrams are the same, their order may not be.
		slices.Sort(runs[i])
		stats[i] = r.c.Stats()
	}
	if diff := cmp.Diff(stats[0], stats[1]); diff != "" {
		t.Errorf("Stats differ between runs with one seed (-first +second):\n%s", diff)
	}
	if !cmp.Equal(runs[0], runs[1]) {
		t.Error("datagrams received differ between runs with one seed")
	}
	opts.Seed = 43
	r := newRig(t, opts)
	r.write(t, 2000, 64)
	r.read(t, 50*time.Millisecond)
	if r.c.Stats() == stats[0] {
		t.Error("seeds 42 and 43 gave the same Stats")
	}
}

func TestCloseStopsGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	a, b := endpointtest.Pipe(addrA, addrB, 0)
	c := impair.Wrap(a, impair.Options{Delay: time.Hour, Reorder: 0.5, Rate: 1e6})
	msgs := []endpoint.Message{{Buffers: [][]byte{datagram(1, 100)}, Addr: addrB}}
	for range 10 {
		c.WriteBatch(msgs)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	b.Close()
	if n, err := c.WriteBatch(msgs); n != 0 || err != endpoint.ErrClosed {
		t.Errorf("WriteBatch after Close = %d, %v; want 0, ErrClosed", n, err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		t.Errorf("%d goroutines before, %d after Close", before, n)
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		opts impair.Options
		ok   bool
	}{
		{"zero", impair.Options{}, true},
		{"all", impair.Options{Loss: 1, Reorder: 0.5, Duplicate: 0.1, Corrupt: 0.01, Delay: time.Millisecond, Jitter: time.Millisecond, Rate: 1e8}, true},
		{"loss above 1", impair.Options{Loss: 1.5}, false},
		{"negative corrupt", impair.Options{Corrupt: -0.1}, false},
		{"negative delay", impair.Options{Delay: -1}, false},
		{"negative rate", impair.Options{Rate: -1}, false},
		{"queue", impair.Options{RateQueue: -2}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.opts.Validate()
			if (err == nil) != tt.ok {
				t.Errorf("Validate() = %v, want ok %v", err, tt.ok)
			}
		})
	}
}

// TestGSOSplit checks that a GSO super-datagram is cut into its datagrams.
func TestGSOSplit(t *testing.T) {
	r := newRig(t, impair.Options{})
	var all []byte
	for i := range 5 {
		all = append(all, datagram(i, 100)...)
	}
	msgs := []endpoint.Message{{Buffers: [][]byte{all[:150], all[150:450]}, Addr: addrB, GSOSize: 100}}
	if n, err := r.c.WriteBatch(msgs); n != 1 || err != nil {
		t.Fatalf("WriteBatch = %d, %v", n, err)
	}
	got := r.read(t, 50*time.Millisecond)
	if len(got) != 5 {
		t.Fatalf("received %d datagrams, want 5 of 100 bytes", len(got))
	}
	for i, a := range got {
		if want := datagram(i, 100); i < 4 && !bytes.Equal(a.b, want) || i == 4 && !bytes.Equal(a.b, want[:50]) {
			t.Errorf("datagram %d = %x", i, a.b)
		}
	}
}
