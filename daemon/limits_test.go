package daemon

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"
)

// TestPerClientLimits runs the per-client limits through a stack pair:
// B's reverse UDP forward, listening in B's stack, is reached by A's local
// forward, whose sessions all come from A's inner address 10.99.0.1 on
// ports of their own; max_sessions_per_source = 2 lets two of them in and
// counts the rest. A's SOCKS5 proxy with max_connections_per_client = 1
// refuses a second connection from 127.0.0.1.
func TestPerClientLimits(t *testing.T) {
	pa, pb := freeUDPPort(t), freeUDPPort(t)
	echo, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, addr, err := echo.ReadFrom(buf)
			if err != nil {
				return
			}
			echo.WriteTo(buf[:n], addr)
		}
	}()
	t.Cleanup(func() { echo.Close(); <-done })

	cfgB := parse(t, fmt.Sprintf(`
tunnel "a" {
  local     = "127.0.0.1:%d"
  remote    = "127.0.0.1:%d"
  addresses = ["10.99.0.2/30"]
}
reverse "echo" {
  protocol                = "udp"
  listen                  = "10.99.0.2:7"
  target                  = "%s"
  max_sessions_per_source = 2
}`, pb, pa, echo.LocalAddr()))
	cfgA := parse(t, fmt.Sprintf(`
tunnel "b" {
  local     = "127.0.0.1:%d"
  remote    = "127.0.0.1:%d"
  addresses = ["10.99.0.1/30"]
}
forward "echo" {
  protocol = "udp"
  listen   = "127.0.0.1:3"
  target   = "10.99.0.2:7"
}
socks5 "proxy" {
  listen                     = "127.0.0.1:4"
  max_connections_per_client = 1
}`, pa, pb))
	loop0 := netip.MustParseAddrPort("127.0.0.1:0")
	cfgA.Forwards[0].Listen, cfgA.SOCKS5[0].Listen = loop0, loop0
	b := startDaemon(t, cfgB, Options{Logger: testLogger(t, nil).With("peer", "B")})
	a := startDaemon(t, cfgA, Options{Logger: testLogger(t, nil).With("peer", "A")})

	// Four host clients, one after the other, each a session of A's forward
	// and so a new source port of 10.99.0.1 at B.
	fwd := svcStatus(t, a, KindForward, "echo").Listen
	var echoed []bool
	for i := range 4 {
		c, err := net.Dial("udp", fwd)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		ok := false
		buf := make([]byte, 64)
		for range 3 { // the first datagrams through a new tunnel may be lost
			msg := fmt.Sprintf("client %d", i)
			c.Write([]byte(msg))
			c.SetReadDeadline(time.Now().Add(time.Second))
			n, err := c.Read(buf)
			if ok = err == nil && string(buf[:n]) == msg; ok {
				break
			}
		}
		echoed = append(echoed, ok)
	}
	if want := []bool{true, true, false, false}; fmt.Sprint(echoed) != fmt.Sprint(want) {
		t.Errorf("clients echoed through B's reverse forward: %v, want %v", echoed, want)
	}
	rev := svcStatus(t, b, KindReverse, "echo")
	if rev.Active != 2 || rev.Rejected != 0 || rev.Counters["rejected_per_source"] < 2 {
		t.Errorf("B's reverse forward: %+v, want 2 sessions, none rejected by the global cap, ≥ 2 by rejected_per_source", rev)
	}

	// SOCKS5: the second connection from 127.0.0.1 is closed at once.
	proxy := svcStatus(t, a, KindSOCKS5, "proxy").Listen
	first, err := net.Dial("tcp", proxy)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	waitFor(t, 5*time.Second, "first SOCKS5 connection", func() bool { return svcStatus(t, a, KindSOCKS5, "proxy").Active == 1 })
	second, err := net.Dial("tcp", proxy)
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	second.SetDeadline(time.Now().Add(5 * time.Second))
	second.Write([]byte{5, 1, 0})
	if got, _ := io.ReadAll(second); len(got) != 0 {
		t.Errorf("second SOCKS5 connection from 127.0.0.1: server sent %x, want nothing", got)
	}
	if st := svcStatus(t, a, KindSOCKS5, "proxy"); st.Counters["rejected_per_client"] != 1 || st.Active != 1 {
		t.Errorf("SOCKS5 status %+v, want rejected_per_client 1, 1 active", st)
	}
}
