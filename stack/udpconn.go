package stack

import (
	"bytes"
	"net"
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/waiter"
)

// UDPConn is a UDP socket of the stack, a net.Conn and net.PacketConn as
// *net.UDPConn is, returned by DialUDPAddrPort, ListenUDPAddrPort, and
// behind the net.Conn and net.PacketConn that Dial and ListenPacket return.
// It is a gonet.UDPConn whose writes cannot miss their wakeup.
// gonet's WriteTo registers for "writable" only after a write found the
// send buffer full; if the buffer drains in between, the notification is
// lost and the write waits forever (seen under load in BenchmarkUDPRate).
// Here the retry after registering catches such a drain. Reads, addresses
// and read deadlines are gonet's. WriteBatch and ReadBatch (udpbatch.go)
// move many datagrams per call, with less work per datagram.
//
// A writer waiting for room also wakes when the write deadline changes or
// the conn is closed, as net.Conn requires: a deadline in the past fails
// it with a timeout, Close with net.ErrClosed.
type UDPConn struct {
	*gonet.UDPConn
	ep tcpip.Endpoint
	wq *waiter.Queue

	// mu guards the fields below.
	mu sync.Mutex
	// writeDeadline and readDeadline are copies of the deadlines that
	// gonet keeps to itself; ReadBatch (udpbatch.go) needs the latter.
	// +checklocks:mu
	writeDeadline time.Time
	// +checklocks:mu
	readDeadline time.Time
	// changed is closed, and replaced, when a deadline changes or the
	// conn is closed, to wake waiting writers and batch readers; nil
	// until one waits.
	// +checklocks:mu
	changed chan struct{}
	// +checklocks:mu
	closed bool
}

var (
	_ net.Conn       = (*UDPConn)(nil)
	_ net.PacketConn = (*UDPConn)(nil)
)

// newUDPConn wraps the UDP endpoint ep, whose waiter queue is wq. Its IPv4
// datagrams leave without DF (IP_PMTUDISC_DONT), where gVisor's default,
// like Linux's, sets it: see "UDP and the path MTU" in the package doc.
func newUDPConn(wq *waiter.Queue, ep tcpip.Endpoint) *UDPConn {
	// A socket of IPv6 only may refuse the IPv4 option; nothing to do then.
	_ = ep.SetSockOptInt(tcpip.MTUDiscoverOption, int(tcpip.PMTUDiscoveryDont))
	return &UDPConn{UDPConn: gonet.NewUDPConn(wq, ep), ep: ep, wq: wq}
}

// SetDeadline implements net.Conn.SetDeadline.
func (c *UDPConn) SetDeadline(t time.Time) error {
	c.setReadDeadline(t)
	c.setWriteDeadline(t)
	return c.UDPConn.SetDeadline(t)
}

// SetReadDeadline implements net.Conn.SetReadDeadline.
func (c *UDPConn) SetReadDeadline(t time.Time) error {
	c.setReadDeadline(t)
	return c.UDPConn.SetReadDeadline(t)
}

func (c *UDPConn) setReadDeadline(t time.Time) {
	c.mu.Lock()
	c.readDeadline = t
	c.wakeWritersLocked()
	c.mu.Unlock()
}

// SetWriteDeadline implements net.Conn.SetWriteDeadline.
func (c *UDPConn) SetWriteDeadline(t time.Time) error {
	c.setWriteDeadline(t)
	return c.UDPConn.SetWriteDeadline(t)
}

func (c *UDPConn) setWriteDeadline(t time.Time) {
	c.mu.Lock()
	c.writeDeadline = t
	c.wakeWritersLocked()
	c.mu.Unlock()
}

// Close implements net.Conn.Close. Writers waiting for room return
// net.ErrClosed.
func (c *UDPConn) Close() error {
	c.mu.Lock()
	c.closed = true
	c.wakeWritersLocked()
	c.mu.Unlock()
	return c.UDPConn.Close()
}

// wakeWritersLocked wakes the writers waiting for room, which then look at
// the deadline and closed again.
//
// +checklocks:c.mu
func (c *UDPConn) wakeWritersLocked() {
	if c.changed != nil {
		close(c.changed)
		c.changed = nil
	}
}

// writeState returns the write deadline, whether the conn is closed, and
// a channel closed when either changes.
func (c *UDPConn) writeState() (deadline time.Time, closed bool, changed <-chan struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.changed == nil {
		c.changed = make(chan struct{})
	}
	return c.writeDeadline, c.closed, c.changed
}

// Write implements net.Conn.Write.
func (c *UDPConn) Write(b []byte) (int, error) { return c.WriteTo(b, nil) }

// WriteTo implements net.PacketConn.WriteTo.
func (c *UDPConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	opErr := func(err error) error {
		return &net.OpError{Op: "write", Net: "udp", Source: c.LocalAddr(), Addr: addr, Err: err}
	}
	var opts tcpip.WriteOptions
	if addr != nil {
		ua, ok := addr.(*net.UDPAddr)
		if !ok {
			return 0, opErr(&net.AddrError{Err: "not a UDP address", Addr: addr.String()})
		}
		ap := ua.AddrPort()
		opts.To = &tcpip.FullAddress{Addr: tcpipAddr(ap.Addr().Unmap()), Port: ap.Port()}
	}
	var r bytes.Reader
	var notify chan struct{}
	var timer *time.Timer
	for {
		d, closed, changed := c.writeState()
		if closed {
			return 0, opErr(net.ErrClosed)
		}
		if !d.IsZero() && !time.Now().Before(d) {
			return 0, opErr(timeoutError{})
		}
		r.Reset(b)
		n, terr := c.ep.Write(&r, opts)
		if _, ok := terr.(*tcpip.ErrWouldBlock); !ok {
			if terr != nil {
				return int(n), opErr(translate("sendto", terr))
			}
			return int(n), nil
		}
		if notify == nil {
			// Register, then write again before waiting: a drain after
			// the failed write is seen either by that write or as a
			// notification.
			var entry waiter.Entry
			entry, notify = waiter.NewChannelEntry(waiter.WritableEvents)
			c.wq.EventRegister(&entry)
			defer c.wq.EventUnregister(&entry)
			continue
		}
		var expired <-chan time.Time
		if !d.IsZero() {
			if timer == nil {
				timer = time.NewTimer(time.Until(d))
				defer timer.Stop()
			} else {
				timer.Reset(time.Until(d))
			}
			expired = timer.C
		}
		select {
		case <-notify:
		case <-expired:
		case <-changed:
		}
	}
}
