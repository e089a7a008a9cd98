package service

import (
	"context"
	"net"
	"sync"
)

// ConnSet is the set of a service's open connections, so that a forced
// close reaches every one of them, including those accepted or dialed
// while it runs. Its zero value is ready to use.
type ConnSet struct {
	mu sync.Mutex
	// The fields below are guarded by mu.
	conns  map[net.Conn]struct{}
	closed bool
}

// Track adds c to the set. Once CloseAll has begun it closes c instead and
// returns false.
func (s *ConnSet) Track(c net.Conn) bool {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		c.Close()
		return false
	}
	if s.conns == nil {
		s.conns = make(map[net.Conn]struct{})
	}
	s.conns[c] = struct{}{}
	s.mu.Unlock()
	return true
}

// Untrack removes c from the set; it does not close it.
func (s *ConnSet) Untrack(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// CloseAll closes every connection in the set, outside the lock, and makes
// later Track calls close theirs.
func (s *ConnSet) CloseAll() {
	s.mu.Lock()
	s.closed = true
	conns := make([]net.Conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}

// Drain waits for active to reach zero or ctx to be done, whichever comes
// first, and then calls cut, which closes what is left and waits for the
// service's goroutines; it returns once active is zero. It returns ctx's
// error if the wait ended with connections still open. Services use it for
// a graceful Shutdown after they have stopped accepting.
func Drain(ctx context.Context, active *sync.WaitGroup, cut func()) error {
	done := make(chan struct{})
	go func() { active.Wait(); close(done) }()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = ctx.Err()
	}
	cut()
	<-done
	return err
}
