package forward

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/service"
)

// startTCP starts a TCP forward from a free loopback port to target, both
// on the host, and closes it on cleanup.
func startTCP(t testing.TB, target string, hook func(*TCP)) *TCP {
	t.Helper()
	f := &TCP{
		Name:   "test",
		From:   service.Host{},
		Listen: "127.0.0.1:0",
		To:     service.Host{},
		Target: target,
	}
	if hook != nil {
		hook(f)
	}
	if err := f.Start(context.Background()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func dial(t testing.TB, addr net.Addr) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr.String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// sendAndHash writes data then half-closes, while reading c to EOF; it
// returns the SHA-256 of what was read.
func sendAndHash(c net.Conn, data []byte) ([32]byte, error) {
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		if err == nil {
			err = c.(interface{ CloseWrite() error }).CloseWrite()
		}
		werr <- err
	}()
	c.SetReadDeadline(time.Now().Add(60 * time.Second))
	h := sha256.New()
	_, rerr := io.Copy(h, c)
	if err := <-werr; err != nil {
		return [32]byte{}, fmt.Errorf("write: %w", err)
	}
	if rerr != nil {
		return [32]byte{}, fmt.Errorf("read: %w", rerr)
	}
	return [32]byte(h.Sum(nil)), nil
}

func TestTCPTransfer(t *testing.T) {
	const size = 8 << 20
	up, down := make([]byte, size), make([]byte, size)
	rand.Read(up)
	rand.Read(down)

	serverGot := make(chan [32]byte, 1)
	ln := listenTCP(t)
	serveTCP(t, ln, func(c net.Conn) {
		sum, err := sendAndHash(c, down)
		if err != nil {
			t.Errorf("server: %v", err)
		}
		serverGot <- sum
	})
	f := startTCP(t, ln.Addr().String(), nil)

	c := dial(t, f.Addr())
	clientGot, err := sendAndHash(c, up)
	if err != nil {
		t.Fatalf("client: %v", err)
	}
	if want := sha256.Sum256(down); clientGot != want {
		t.Errorf("target→client SHA-256 = %x, want %x", clientGot, want)
	}
	select {
	case got := <-serverGot:
		if want := sha256.Sum256(up); got != want {
			t.Errorf("client→target SHA-256 = %x, want %x", got, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("server did not finish")
	}
	waitFor(t, "active = 0", func() bool { return f.Stats().Active == 0 })
	st := f.Stats()
	if st.BytesToTarget != size || st.BytesFromTarget != size || st.Accepted != 1 {
		t.Errorf("Stats() = %+v, want %d bytes each way, 1 accepted", st, size)
	}
}

func TestTCPHalfClose(t *testing.T) {
	ln := listenTCP(t)
	serveTCP(t, ln, func(c net.Conn) {
		got, err := io.ReadAll(c) // until the client's FIN arrives
		if err != nil {
			return
		}
		fmt.Fprintf(c, "got %q", got)
	})
	f := startTCP(t, ln.Addr().String(), nil)

	c := dial(t, f.Addr())
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := readAllTimeout(t, c, 5*time.Second)
	if err != nil {
		t.Fatalf("read reply: %v", err)
	}
	if want := `got "hello"`; string(got) != want {
		t.Errorf("reply = %q, want %q", got, want)
	}
}

func TestTCPConnLimit(t *testing.T) {
	ln := listenTCP(t)
	serveTCP(t, ln, func(c net.Conn) { io.Copy(c, c) })
	f := startTCP(t, ln.Addr().String(), func(f *TCP) { f.MaxConns = 2 })

	ping := func(c net.Conn) error {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		defer c.SetDeadline(time.Time{})
		if _, err := c.Write([]byte("x")); err != nil {
			return err
		}
		_, err := io.ReadFull(c, make([]byte, 1))
		return err
	}
	c1, c2 := dial(t, f.Addr()), dial(t, f.Addr())
	for _, c := range []net.Conn{c1, c2} {
		if err := ping(c); err != nil {
			t.Fatalf("ping under the limit: %v", err)
		}
	}

	c3 := dial(t, f.Addr())
	if got, err := readAllTimeout(t, c3, 5*time.Second); len(got) != 0 || (err != nil && !isReset(err)) {
		t.Errorf("over the limit: read = %q, %v; want EOF", got, err)
	}
	if st := f.Stats(); st.Rejected != 1 || st.Active != 2 || st.Accepted != 2 {
		t.Errorf("Stats() = %+v, want Rejected 1, Active 2, Accepted 2", st)
	}

	c1.Close()
	waitFor(t, "active = 1", func() bool { return f.Stats().Active == 1 })
	if err := ping(dial(t, f.Addr())); err != nil {
		t.Errorf("ping after a slot freed: %v", err)
	}
}

func isReset(err error) bool {
	return err != nil && strings.Contains(err.Error(), "connection reset")
}

func TestTCPDialFailure(t *testing.T) {
	dead := listenTCP(t)
	target := dead.Addr().String()
	dead.Close() // nothing listens there now: connection refused

	f := startTCP(t, target, nil)
	c := dial(t, f.Addr())
	if got, err := readAllTimeout(t, c, 5*time.Second); len(got) != 0 || (err != nil && !isReset(err)) {
		t.Errorf("read = %q, %v; want EOF", got, err)
	}
	waitFor(t, "dial failure counted", func() bool { return f.Stats().DialFailures == 1 })
	waitFor(t, "active = 0", func() bool { return f.Stats().Active == 0 })
}

func TestTCPBindError(t *testing.T) {
	busy := listenTCP(t)
	f := &TCP{Name: "web", Listen: busy.Addr().String(), Target: "127.0.0.1:1"}
	err := f.Start(context.Background())
	t.Cleanup(func() { f.Close() })
	want := fmt.Sprintf(`forward "web": listen tcp %s: `, busy.Addr())
	if err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Fatalf("Start() = %v, want prefix %q", err, want)
	}
	var op *net.OpError
	if !errors.As(err, &op) {
		t.Errorf("Start() = %v, want a wrapped *net.OpError", err)
	}
}

func TestTCPCloseNoLeak(t *testing.T) {
	ln := listenTCP(t)
	serveTCP(t, ln, func(c net.Conn) { io.Copy(c, c) })
	f := startTCP(t, ln.Addr().String(), nil)
	addr := f.Addr().String()

	var conns []net.Conn
	for range 4 {
		c := dial(t, f.Addr())
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	if err := f.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if got := f.Stats().Active; got != 0 {
		t.Errorf("Active after Close = %d, want 0", got)
	}
	for i, c := range conns {
		if got, err := readAllTimeout(t, c, 5*time.Second); len(got) != 0 || (err != nil && !isReset(err)) {
			t.Errorf("conn %d after Close: read = %q, %v; want EOF", i, got, err)
		}
	}
	checkNoLeaks(t)

	again, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("port not freed by Close: %v", err)
	}
	again.Close()
	if err := f.Close(); err != nil {
		t.Errorf("second Close = %v, want nil", err)
	}
	if err := f.Start(context.Background()); !errors.Is(err, ErrClosed) {
		t.Errorf("Start after Close = %v, want ErrClosed", err)
	}
}

func TestTCPShutdown(t *testing.T) {
	ln := listenTCP(t)
	serveTCP(t, ln, func(c net.Conn) { io.Copy(c, c) })

	t.Run("drains", func(t *testing.T) {
		f := startTCP(t, ln.Addr().String(), nil)
		c := dial(t, f.Addr())
		c.Write([]byte("x"))
		io.ReadFull(c, make([]byte, 1))

		done := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			done <- f.Shutdown(ctx)
		}()
		// New connections are refused once the listener is closed.
		waitFor(t, "listener closed", func() bool {
			c, err := net.Dial("tcp", f.Addr().String())
			if err == nil {
				c.Close()
			}
			return err != nil
		})
		// The active one still works and ends on its own.
		if _, err := c.Write([]byte("bye")); err != nil {
			t.Fatal(err)
		}
		c.CloseWrite()
		got, err := readAllTimeout(t, c, 5*time.Second)
		if err != nil || !bytes.Equal(got, []byte("bye")) {
			t.Errorf("during drain: read = %q, %v; want %q", got, err, "bye")
		}
		if err := <-done; err != nil {
			t.Errorf("Shutdown = %v, want nil", err)
		}
	})

	t.Run("deadline", func(t *testing.T) {
		f := startTCP(t, ln.Addr().String(), nil)
		c := dial(t, f.Addr())
		c.Write([]byte("x"))
		io.ReadFull(c, make([]byte, 1))

		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		if err := f.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Shutdown = %v, want DeadlineExceeded", err)
		}
		if got, err := readAllTimeout(t, c, 5*time.Second); len(got) != 0 || (err != nil && !isReset(err)) {
			t.Errorf("after forced shutdown: read = %q, %v; want EOF", got, err)
		}
		checkNoLeaks(t)
	})
}

func TestTCPIdleTimeout(t *testing.T) {
	ln := listenTCP(t)
	serveTCP(t, ln, func(c net.Conn) { io.Copy(c, c) })
	f := startTCP(t, ln.Addr().String(), func(f *TCP) { f.IdleTimeout = 300 * time.Millisecond })
	echo := func(c net.Conn) error {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		defer c.SetDeadline(time.Time{})
		if _, err := c.Write([]byte("x")); err != nil {
			return err
		}
		_, err := io.ReadFull(c, make([]byte, 1))
		return err
	}
	busy, idle := dial(t, f.Addr()), dial(t, f.Addr())
	if err := echo(busy); err != nil {
		t.Fatal(err)
	}
	if err := echo(idle); err != nil {
		t.Fatal(err)
	}
	// busy talks every 50 ms for a second; idle says nothing.
	for i := 0; i < 20; i++ {
		time.Sleep(50 * time.Millisecond)
		if err := echo(busy); err != nil {
			t.Fatalf("a connection with traffic was closed after %v: %v", time.Duration(i)*50*time.Millisecond, err)
		}
	}
	if got, err := readAllTimeout(t, idle, 5*time.Second); len(got) != 0 || (err != nil && !isReset(err)) {
		t.Errorf("idle connection: read = %q, %v; want EOF", got, err)
	}
	if st := f.Stats(); st.IdleClosed != 1 {
		t.Errorf("Stats().IdleClosed = %d, want 1", st.IdleClosed)
	}
}
