package service

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"
)

func TestConnSet(t *testing.T) {
	var s ConnSet
	a1, b1 := net.Pipe()
	a2, b2 := net.Pipe()
	defer b1.Close()
	defer b2.Close()
	if !s.Track(a1) || !s.Track(a2) {
		t.Fatal("Track refused before CloseAll")
	}
	s.Untrack(a2)
	s.CloseAll()
	if _, err := a1.Write([]byte("x")); err == nil {
		t.Error("a tracked conn is still open after CloseAll")
	}
	go b2.Read(make([]byte, 1))
	if _, err := a2.Write([]byte("x")); err != nil {
		t.Errorf("an untracked conn was closed: %v", err)
	}
	a3, b3 := net.Pipe()
	defer b3.Close()
	if s.Track(a3) {
		t.Error("Track accepted a conn after CloseAll")
	}
	if _, err := a3.Write([]byte("x")); err == nil {
		t.Error("Track after CloseAll left the conn open")
	}
}

// TestDrain: Drain returns nil when the connections finish before the
// deadline, and the context's error when cut had to close them; cut runs
// once either way and Drain returns only after every one has ended.
func TestDrain(t *testing.T) {
	for _, finish := range []bool{true, false} {
		var active sync.WaitGroup
		active.Add(1)
		release := make(chan struct{})
		go func() { <-release; active.Done() }()
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		if finish {
			close(release)
		}
		cuts := 0
		err := Drain(ctx, &active, func() {
			cuts++
			if !finish {
				close(release) // closing what is left ends it
			}
		})
		cancel()
		if finish && err != nil || !finish && !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("finish %v: Drain = %v", finish, err)
		}
		if cuts != 1 {
			t.Errorf("finish %v: cut ran %d times, want 1", finish, cuts)
		}
	}
}
