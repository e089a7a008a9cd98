package forward

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/internal/servicetest"
)

// udpClientFrom is udpClient bound to the loopback address local (Linux
// routes all of 127.0.0.0/8 to lo, so 127.0.0.2 is a second client host).
func udpClientFrom(t testing.TB, local string, to net.Addr) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.UDPAddr{IP: net.ParseIP(local)}}
	c, err := d.Dial("udp", to.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestUDPPerSourceLimit is the cascade of the hardening issue: one source
// address flooding source ports used to fill the session table for
// everyone. Now one address gets a quarter of MaxSessions (the default)
// and the other clients keep theirs.
func TestUDPPerSourceLimit(t *testing.T) {
	echo := udpEcho(t)
	var logs servicetest.LogBuffer
	f := startUDP(t, echo.String(), func(f *UDP) {
		f.MaxSessions = 8
		f.Logger = logs.Logger()
	})

	answered := 0
	for range 8 {
		c := udpClientFrom(t, "127.0.0.2", f.Addr())
		if _, err := roundTrip(c, []byte("flood"), 300*time.Millisecond); err == nil {
			answered++
		}
	}
	if answered != 2 {
		t.Errorf("%d of 8 ports of 127.0.0.2 got sessions, want 2 (a quarter of 8)", answered)
	}
	c := udpClientFrom(t, "127.0.0.1", f.Addr())
	if got, err := roundTrip(c, []byte("mine"), 5*time.Second); err != nil || string(got) != "mine" {
		t.Errorf("client at 127.0.0.1: %q, %v; want \"mine\"", got, err)
	}
	if st := f.Stats(); st.Rejected != 0 || st.RejectedPerSource != 6 || st.Sessions != 3 {
		t.Errorf("Stats() = %+v, want Rejected 0 (global), RejectedPerSource 6, Sessions 3", st)
	}
	if l := logs.Lines("WARN", "too many sessions"); len(l) != 1 || !strings.Contains(l[0], "client=127.0.0.2") {
		t.Errorf("warnings about too many sessions: %q, want one for 127.0.0.2", l)
	}
}

// TestUDPPerSourceLimitKnob checks MaxSessionsPerSource overrides the
// quarter, that negative means no limit, and that an expired session
// gives its slot back.
func TestUDPPerSourceLimitKnob(t *testing.T) {
	echo := udpEcho(t)
	for _, tc := range []struct {
		perSource, want int
	}{{3, 3}, {-1, 8}} {
		f := startUDP(t, echo.String(), func(f *UDP) {
			f.MaxSessions, f.MaxSessionsPerSource = 8, tc.perSource
			f.IdleTimeout = 500 * time.Millisecond
		})
		for range 8 {
			c := udpClientFrom(t, "127.0.0.2", f.Addr())
			c.Write([]byte("x"))
		}
		waitFor(t, "datagrams handled", func() bool {
			st := f.Stats()
			return st.PacketsToTarget+st.RejectedPerSource == 8
		})
		if st := f.Stats(); st.SessionsCreated != uint64(tc.want) || st.RejectedPerSource != uint64(8-tc.want) {
			t.Errorf("MaxSessionsPerSource %d: Stats() = %+v, want %d sessions, %d refused", tc.perSource, st, tc.want, 8-tc.want)
		}
		waitFor(t, "sessions expired", func() bool { return f.Stats().Sessions == 0 })
		c := udpClientFrom(t, "127.0.0.2", f.Addr())
		if got, err := roundTrip(c, []byte("again"), 5*time.Second); err != nil || string(got) != "again" {
			t.Errorf("MaxSessionsPerSource %d: after expiry: %q, %v; want \"again\"", tc.perSource, got, err)
		}
		if n := f.perSource.Len(); n != 1 {
			t.Errorf("per-source table holds %d addresses, want 1", n)
		}
		f.Close()
	}
}
