package service

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// AcceptErrors paces retries 5 ms, doubling to 1 s, counts every failure
// and logs one warning for a burst of them, with a hint for EMFILE.
func TestAcceptErrorsFailed(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	var a AcceptErrors
	emfile := &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	var got []time.Duration
	var d time.Duration
	for range 10 {
		d = a.Failed(log, emfile, d)
		got = append(got, d)
	}
	want := []time.Duration{5 * time.Millisecond, 10 * time.Millisecond, 20 * time.Millisecond, 40 * time.Millisecond,
		80 * time.Millisecond, 160 * time.Millisecond, 320 * time.Millisecond, 640 * time.Millisecond, time.Second, time.Second}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("delays = %v, want %v", got, want)
	}
	if a.Count() != 10 {
		t.Errorf("Count() = %d, want 10", a.Count())
	}
	out := buf.String()
	if n := strings.Count(out, "accept failed"); n != 1 {
		t.Errorf("logged %d warnings for 10 failures in a row, want 1:\n%s", n, out)
	}
	for _, want := range []string{"level=WARN", "too many open files", "ulimit -n"} {
		if !strings.Contains(out, want) {
			t.Errorf("warning lacks %q: %s", want, out)
		}
	}
}

// flakyListener fails Accept with err n times, then hands out conns.
type flakyListener struct {
	net.Listener
	mu    sync.Mutex
	fails int
	err   error
}

func (l *flakyListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	if l.fails > 0 {
		l.fails--
		l.mu.Unlock()
		return nil, l.err
	}
	l.mu.Unlock()
	return l.Listener.Accept()
}

// RetryListener hides failed accepts from its caller, counts them and
// returns the next connection; Close ends a wait between retries.
func TestRetryListener(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	emfile := &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	var errs AcceptErrors
	ln := RetryListener(&flakyListener{Listener: inner, fails: 3, err: emfile}, &errs, slog.New(slog.DiscardHandler))
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := ln.Accept()
	if err != nil {
		t.Fatalf("Accept after 3 failures = %v, want a conn", err)
	}
	s.Close()
	if errs.Count() != 3 {
		t.Errorf("Count() = %d, want 3", errs.Count())
	}

	// A listener failing for ever: Close makes Accept return.
	inner2, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln2 := RetryListener(&flakyListener{Listener: inner2, fails: 1 << 30, err: emfile}, &AcceptErrors{}, slog.New(slog.DiscardHandler))
	done := make(chan error, 1)
	go func() { _, err := ln2.Accept(); done <- err }()
	time.Sleep(10 * time.Millisecond) // let Accept fail and wait (not needed for correctness)
	ln2.Close()
	if err := <-done; !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after Close = %v, want net.ErrClosed", err)
	}
}
