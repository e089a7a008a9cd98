package service

import (
	"net"
	"testing"
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
