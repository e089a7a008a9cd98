// Package endpointtest provides test doubles for endpoint: an in-memory
// Transport pair that behaves like two connected UDP sockets, with or
// without the kernel's segmentation offloads.
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
	return pipe(a, b, queueLen, false)
}

// OffloadPipe is Pipe with the offloads of a UDP socket on loopback: a
// write with a GSO size travels as one message and is read as one
// coalesced message of datagrams of that size (UDP_SEGMENT and UDP_GRO,
// which loopback never splits), and reads are marked verified, as behind
// a checked UDP checksum: in memory nothing alters the bytes.
func OffloadPipe(a, b netip.AddrPort, queueLen int) (endpoint.Transport, endpoint.Transport) {
	return pipe(a, b, queueLen, true)
}

func pipe(a, b netip.AddrPort, queueLen int, offload bool) (endpoint.Transport, endpoint.Transport) {
	if queueLen <= 0 {
		queueLen = 4096
	}
	ab := make(chan datagram, queueLen)
	ba := make(chan datagram, queueLen)
	done := make(chan struct{})
	var once sync.Once
	closeAll := func() { once.Do(func() { close(done) }) }
	pa := &pipeEnd{local: a, remote: b, out: ab, in: ba, done: done, close: closeAll}
	pb := &pipeEnd{local: b, remote: a, out: ba, in: ab, done: done, close: closeAll}
	if offload {
		return &offloadEnd{pa}, &offloadEnd{pb}
	}
	return pa, pb
}

// datagram is one queued write: its bytes and, with offloads, the size of
// the datagrams it holds back to back (0: one datagram). The reader puts b
// back into bufPool.
type datagram struct {
	b   *[]byte
	gso int
}

// offloadEnd is a pipeEnd that declares the offloads.
type offloadEnd struct{ *pipeEnd }

// Offloads implements endpoint.Offloader.
func (*offloadEnd) Offloads() endpoint.Offloads {
	return endpoint.Offloads{GSO: true, GRO: true, RXChecksum: true}
}

type pipeEnd struct {
	local, remote netip.AddrPort
	out           chan<- datagram
	in            <-chan datagram
	done          chan struct{}
	close         func()
}

// bufPool holds *[]byte, not []byte: putting a slice into a sync.Pool
// boxes its header, one allocation per datagram (staticcheck SA6002).
var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 65536); return &b }}

func (p *pipeEnd) Framing() endpoint.Framing      { return endpoint.FramingUDP }
func (p *pipeEnd) LocalAddr() netip.AddrPort      { return p.local }
func (p *pipeEnd) Receivers() []endpoint.Receiver { return []endpoint.Receiver{p} }
func (p *pipeEnd) Close() error                   { p.close(); return nil }

// WriteBatch implements endpoint.Transport.WriteBatch. The datagrams are
// copied; msgs may be reused when it returns.
func (p *pipeEnd) WriteBatch(msgs []endpoint.Message) (int, error) {
	for i := range msgs {
		bp := bufPool.Get().(*[]byte)
		b := (*bp)[:0]
		for _, seg := range msgs[i].Buffers {
			b = append(b, seg...)
		}
		*bp = b
		select {
		case <-p.done:
			bufPool.Put(bp)
			return i, endpoint.ErrClosed
		default:
		}
		select {
		case p.out <- datagram{bp, msgs[i].GSOSize}:
		default:
			bufPool.Put(bp) // queue full: dropped on the "wire"
		}
	}
	return len(msgs), nil
}

// ReadBatch implements endpoint.Receiver.ReadBatch.
func (p *pipeEnd) ReadBatch(msgs []endpoint.Message) (int, error) {
	n := 0
	fill := func(d datagram) {
		m := &msgs[n]
		m.N = copy(m.Buffers[0], *d.b)
		m.Addr = p.remote
		m.HasTOS = false
		// Only an offloadEnd's writer sets a GSO size.
		m.GSOSize, m.Verified = d.gso, false
		bufPool.Put(d.b)
		n++
	}
	select {
	case d := <-p.in:
		fill(d)
	case <-p.done:
		return 0, endpoint.ErrClosed
	}
	for n < len(msgs) {
		select {
		case d := <-p.in:
			fill(d)
		default:
			return n, nil
		}
	}
	return n, nil
}

// ReadBatch implements endpoint.Receiver.ReadBatch: every read is verified.
func (p *offloadEnd) ReadBatch(msgs []endpoint.Message) (int, error) {
	n, err := p.pipeEnd.ReadBatch(msgs)
	for i := range n {
		msgs[i].Verified = true
	}
	return n, err
}

// Receivers implements endpoint.Transport.Receivers.
func (p *offloadEnd) Receivers() []endpoint.Receiver { return []endpoint.Receiver{p} }
