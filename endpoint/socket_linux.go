package endpoint

import (
	"net/netip"
	"os"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// sockTransport is a Transport over one sending socket and one or more
// receiving sockets.
type sockTransport struct {
	framing Framing
	local   netip.AddrPort

	tx *sockConn
	rx []*sockReceiver

	// closers run once on Close (the net.UDPConn or os.Files).
	closeOnce sync.Once
	closers   []func() error

	offloads Offloads

	// txBatch caches the state of one sendmmsg call for the next
	// writer; a writer that finds it taken (the tunnels of a Shared
	// write at once, and the kernel takes concurrent sendmmsg calls on
	// one socket) makes one of its own. Not a sync.Pool: a busy process
	// collects often, and a pool emptied by each collection made every
	// other call allocate one.
	txBatch   atomic.Pointer[mmsgBatch]
	txBatchOf int // messages per batch

	// probe asks the kernel for the path MTU (pmtu_linux.go); nil if it
	// could not be opened.
	probe *pmtuProbe
	// dontFragment: the sending socket is IP_PMTUDISC_DO
	// (SocketOptions.DontFragment), which allowFragmentation relaxes.
	dontFragment bool
}

// newSockTransport returns a transport without sockets yet, whose
// sendmmsg calls move up to batch messages.
func newSockTransport(framing Framing, batch int, dontFragment bool) *sockTransport {
	return &sockTransport{framing: framing, dontFragment: dontFragment, txBatchOf: batch}
}

// openProbe opens t's path MTU probe; without one the endpoint does not
// learn a lower outer path MTU.
func (t *sockTransport) openProbe(v6 bool) {
	if p, err := newPMTUProbe(v6); err == nil {
		t.probe = p
		t.closers = append(t.closers, p.close)
	}
}

type sockReceiver struct {
	c     *sockConn
	proto uint8
	// verified: the kernel checked the UDP checksum of what this socket
	// reads (see ListenUDP).
	verified bool
	// b is owned by the one goroutine that calls ReadBatch.
	b *mmsgBatch
	// errQueue: the socket queues ICMP errors (IPV6_RECVERR), and each
	// makes the next read fail; ReadBatch drains them and reads on.
	errQueue bool
}

// ReadBatch implements Receiver.ReadBatch.
func (r *sockReceiver) ReadBatch(msgs []Message) (int, error) {
	if r.b == nil || len(r.b.hdrs) < len(msgs) {
		r.b = newMmsgBatch(len(msgs))
	}
	n, err := r.c.recv(r.b, msgs)
	for r.errQueue && err != nil && err != ErrClosed && r.c.drainErrors() {
		n, err = r.c.recv(r.b, msgs)
	}
	for i := 0; i < n; i++ {
		msgs[i].Proto, msgs[i].Verified = r.proto, r.verified
	}
	return n, err
}

// Offloads implements Offloader.
func (t *sockTransport) Offloads() Offloads { return t.offloads }

func (t *sockTransport) Framing() Framing          { return t.framing }
func (t *sockTransport) LocalAddr() netip.AddrPort { return t.local }

func (t *sockTransport) Receivers() []Receiver {
	rs := make([]Receiver, len(t.rx))
	for i, r := range t.rx {
		rs[i] = r
	}
	return rs
}

// WriteBatch implements Transport.WriteBatch.
func (t *sockTransport) WriteBatch(msgs []Message) (int, error) {
	b := t.txBatch.Swap(nil)
	if b == nil {
		b = newMmsgBatch(t.txBatchOf)
	}
	n, err := t.tx.send(b, msgs, t.framing == FramingUDP)
	t.txBatch.CompareAndSwap(nil, b)
	return n, err
}

// Close implements Transport.Close.
func (t *sockTransport) Close() error {
	var first error
	t.closeOnce.Do(func() {
		for _, c := range t.closers {
			if err := c(); err != nil && first == nil {
				first = err
			}
		}
	})
	return first
}

// setSockopts sizes the buffers, asks for the outer ToS on receive and sets
// the DF policy.
func setSockopts(fd int, v6 bool, opts SocketOptions, rx bool) error {
	size := opts.Buffer
	if size <= 0 {
		size = DefaultSocketBuffer
	}
	for _, o := range [][2]int{{unix.SO_RCVBUFFORCE, unix.SO_RCVBUF}, {unix.SO_SNDBUFFORCE, unix.SO_SNDBUF}} {
		if unix.SetsockoptInt(fd, unix.SOL_SOCKET, o[0], size) != nil {
			if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, o[1], size); err != nil {
				return os.NewSyscallError("setsockopt SO_RCVBUF/SO_SNDBUF", err)
			}
		}
	}
	if v6 {
		if rx {
			if err := unix.SetsockoptInt(fd, unix.SOL_IPV6, unix.IPV6_RECVTCLASS, 1); err != nil {
				return os.NewSyscallError("setsockopt IPV6_RECVTCLASS", err)
			}
		}
		// Never let the kernel fragment an outer IPv6 packet.
		if err := unix.SetsockoptInt(fd, unix.SOL_IPV6, unix.IPV6_MTU_DISCOVER, unix.IPV6_PMTUDISC_DO); err != nil {
			return os.NewSyscallError("setsockopt IPV6_MTU_DISCOVER", err)
		}
		return nil
	}
	if rx {
		if err := unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_RECVTOS, 1); err != nil {
			return os.NewSyscallError("setsockopt IP_RECVTOS", err)
		}
	}
	pmtu := unix.IP_PMTUDISC_DONT
	if opts.DontFragment {
		pmtu = unix.IP_PMTUDISC_DO
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_MTU_DISCOVER, pmtu); err != nil {
		return os.NewSyscallError("setsockopt IP_MTU_DISCOVER", err)
	}
	return nil
}

// drainErrors reads the socket's error queue empty and reports whether it
// held anything. The kernel has acted on the errors already (a Packet Too
// Big updated the path MTU, which the next oversize send reports).
func (s *sockConn) drainErrors() bool {
	var buf [128]byte
	var oob [256]byte
	drained := false
	s.rc.Control(func(fd uintptr) {
		for {
			if _, _, _, _, err := unix.Recvmsg(int(fd), buf[:], oob[:], unix.MSG_ERRQUEUE|unix.MSG_DONTWAIT); err != nil {
				return
			}
			drained = true
		}
	})
	return drained
}
