package transfer

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func loopback(t *testing.T) (net.Listener, func(context.Context) (net.Conn, error)) {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln, func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp4", ln.Addr().String())
	}
}

func TestRunIntact(t *testing.T) {
	ln, dial := loopback(t)
	var ran atomic.Int32
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a hang guard only
	defer cancel()
	if _, err := Run(ctx, ln, dial, 1<<20+3, func() error { ran.Add(1); return nil }); err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
	if ran.Load() != 1 {
		t.Errorf("midway ran %d times, want 1", ran.Load())
	}
}

// flipConn corrupts the 1000th byte written.
type flipConn struct {
	net.Conn
	written int
}

func (c *flipConn) Write(p []byte) (int, error) {
	if i := 1000 - c.written; i >= 0 && i < len(p) {
		q := append([]byte(nil), p...)
		q[i] ^= 0x01
		p = q
	}
	n, err := c.Conn.Write(p)
	c.written += n
	return n, err
}

func (c *flipConn) CloseWrite() error { return c.Conn.(*net.TCPConn).CloseWrite() }

func TestRunDetectsCorruption(t *testing.T) {
	ln, dial := loopback(t)
	corrupt := func(ctx context.Context) (net.Conn, error) {
		c, err := dial(ctx)
		if err != nil {
			return nil, err
		}
		return &flipConn{Conn: c}, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := Run(ctx, ln, corrupt, 64<<10, nil)
	if err == nil || !strings.Contains(err.Error(), "SHA-256 mismatch: received 65536 bytes") {
		t.Fatalf("Run over a corrupting conn = %v, want a SHA-256 mismatch of 65536 bytes", err)
	}
}

func TestRunMidwayError(t *testing.T) {
	ln, dial := loopback(t)
	boom := errors.New("boom")
	_, err := Run(context.Background(), ln, dial, 64<<10, func() error { return boom })
	if !errors.Is(err, boom) {
		t.Fatalf("Run = %v, want the midway error", err)
	}
}
