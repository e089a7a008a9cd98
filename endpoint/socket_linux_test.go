package endpoint

import (
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestUDPChecksumSteering checks that datagrams with a UDP checksum reach
// the transport's first socket marked Verified, and that datagrams with
// checksum 0 (Linux FOU's default over IPv4) reach the second, unverified.
func TestUDPChecksumSteering(t *testing.T) {
	tr, err := ListenUDP(netip.MustParseAddrPort("127.0.0.1:0"), SocketOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	rs := tr.Receivers()
	if len(rs) != 2 || !tr.(Offloader).Offloads().RXChecksum {
		t.Fatalf("%d receivers, RXChecksum %v: the checksum-steering group was not set up", len(rs), tr.(Offloader).Offloads().RXChecksum)
	}
	send := func(noCheck bool, payload string) {
		t.Helper()
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
		defer c.Close()
		if _, err := c.Write([]byte(payload)); err != nil {
			t.Fatal(err)
		}
	}
	read := func(r Receiver) Message {
		t.Helper()
		msgs := []Message{{Buffers: [][]byte{make([]byte, 2048)}}}
		done := make(chan error, 1)
		go func() {
			_, err := r.ReadBatch(msgs)
			done <- err
		}()
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("no datagram arrived on this socket")
		}
		return msgs[0]
	}
	send(false, "with checksum")
	if m := read(rs[0]); !m.Verified || string(m.Buffers[0][:m.N]) != "with checksum" {
		t.Errorf("socket 0 read %q verified=%v, want the checksummed datagram, verified", m.Buffers[0][:m.N], m.Verified)
	}
	send(true, "checksum zero")
	if m := read(rs[1]); m.Verified || string(m.Buffers[0][:m.N]) != "checksum zero" {
		t.Errorf("socket 1 read %q verified=%v, want the checksum-0 datagram, unverified", m.Buffers[0][:m.N], m.Verified)
	}
}
