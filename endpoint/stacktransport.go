package endpoint

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
)

// NewPacketConnTransport returns a FOU Transport (FramingUDP) that moves its
// datagrams over pc: typically a UDP socket of another userspace stack, so
// that a tunnel runs inside another tunnel (see stack.Stack.TunnelTransport).
// local is the transport's address; if it is not valid, pc.LocalAddr() is
// used. The Transport owns pc and closes it in Close.
//
// It reads one datagram per ReadBatch, blocked in pc.ReadFrom, and writes
// one WriteTo per message, so it suits nesting and tests rather than
// speed. A net.PacketConn cannot send per-datagram ToS or TTL: the outer
// datagrams carry pc's defaults, so no ECN mark is copied outward, and
// received datagrams report no ToS (Message.HasTOS is false).
func NewPacketConnTransport(pc net.PacketConn, local netip.AddrPort) (Transport, error) {
	if !local.IsValid() {
		la, err := addrPortOf(pc.LocalAddr())
		if err != nil {
			return nil, fmt.Errorf("endpoint: packet conn local address: %w", err)
		}
		local = la
	}
	return &pcTransport{pc: pc, local: netip.AddrPortFrom(local.Addr().Unmap(), local.Port())}, nil
}

type pcTransport struct {
	pc     net.PacketConn
	local  netip.AddrPort
	closed atomic.Bool
	once   sync.Once
}

var _ Transport = (*pcTransport)(nil)

// pcBufs are the buffers that messages of several slices are gathered into
// before WriteTo.
var pcBufs = sync.Pool{New: func() any { return new([MaxMTU]byte) }}

func (t *pcTransport) Framing() Framing          { return FramingUDP }
func (t *pcTransport) LocalAddr() netip.AddrPort { return t.local }
func (t *pcTransport) Receivers() []Receiver     { return []Receiver{t} }

// WriteBatch implements Transport.WriteBatch.
func (t *pcTransport) WriteBatch(msgs []Message) (int, error) {
	buf := pcBufs.Get().(*[MaxMTU]byte)
	defer pcBufs.Put(buf)
	for i := range msgs {
		m := &msgs[i]
		b := buf[:0]
		if len(m.Buffers) == 1 {
			b = m.Buffers[0]
		} else {
			for _, s := range m.Buffers {
				if len(b)+len(s) > len(buf) {
					return i, errors.New("endpoint: datagram larger than 65535 bytes")
				}
				b = append(b, s...)
			}
		}
		// TODO: remove allocation (the *net.UDPAddr per datagram).
		if _, err := t.pc.WriteTo(b, net.UDPAddrFromAddrPort(m.Addr)); err != nil {
			if t.closed.Load() {
				return i, ErrClosed
			}
			return i, fmt.Errorf("endpoint: write to %v: %w", m.Addr, err)
		}
	}
	return len(msgs), nil
}

// ReadBatch implements Receiver.ReadBatch: it blocks for one datagram.
func (t *pcTransport) ReadBatch(msgs []Message) (int, error) {
	if len(msgs) == 0 {
		return 0, nil
	}
	m := &msgs[0]
	for {
		n, from, err := t.pc.ReadFrom(m.Buffers[0])
		if err != nil {
			if t.closed.Load() || errors.Is(err, net.ErrClosed) {
				return 0, ErrClosed
			}
			return 0, err
		}
		ap, err := addrPortOf(from)
		if err != nil {
			continue // not an IP peer: nothing the endpoint could check
		}
		m.N, m.Addr = n, ap
		m.TOS, m.HasTOS, m.Proto, m.Verified, m.GSOSize = 0, false, 0, false, 0
		return 1, nil
	}
}

// Close implements Transport.Close.
func (t *pcTransport) Close() error {
	var err error
	t.once.Do(func() {
		t.closed.Store(true)
		err = t.pc.Close()
	})
	return err
}

// addrPortOf converts a UDP net.Addr, or any whose String is "ip:port".
func addrPortOf(a net.Addr) (netip.AddrPort, error) {
	if u, ok := a.(*net.UDPAddr); ok {
		ap := u.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
	}
	if a == nil {
		return netip.AddrPort{}, errors.New("no address")
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.AddrPort{}, err
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}
