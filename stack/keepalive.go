package stack

import (
	"errors"
	"net"
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/waiter"
)

// setKeepalive turns TCP keepalive on for ep if TCPOptions.Keepalive asks
// for it. gVisor has no stack-wide keepalive default, and an accepted
// endpoint does not inherit the listener's, so every TCP endpoint the
// stack hands out gets it here.
func (s *Stack) setKeepalive(ep tcpip.Endpoint) {
	idle := s.keepalive
	if idle <= 0 {
		return
	}
	interval := tcpip.KeepaliveIntervalOption(max(idle/3, time.Second))
	idleOpt := tcpip.KeepaliveIdleOption(idle)
	ep.SetSockOpt(&idleOpt)
	ep.SetSockOpt(&interval)
	ep.SetSockOptInt(tcpip.KeepaliveCountOption, KeepaliveCount)
	ep.SocketOptions().SetKeepAlive(true)
}

// keepaliveListener is a TCP listener whose accepted connections get TCP
// keepalive (setKeepalive). It accepts as gonet.TCPListener does, which
// hands out no endpoint to set options on.
type keepaliveListener struct {
	*gonet.TCPListener // Addr; Close closes the endpoint
	s                  *Stack
	ep                 tcpip.Endpoint
	wq                 *waiter.Queue

	closeOnce sync.Once
	closed    chan struct{}
}

func (s *Stack) newKeepaliveListener(wq *waiter.Queue, ep tcpip.Endpoint) *keepaliveListener {
	return &keepaliveListener{TCPListener: gonet.NewTCPListener(s.gv, wq, ep), s: s, ep: ep, wq: wq, closed: make(chan struct{})}
}

// Accept implements net.Listener.Accept.
func (l *keepaliveListener) Accept() (net.Conn, error) {
	entry, notify := waiter.NewChannelEntry(waiter.ReadableEvents)
	l.wq.EventRegister(&entry)
	defer l.wq.EventUnregister(&entry)
	for {
		n, wq, terr := l.ep.Accept(nil)
		if _, ok := terr.(*tcpip.ErrWouldBlock); ok {
			select {
			case <-l.closed:
				return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.Addr(), Err: net.ErrClosed}
			case <-notify:
			}
			continue
		}
		if terr != nil {
			return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.Addr(), Err: errors.New(terr.String())}
		}
		l.s.setKeepalive(n)
		return gonet.NewTCPConn(wq, n), nil
	}
}

// Close implements net.Listener.Close.
func (l *keepaliveListener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return l.TCPListener.Close()
}
