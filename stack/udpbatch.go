package stack

import (
	"io"
	"net"
	"net/netip"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/waiter"
)

// Message is one datagram of UDPConn.WriteBatch and UDPConn.ReadBatch, as
// golang.org/x/net/ipv4.Message is for a kernel socket.
type Message struct {
	// Buffers hold the payload. WriteBatch sends their concatenation as
	// one datagram; ReadBatch fills them in order with one datagram.
	// The caller owns them; neither call keeps them after it returns.
	Buffers [][]byte
	// Addr is the destination for WriteBatch (the zero value sends to the
	// connected peer) and is set to the source by ReadBatch.
	Addr netip.AddrPort
	// N is set to the bytes sent by WriteBatch, or to the bytes copied
	// into Buffers by ReadBatch.
	N int
	// Truncated is set by ReadBatch when the datagram was longer than
	// Buffers: its first N bytes are there and the rest is lost, as a
	// kernel socket reports with MSG_TRUNC.
	Truncated bool
}

// WriteBatch sends msgs in order, one datagram each, and sets the N of
// each one it sent. Like Write it waits for room in the send buffer, until
// the write deadline or Close. It returns how many it sent: len(msgs) with
// a nil error, or fewer with the error (a *net.OpError) that stopped the
// one after them, whose N is then 0; the messages after that are left as
// they were. A deadline in the past or a closed conn sends none. Datagrams
// of concurrent calls may interleave.
//
// It costs less per datagram than WriteTo: the state of the conn is read
// once per call, not per datagram, and the write options, the payload
// reader and the waiter registration serve the whole batch, so that it
// allocates nothing per datagram of its own (gVisor's UDP still allocates
// its PacketBuffer and about four small objects per datagram). Writes
// many at once also let the tunnel's queue hand the endpoint larger
// batches (one sendmmsg each).
func (c *UDPConn) WriteBatch(msgs []Message) (int, error) {
	var (
		w    batchWait
		r    buffersReader
		to   tcpip.FullAddress
		opts tcpip.WriteOptions
	)
	w.init(c, waiter.WritableEvents, false)
	defer w.release()
	opErr := func(m *Message, err error) error {
		var addr net.Addr
		if m.Addr.IsValid() {
			addr = net.UDPAddrFromAddrPort(m.Addr)
		}
		return &net.OpError{Op: "write", Net: "udp", Source: c.LocalAddr(), Addr: addr, Err: err}
	}
	if len(msgs) == 0 {
		return 0, nil
	}
	if err := w.check(); err != nil {
		return 0, opErr(&msgs[0], err)
	}
	for i := range msgs {
		m := &msgs[i]
		m.N = 0
		opts.To = nil
		if m.Addr.IsValid() {
			to = tcpip.FullAddress{Addr: tcpipAddr(m.Addr.Addr().Unmap()), Port: m.Addr.Port()}
			opts.To = &to
		}
		for {
			r.reset(m.Buffers)
			n, terr := c.ep.Write(&r, opts)
			if terr == nil {
				m.N = int(n)
				break
			}
			if _, ok := terr.(*tcpip.ErrWouldBlock); !ok {
				if err := w.check(); err != nil {
					return i, opErr(m, err) // closed while waiting
				}
				return i, opErr(m, translate("sendmsg", terr))
			}
			if err := w.wait(); err != nil {
				return i, opErr(m, err)
			}
		}
	}
	return len(msgs), nil
}

// ReadBatch receives up to len(msgs) datagrams, one per Message, setting
// their N, Addr and Truncated. It waits, until the read deadline or
// Close, for the first datagram and then takes those already queued
// without waiting for more; it returns how many it filled, at least one
// when the error is nil. A deadline in the past fails it even when
// datagrams are queued, as it does ReadFrom. An error after some
// datagrams were taken is left for the next call.
//
// It costs less per datagram than ReadFrom, which allocates a
// *net.UDPAddr for each source: its Addr is a netip.AddrPort, and the
// waiter registration serves the whole call.
func (c *UDPConn) ReadBatch(msgs []Message) (int, error) {
	var (
		w   batchWait
		dst msgWriter
	)
	w.init(c, waiter.ReadableEvents, true)
	defer w.release()
	opErr := func(err error) error {
		return &net.OpError{Op: "read", Net: "udp", Source: c.LocalAddr(), Err: err}
	}
	if len(msgs) == 0 {
		return 0, nil
	}
	if err := w.check(); err != nil {
		return 0, opErr(err)
	}
	for {
		n := 0
		for n < len(msgs) {
			m := &msgs[n]
			dst.reset(m.Buffers)
			res, terr := c.ep.Read(&dst, tcpip.ReadOptions{NeedRemoteAddr: true})
			if terr != nil {
				if _, ok := terr.(*tcpip.ErrWouldBlock); ok || n > 0 {
					break
				}
				if err := w.check(); err != nil {
					return 0, opErr(err) // closed while waiting
				}
				return 0, opErr(translate("recvmsg", terr))
			}
			m.N = dst.n
			m.Truncated = res.Total > dst.n
			m.Addr = addrPortOf(res.RemoteAddr)
			n++
		}
		if n > 0 {
			return n, nil
		}
		if err := w.wait(); err != nil {
			return 0, opErr(err)
		}
	}
}

// addrPortOf converts a gVisor address and port.
func addrPortOf(a tcpip.FullAddress) netip.AddrPort {
	var ip netip.Addr
	switch a.Addr.Len() {
	case 4:
		ip = netip.AddrFrom4(a.Addr.As4())
	case 16:
		ip = netip.AddrFrom16(a.Addr.As16())
	}
	return netip.AddrPortFrom(ip, a.Port)
}

// batchWait is one batch call's wait for events of c's endpoint: the
// waiter registration and deadline timer, made at most once per call.
type batchWait struct {
	c      *UDPConn
	mask   waiter.EventMask
	read   bool // the read deadline applies, else the write deadline
	entry  waiter.Entry
	notify chan struct{}
	timer  *time.Timer
}

func (w *batchWait) init(c *UDPConn, mask waiter.EventMask, read bool) {
	w.c, w.mask, w.read = c, mask, read
}

// release undoes what wait registered.
func (w *batchWait) release() {
	if w.notify != nil {
		w.c.wq.EventUnregister(&w.entry)
	}
	if w.timer != nil {
		w.timer.Stop()
	}
}

// state returns the deadline that applies, whether the conn is closed, and
// a channel closed when either changes.
func (w *batchWait) state() (time.Time, bool, <-chan struct{}) {
	c := w.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.changed == nil {
		c.changed = make(chan struct{})
	}
	d := c.writeDeadline
	if w.read {
		d = c.readDeadline
	}
	return d, c.closed, c.changed
}

// check returns net.ErrClosed or a timeout error if the call must end now.
func (w *batchWait) check() error {
	d, closed, _ := w.state()
	return stateErr(d, closed)
}

func stateErr(d time.Time, closed bool) error {
	if closed {
		return net.ErrClosed
	}
	if !d.IsZero() && !time.Now().Before(d) {
		return timeoutError{}
	}
	return nil
}

// wait is called after the endpoint would block. The first time it
// registers for the events and returns at once, so that the caller tries
// again: an event between the failed try and the registration is seen by
// that try. Later it blocks until an event, a deadline change or Close, or
// the deadline. It returns an error if the call must end.
func (w *batchWait) wait() error {
	d, closed, changed := w.state()
	if err := stateErr(d, closed); err != nil {
		return err
	}
	if w.notify == nil {
		w.entry, w.notify = waiter.NewChannelEntry(w.mask)
		w.c.wq.EventRegister(&w.entry)
		return nil
	}
	var expired <-chan time.Time
	if !d.IsZero() {
		if w.timer == nil {
			w.timer = time.NewTimer(time.Until(d))
		} else {
			w.timer.Reset(time.Until(d))
		}
		expired = w.timer.C
	}
	select {
	case <-w.notify:
	case <-expired:
	case <-changed:
	}
	return nil
}

// buffersReader reads a Message's Buffers as one payload; gVisor's Write
// takes it as a tcpip.Payloader.
type buffersReader struct {
	bufs [][]byte
	off  int // into bufs[0]
	left int // bytes not read yet
}

var _ tcpip.Payloader = (*buffersReader)(nil)

func (r *buffersReader) reset(bufs [][]byte) {
	r.bufs, r.off, r.left = bufs, 0, 0
	for _, b := range bufs {
		r.left += len(b)
	}
}

// Read implements io.Reader.Read.
func (r *buffersReader) Read(p []byte) (int, error) {
	if r.left == 0 {
		return 0, io.EOF
	}
	n := 0
	for n < len(p) && len(r.bufs) > 0 {
		k := copy(p[n:], r.bufs[0][r.off:])
		n += k
		r.off += k
		if r.off == len(r.bufs[0]) {
			r.bufs, r.off = r.bufs[1:], 0
		}
	}
	r.left -= n
	return n, nil
}

// Len implements tcpip.Payloader.Len.
func (r *buffersReader) Len() int { return r.left }

// msgWriter copies one datagram into a Message's Buffers, in order, and
// drops what does not fit. It reports every write as whole, so that gVisor
// consumes the datagram however short the buffers: n says what was kept.
type msgWriter struct {
	bufs [][]byte
	off  int // into bufs[0]
	n    int // bytes kept
}

func (w *msgWriter) reset(bufs [][]byte) { w.bufs, w.off, w.n = bufs, 0, 0 }

// Write implements io.Writer.Write.
func (w *msgWriter) Write(p []byte) (int, error) {
	total := len(p)
	for len(p) > 0 && len(w.bufs) > 0 {
		k := copy(w.bufs[0][w.off:], p)
		p = p[k:]
		w.n += k
		w.off += k
		if w.off == len(w.bufs[0]) {
			w.bufs, w.off = w.bufs[1:], 0
		}
	}
	return total, nil
}
