// Package endpointtest provides test doubles for endpoint: an in-memory
// Transport pair that behaves like two connected UDP sockets.
package endpointtest

import (
	"net/netip"
	"sync"

	"github.com/ipipstack/ipipstack/endpoint"
)

// Pipe returns two connected in-memory transports with FOU framing: what
// one writes, the other reads, in order, from the first's address. Each
// direction queues up to queueLen datagrams (0 means 4096); a write to a
// full queue drops the datagram, as a full socket buffer does.
func Pipe(a, b netip.AddrPort, queueLen int) (endpoint.Transport, endpoint.Transport) {
	if queueLen <= 0 {
		queueLen = 4096
	}
	ab := make(chan []byte, queueLen)
	ba := make(chan []byte, queueLen)
	done := make(chan struct{})
	var once sync.Once
	closeAll := func() { once.Do(func() { close(done) }) }
	pa := &pipeEnd{local: a, remote: b, out: ab, in: ba, done: done, close: closeAll}
	pb := &pipeEnd{local: b, remote: a, out: ba, in: ab, done: done, close: closeAll}
	return pa, pb
}

type pipeEnd struct {
	local, remote netip.AddrPort
	out           chan<- []byte
	in            <-chan []byte
	done          chan struct{}
	close         func()
}

var bufPool = sync.Pool{New: func() any { return make([]byte, 0, 65536) }}

func (p *pipeEnd) Framing() endpoint.Framing      { return endpoint.FramingUDP }
func (p *pipeEnd) LocalAddr() netip.AddrPort      { return p.local }
func (p *pipeEnd) Receivers() []endpoint.Receiver { return []endpoint.Receiver{p} }
func (p *pipeEnd) Close() error                   { p.close(); return nil }

// WriteBatch implements endpoint.Transport.WriteBatch. The datagrams are
// copied; msgs may be reused when it returns.
func (p *pipeEnd) WriteBatch(msgs []endpoint.Message) (int, error) {
	for i := range msgs {
		b := bufPool.Get().([]byte)[:0]
		for _, seg := range msgs[i].Buffers {
			b = append(b, seg...)
		}
		select {
		case <-p.done:
			return i, endpoint.ErrClosed
		default:
		}
		select {
		case p.out <- b:
		default:
			bufPool.Put(b) // queue full: dropped on the "wire"
		}
	}
	return len(msgs), nil
}

// ReadBatch implements endpoint.Receiver.ReadBatch.
func (p *pipeEnd) ReadBatch(msgs []endpoint.Message) (int, error) {
	n := 0
	fill := func(b []byte) {
		m := &msgs[n]
		m.N = copy(m.Buffers[0], b)
		m.Addr = p.remote
		m.HasTOS = false
		bufPool.Put(b[:0])
		n++
	}
	select {
	case b := <-p.in:
		fill(b)
	case <-p.done:
		return 0, endpoint.ErrClosed
	}
	for n < len(msgs) {
		select {
		case b := <-p.in:
			fill(b)
		default:
			return n, nil
		}
	}
	return n, nil
}
