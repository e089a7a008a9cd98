package endpoint

import (
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestUDPChecksumSteering checks ListenUDP's SO_REUSEPORT group over
// IPv4: one socket per core for datagrams with a UDP checksum, read as
// Verified, and as many for checksum 0 (Linux FOU's default over IPv4),
// read unverified; each flow (source port) always reaches one socket, and
// many flows reach more than one.
func TestUDPChecksumSteering(t *testing.T) {
	tr, err := ListenUDP(netip.MustParseAddrPort("127.0.0.1:0"), SocketOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	cores := receiveSockets()
	rs := tr.Receivers()
	if len(rs) != 2*cores || !tr.(Offloader).Offloads().RXChecksum {
		t.Fatalf("%d receivers, RXChecksum %v: want %d in a checksum-steering group", len(rs), tr.(Offloader).Offloads().RXChecksum, 2*cores)
	}
	type got struct {
		sock     int
		payload  string
		verified bool
	}
	arrived := make(chan got, 1024)
	for i, r := range rs {
		go func() {
			msgs := []Message{{Buffers: [][]byte{make([]byte, 2048)}}}
			for {
				if _, err := r.ReadBatch(msgs); err != nil {
					return
				}
				arrived <- got{i, string(msgs[0].Buffers[0][:msgs[0].N]), msgs[0].Verified}
			}
		}()
	}
	const flows, perFlow = 32, 3
	sent := 0
	for f := range flows {
		noCheck := f%2 == 1
		d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			c.Control(func(fd uintptr) {
				if noCheck {
					serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_NO_CHECK, 1)
				}
			})
			return serr
		}}
		c, err := d.Dial("udp4", tr.LocalAddr().String())
		if err != nil {
			t.Fatal(err)
		}
		for k := range perFlow {
			if _, err := fmt.Fprintf(c, "%d/%d", f, k); err != nil {
				t.Fatal(err)
			}
			sent++
		}
		c.Close()
	}
	sockOf := map[int]int{} // flow -> socket
	used := map[int]bool{}
	for range sent {
		var g got
		select {
		case g = <-arrived:
		case <-time.After(5 * time.Second):
			t.Fatalf("%d of %d datagrams arrived", len(sockOf), sent)
		}
		var f, k int
		fmt.Sscanf(g.payload, "%d/%d", &f, &k)
		noCheck := f%2 == 1
		if noCheck != (g.sock >= cores) || g.verified == noCheck {
			t.Errorf("flow %d (checksum 0: %v) reached socket %d of %d, verified=%v", f, noCheck, g.sock, len(rs), g.verified)
		}
		if s, ok := sockOf[f]; ok && s != g.sock {
			t.Errorf("flow %d reached sockets %d and %d: a flow must stay on one", f, s, g.sock)
		}
		sockOf[f] = g.sock
		used[g.sock] = true
	}
	if cores > 1 && len(used) <= 2 {
		t.Errorf("%d flows reached only sockets %v of %d: not spread over the cores", flows, used, len(rs))
	}
}
