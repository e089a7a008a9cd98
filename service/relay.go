package service

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
)

// relayBufSize is the copy buffer per direction: 32 KiB, the size io.Copy
// uses, large enough to fill a 64 KiB TCP window in two writes.
const relayBufSize = 32 << 10

var relayBufPool = sync.Pool{New: func() any { b := make([]byte, relayBufSize); return &b }}

// closeWriter is what *net.TCPConn, *net.UnixConn and gVisor's gonet.TCPConn
// implement to send a FIN while still reading.
type closeWriter interface{ CloseWrite() error }

// Relay copies a→b and b→a until both directions are done, then closes both
// conns. It returns the bytes written in each direction and the first error
// that was not a clean end of stream.
//
// Half-close is propagated: when a reaches EOF, Relay calls b.CloseWrite (if
// b has one) and keeps copying b→a, so "send a request, shut down writing,
// read the reply" protocols work end to end. A conn without CloseWrite is
// closed outright when its peer reaches EOF, which also ends the other
// direction. Any other read or write error closes both conns at once, so
// neither direction can be left blocked. Closing either conn from another
// goroutine is the way to stop a Relay early.
//
// Relay takes ownership of a and b: both are closed when it returns.
func Relay(a, b net.Conn) (aToB, bToA int64, err error) {
	var na, nb atomic.Int64
	err = RelayCount(a, b, &na, &nb)
	return na.Load(), nb.Load(), err
}

// RelayCount is Relay with live byte counters: after every write it adds
// the bytes written a→b to aToB and b→a to bToA, so callers can publish
// throughput of long-lived connections. Either counter may be nil.
func RelayCount(a, b net.Conn, aToB, bToA *atomic.Int64) error {
	r := relay{a: a, b: b}
	var (
		errs [2]error
		wg   sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		errs[1] = r.pipe(a, b, bToA)
	}()
	errs[0] = r.pipe(b, a, aToB)
	wg.Wait()
	r.closeAll()
	for _, e := range errs {
		// net.ErrClosed means a caller closed a conn to stop us.
		if e != nil && !errors.Is(e, net.ErrClosed) {
			return e
		}
	}
	return nil
}

type relay struct {
	a, b   net.Conn
	once   sync.Once
	closed atomic.Bool // set once closeAll has begun
}

func (r *relay) closeAll() {
	r.once.Do(func() {
		r.closed.Store(true)
		r.a.Close()
		r.b.Close()
	})
}

// pipe copies src to dst. On EOF it half-closes dst; on any other error it
// closes both conns to unblock the other direction. An error seen after
// the other direction closed everything is a consequence, not a cause, and
// is not returned.
func (r *relay) pipe(dst, src net.Conn, n *atomic.Int64) error {
	bp := relayBufPool.Get().(*[]byte)
	defer relayBufPool.Put(bp)
	buf := *bp
	fail := func(err error) error {
		if r.closed.Load() {
			return nil
		}
		r.closeAll()
		return err
	}
	for {
		nr, rerr := src.Read(buf)
		if nr > 0 {
			nw, werr := dst.Write(buf[:nr])
			if n != nil && nw > 0 {
				n.Add(int64(nw))
			}
			if werr == nil && nw != nr {
				werr = io.ErrShortWrite
			}
			if werr != nil {
				return fail(werr)
			}
		}
		if rerr == io.EOF {
			if cw, ok := dst.(closeWriter); ok {
				if err := cw.CloseWrite(); err != nil {
					return fail(err)
				}
				return nil
			}
			r.closeAll()
			return nil
		}
		if rerr != nil {
			return fail(rerr)
		}
	}
}
