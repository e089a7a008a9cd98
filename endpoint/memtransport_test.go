package endpoint

import (
	"net/netip"
	"sync"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// memTransport is an in-memory Transport of any framing.
type memTransport struct {
	framing Framing
	local   netip.AddrPort
	in      chan Message
	done    chan struct{}
	once    sync.Once

	mu   sync.Mutex
	sent []memSent
}

// memSent is one datagram the endpoint wrote: its segments concatenated.
type memSent struct {
	data     []byte
	segments int
	addr     netip.AddrPort
	tos, ttl uint8
	gso      int // Message.GSOSize
}

func newMemTransport(f Framing, local netip.AddrPort) *memTransport {
	return &memTransport{framing: f, local: local, in: make(chan Message), done: make(chan struct{})}
}

func (m *memTransport) Framing() Framing          { return m.framing }
func (m *memTransport) LocalAddr() netip.AddrPort { return m.local }
func (m *memTransport) Receivers() []Receiver     { return []Receiver{m} }

func (m *memTransport) Close() error {
	m.once.Do(func() { close(m.done) })
	return nil
}

// ReadBatch implements Receiver: one injected datagram per call, copied
// into the endpoint's buffer as a socket would.
func (m *memTransport) ReadBatch(msgs []Message) (int, error) {
	select {
	case <-m.done:
		return 0, ErrClosed
	case in := <-m.in:
		d := &msgs[0]
		d.N = copy(d.Buffers[0], in.Buffers[0])
		d.Addr, d.TOS, d.HasTOS, d.Proto = in.Addr, in.TOS, in.HasTOS, in.Proto
		return 1, nil
	}
}

func (m *memTransport) WriteBatch(msgs []Message) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, msg := range msgs {
		s := memSent{addr: msg.Addr, tos: msg.TOS, ttl: msg.TTL, gso: msg.GSOSize}
		for _, b := range msg.Buffers {
			if len(b) > 0 {
				s.segments++
				s.data = append(s.data, b...)
			}
		}
		m.sent = append(m.sent, s)
	}
	return len(msgs), nil
}

func (m *memTransport) takeSent() []memSent {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.sent
	m.sent = nil
	return s
}

// takeData returns the bytes of the datagrams written since the last take.
func (m *memTransport) takeData() [][]byte {
	var d [][]byte
	for _, s := range m.takeSent() {
		d = append(d, s.data)
	}
	return d
}

// recDispatcher is a stack.NetworkDispatcher that records delivered packets.
type recDispatcher struct {
	mu   sync.Mutex
	pkts []recPacket
}

type recPacket struct {
	proto tcpip.NetworkProtocolNumber
	data  []byte
}

func (d *recDispatcher) DeliverNetworkPacket(p tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	v := pkt.ToView()
	data := append([]byte(nil), v.AsSlice()...)
	v.Release()
	d.mu.Lock()
	d.pkts = append(d.pkts, recPacket{p, data})
	d.mu.Unlock()
}

func (d *recDispatcher) DeliverLinkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {}

func (d *recDispatcher) count() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.pkts)
}

func (d *recDispatcher) take() []recPacket {
	d.mu.Lock()
	defer d.mu.Unlock()
	p := d.pkts
	d.pkts = nil
	return p
}

// nopDispatcher discards packets, for allocation measurements.
type nopDispatcher struct{}

func (nopDispatcher) DeliverNetworkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {}

func (nopDispatcher) DeliverLinkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {}
