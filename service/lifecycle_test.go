package service

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"runtime"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

func listenLoopback(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// echoLifecycle serves an echo handler that tracks its conn in l.Conns,
// and returns the channel Serve's result arrives on.
func echoLifecycle(t *testing.T, l *Lifecycle, ln net.Listener) <-chan error {
	t.Helper()
	if err := l.Attach(context.Background(), ln); err != nil {
		t.Fatalf("Attach: %v", err)
	}
	done := make(chan error, 1)
	go func() {
		done <- l.Serve(slog.New(slog.DiscardHandler), func(net.Conn) bool { return true }, func(c net.Conn) {
			defer c.Close()
			if !l.Conns.Track(c) {
				return
			}
			defer l.Conns.Untrack(c)
			io.Copy(c, c)
		})
	}()
	return done
}

func dialEcho(t *testing.T, addr net.Addr) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp4", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo = %q, %v; want \"ping\"", buf, err)
	}
	return c
}

func TestLifecycleShutdownCutsWhatIsLeft(t *testing.T) {
	var l Lifecycle
	ln := listenLoopback(t)
	served := echoLifecycle(t, &l, ln)
	if got := l.Addr(); got == nil || got.String() != ln.Addr().String() {
		t.Fatalf("Addr() = %v, want %v", got, ln.Addr())
	}
	c := dialEcho(t, ln.Addr())

	ctx, cancel := context.WithCancel(context.Background())
	cancel() // no time to drain: the open connection is cut
	err := l.Shutdown(ctx)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Shutdown = %v, want context.Canceled", err)
	}
	if err := <-served; err != nil {
		t.Errorf("Serve = %v, want nil after Shutdown", err)
	}
	if n, err := c.Read(make([]byte, 1)); err == nil {
		t.Errorf("client read %d bytes after Shutdown, want EOF or reset", n)
	}
	if l.Context().Err() == nil {
		t.Error("Context() not cancelled after a forced close")
	}
	if err := l.Attach(context.Background(), listenLoopback(t)); !errors.Is(err, ErrClosed) {
		t.Errorf("Attach after Shutdown = %v, want ErrClosed", err)
	}
}

func TestLifecycleShutdownDrains(t *testing.T) {
	var l Lifecycle
	ln := listenLoopback(t)
	served := echoLifecycle(t, &l, ln)
	c := dialEcho(t, ln.Addr())
	c.(*net.TCPConn).CloseWrite() // the handler's io.Copy ends on its own
	if err := l.Shutdown(context.Background()); err != nil {
		t.Fatalf("Shutdown = %v, want nil", err)
	}
	if err := <-served; err != nil {
		t.Errorf("Serve = %v, want nil", err)
	}
}

func TestLifecycleOneStart(t *testing.T) {
	var l Lifecycle
	if err := l.Claim(context.Background()); err != nil {
		t.Fatalf("first Claim = %v", err)
	}
	if err := l.Claim(context.Background()); !errors.Is(err, ErrServing) {
		t.Errorf("second Claim = %v, want ErrServing", err)
	}
	ln := listenLoopback(t)
	if err := l.Attach(context.Background(), ln); err != nil {
		t.Fatalf("Attach after Claim = %v", err)
	}
	ln2 := listenLoopback(t)
	if err := l.Attach(context.Background(), ln2); !errors.Is(err, ErrServing) {
		t.Errorf("second Attach = %v, want ErrServing", err)
	}
	if _, err := ln2.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept on the refused listener = %v, want net.ErrClosed (Attach closes it)", err)
	}
	l.Leave() // no Serve: end what Attach began
	if err := l.Close(); err != nil {
		t.Fatalf("Close = %v", err)
	}
	if _, err := ln.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after Close = %v, want net.ErrClosed", err)
	}
	if err := l.Claim(context.Background()); !errors.Is(err, ErrClosed) {
		t.Errorf("Claim after Close = %v, want ErrClosed", err)
	}
	if l.Enter() {
		t.Error("Enter after Close = true, want false")
	}
	if err := l.Close(); err != nil {
		t.Errorf("second Close = %v, want nil", err)
	}
}

func TestLifecycleContextValues(t *testing.T) {
	type key struct{}
	var l Lifecycle
	ctx, cancel := context.WithCancel(context.WithValue(context.Background(), key{}, "v"))
	if err := l.Claim(ctx); err != nil {
		t.Fatal(err)
	}
	cancel()
	got := l.Context()
	if got.Value(key{}) != "v" {
		t.Errorf("Context().Value = %v, want the Claim context's \"v\"", got.Value(key{}))
	}
	if got.Err() != nil {
		t.Errorf("Context().Err() = %v after the Claim context was cancelled, want nil", got.Err())
	}
}

// failingListener fails its first n accepts with EMFILE, then blocks
// until closed.
type failingListener struct {
	net.Listener
	n      atomic.Int32
	closed chan struct{}
}

func (l *failingListener) Accept() (net.Conn, error) {
	if l.n.Add(-1) >= 0 {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: syscall.EMFILE}
	}
	<-l.closed
	return nil, net.ErrClosed
}

func (l *failingListener) Close() error {
	close(l.closed)
	return nil
}

func TestLifecycleServeRetriesAcceptErrors(t *testing.T) {
	var l Lifecycle
	fl := &failingListener{closed: make(chan struct{})}
	fl.n.Store(3)
	if err := l.Attach(context.Background(), fl); err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() {
		served <- l.Serve(slog.New(slog.DiscardHandler), func(net.Conn) bool { return true }, func(net.Conn) {})
	}()
	for fl.n.Load() >= 0 { // wait for the three failures and the blocking accept
		runtime.Gosched()
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-served; err != nil {
		t.Errorf("Serve = %v, want nil", err)
	}
	if got := l.AcceptErrors.Count(); got != 3 {
		t.Errorf("AcceptErrors.Count() = %d, want 3", got)
	}
}

// TestLifecycleShutdownWaitsForHandler: Shutdown waits for a handler that
// is still running when it starts, and returns once it ends. The handler
// signals through the network only, so that under -race nothing but the
// Lifecycle orders Serve's count of it before Shutdown's wait
// (sync.WaitGroup's rule for an Add from zero).
func TestLifecycleShutdownWaitsForHandler(t *testing.T) {
	var l Lifecycle
	ln := listenLoopback(t)
	if err := l.Attach(context.Background(), ln); err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	go l.Serve(slog.New(slog.DiscardHandler), func(net.Conn) bool { return true }, func(c net.Conn) {
		defer c.Close()
		c.Write([]byte{1}) // "started", through the network: no Go synchronization
		<-release
	})
	c, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	shut := make(chan error, 1)
	go func() { shut <- l.Shutdown(context.Background()) }()
	// Give Shutdown time to reach its wait; the outcome does not depend
	// on it, only whether the wait is exercised while the handler runs.
	time.Sleep(50 * time.Millisecond)
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v while a handler was still running", err)
	default:
	}
	close(release)
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown = %v, want nil", err)
	}
}
