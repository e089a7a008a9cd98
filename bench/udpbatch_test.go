package bench

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/stack"
)

// BenchmarkUDPRateBatch is BenchmarkUDPRate with the batch API on both
// ends: the sender hands batch datagrams to UDPConn.WriteBatch per call and
// the receiver takes up to batch per UDPConn.ReadBatch. It reports the
// datagrams per second that arrived, the share lost and where, and the
// CPU per datagram. batch=0 is the reference: one Write and one ReadFrom
// per datagram, BenchmarkUDPRate's path, with the same counters.
func BenchmarkUDPRateBatch(b *testing.B) {
	for _, size := range []int{64, 1400} {
		for _, batch := range []int{0, 64} {
			b.Run(fmt.Sprintf("size=%d/batch=%d", size, batch), func(b *testing.B) {
				udpRateBatch(b, size, batch)
			})
		}
	}
}

func udpRateBatch(b *testing.B, size, batch int) {
	a, bb := newPair(b, pairOptions{transport: "udp", mtu: 1472})
	pc, err := bb.ListenUDPAddrPort(netip.MustParseAddrPort("10.99.0.2:9000"))
	if err != nil {
		b.Fatal(err)
	}
	defer pc.Close()
	c, err := a.DialUDPAddrPort(netip.AddrPort{}, netip.MustParseAddrPort("10.99.0.2:9000"))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	// As in BenchmarkUDPRate, the reader is stopped by closing pc once
	// nothing more arrives for 300 ms.
	var got atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		msgs := make([]stack.Message, max(batch, 1))
		for i := range msgs {
			msgs[i].Buffers = [][]byte{make([]byte, 2048)}
		}
		for {
			if batch == 0 {
				if _, _, err := pc.ReadFrom(msgs[0].Buffers[0]); err != nil {
					return
				}
				got.Add(1)
				continue
			}
			n, err := pc.ReadBatch(msgs)
			if err != nil {
				return
			}
			got.Add(int64(n))
		}
	}()
	msgs := make([]stack.Message, max(batch, 1))
	for i := range msgs {
		msgs[i].Buffers = [][]byte{make([]byte, size)}
	}
	// Where datagrams are lost: at A's NIC queue, between the tunnel's
	// two outer sockets (the kernel), or at B's inner socket.
	stA, stB := a.Stats()[0], bb.Stats()[0]
	udpB := bb.GVisor().Stats().UDP
	rbe0 := udpB.ReceiveBufferErrors.Value()
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuTime(b)
	start := time.Now()
	c.SetWriteDeadline(time.Now().Add(time.Duration(b.N)*20*time.Microsecond + 10*time.Second))
	for i := 0; batch == 0 && i < b.N; i++ {
		binary.BigEndian.PutUint32(msgs[0].Buffers[0], uint32(i))
		if _, err := c.Write(msgs[0].Buffers[0]); err != nil {
			b.Fatalf("datagram %d of %d: %v", i, b.N, err)
		}
	}
	for i := 0; batch > 0 && i < b.N; i += batch {
		k := min(batch, b.N-i)
		for j := range k {
			binary.BigEndian.PutUint32(msgs[j].Buffers[0], uint32(i+j))
		}
		if n, err := c.WriteBatch(msgs[:k]); err != nil {
			b.Fatalf("datagram %d of %d: %v", i+n, b.N, err)
		}
	}
	sendTime := time.Since(start)
	cpu := cpuTime(b) - cpu0
	for last := int64(-1); ; {
		n := got.Load()
		if n == last || n == int64(b.N) {
			break
		}
		last = n
		time.Sleep(300 * time.Millisecond)
	}
	pc.Close()
	<-done
	b.StopTimer()
	n := int(got.Load())
	b.ReportMetric(float64(n)/sendTime.Seconds(), "pkts/s")
	b.ReportMetric(100*float64(b.N-n)/float64(b.N), "%lost")
	// CPU of the whole process (both stacks, user and kernel) while
	// sending, per datagram sent: less sensitive to other load on the
	// machine than the rate.
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/pkt")
	stA1, stB1 := a.Stats()[0], bb.Stats()[0]
	b.ReportMetric(float64(stA1.QueueDrops-stA.QueueDrops), "queue-drops")
	b.ReportMetric(float64((stA1.TxPackets-stA.TxPackets)-(stB1.RxPackets-stB.RxPackets)), "outer-drops")
	b.ReportMetric(float64(udpB.ReceiveBufferErrors.Value()-rbe0), "socket-drops")
}

// cpuTime is the CPU time, user and system, this process has used.
func cpuTime(tb testing.TB) time.Duration {
	tb.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
