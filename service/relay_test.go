package service

import (
	"io"
	"net"
	"testing"
	"time"
)

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	a, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b, err := ln.Accept()
	if err != nil {
		a.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

func TestRelayHalfClose(t *testing.T) {
	client, a := tcpPair(t)
	b, server := tcpPair(t)
	type result struct {
		ab, ba int64
		err    error
	}
	done := make(chan result, 1)
	go func() { ab, ba, err := Relay(a, b); done <- result{ab, ba, err} }()

	client.Write([]byte("request"))
	client.(*net.TCPConn).CloseWrite()
	server.SetDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(server) // EOF arrives: the FIN was propagated
	if err != nil || string(got) != "request" {
		t.Fatalf("server read %q, %v", got, err)
	}
	server.Write([]byte("reply!")) // the other direction still works
	server.Close()
	client.SetDeadline(time.Now().Add(5 * time.Second))
	if got, err := io.ReadAll(client); err != nil || string(got) != "reply!" {
		t.Fatalf("client read %q, %v", got, err)
	}
	select {
	case r := <-done:
		if r.ab != 7 || r.ba != 6 || r.err != nil {
			t.Errorf("Relay = %d, %d, %v; want 7, 6, nil", r.ab, r.ba, r.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Relay did not return")
	}
}

// A conn without CloseWrite (net.Pipe) is closed outright at EOF, which
// ends the relay rather than leaving the other direction blocked.
func TestRelayNoCloseWrite(t *testing.T) {
	client, a := net.Pipe()
	b, server := net.Pipe()
	t.Cleanup(func() { client.Close(); server.Close() })
	done := make(chan error, 1)
	go func() { _, _, err := Relay(a, b); done <- err }()
	go client.Close()
	server.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := server.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("server read error = %v, want EOF", err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Relay = %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Relay did not return")
	}
}

func TestNetworkFor(t *testing.T) {
	tests := []struct{ proto, addr, want string }{
		{"tcp", "127.0.0.1:80", "tcp4"},
		{"udp", "[::1]:53", "udp6"},
		{"udp", "[::ffff:10.0.0.1]:53", "udp4"},
		{"tcp", "localhost:80", "tcp"},
		{"tcp", ":80", "tcp"},
		{"tcp", "garbage", "tcp"},
	}
	for _, tt := range tests {
		if got := NetworkFor(tt.proto, tt.addr); got != tt.want {
			t.Errorf("NetworkFor(%q, %q) = %q, want %q", tt.proto, tt.addr, got, tt.want)
		}
	}
}
