package daemon

import (
	"encoding/binary"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/endpoint/encap"
	"github.com/ipipstack/ipipstack/internal/pkttest"
	"github.com/ipipstack/ipipstack/internal/servicetest"
)

// ipv4UDP is an IPv4 UDP packet src -> dst with a valid header checksum.
func ipv4UDP(src, dst netip.Addr) []byte {
	p := make([]byte, 28)
	p[0], p[8], p[9] = 0x45, 64, 17
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	s, d := src.As4(), dst.As4()
	copy(p[12:], s[:])
	copy(p[16:], d[:])
	binary.BigEndian.PutUint16(p[10:], pkttest.Checksum(p[:20], 0))
	binary.BigEndian.PutUint16(p[20:], 1234)
	binary.BigEndian.PutUint16(p[22:], 5678)
	binary.BigEndian.PutUint16(p[24:], 8)
	return p
}

// A peer whose inner addresses do not match: the first spoofed_source
// drop is one warning with the outer and inner addresses, later ones
// only a summary, however many packets arrive.
func TestDropWarnings(t *testing.T) {
	pl, pr := freeUDPPort(t), freeUDPPort(t)
	cfg := parse(t, fmt.Sprintf(`
tunnel "b" {
  local     = "127.0.0.1:%d"
  remote    = "127.0.0.1:%d"
  addresses = ["10.99.0.1/30"]
}`, pl, pr))
	var buf servicetest.LogBuffer
	log := slog.New(slog.NewTextHandler(&buf, nil)) // info, the default level
	d := startDaemon(t, cfg, Options{Logger: log})

	peer, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), pr)))
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	to := net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), pl))
	send := func(n int) {
		pkt := ipv4UDP(netip.MustParseAddr("10.50.0.1"), netip.MustParseAddr("10.99.0.1"))
		for range n {
			if _, err := peer.WriteToUDP(pkt, to); err != nil {
				t.Fatal(err)
			}
		}
	}
	spoofed := func() uint64 { return d.Stack().Stats()[0].Drops[encap.SpoofedSource] }

	now := time.Now()
	send(20)
	waitFor(t, 5*time.Second, "20 spoofed_source drops", func() bool { return spoofed() == 20 })
	d.drops.check(now)
	send(30)
	waitFor(t, 5*time.Second, "50 spoofed_source drops", func() bool { return spoofed() == 50 })
	d.drops.check(now.Add(time.Second))             // within the summary interval: nothing
	d.drops.check(now.Add(dropSummaryInterval))     // the summary: 30 since the first report
	d.drops.check(now.Add(2 * dropSummaryInterval)) // no new drops: nothing

	var warns []string
	for _, l := range strings.Split(buf.String(), "\n") {
		if strings.Contains(l, "level=WARN") {
			warns = append(warns, l)
		}
	}
	if len(warns) != 2 {
		t.Fatalf("%d warnings, want 2 (first drop, summary):\n%s", len(warns), buf.String())
	}
	outer := fmt.Sprintf("127.0.0.1:%d", pr)
	for _, want := range []string{"tunnel=b", "reason=spoofed_source", "outer_source=" + outer,
		"inner_source=10.50.0.1", "inner_destination=10.99.0.1", "count=20"} {
		if !strings.Contains(warns[0], want) {
			t.Errorf("first warning %q lacks %q", warns[0], want)
		}
	}
	if !strings.Contains(warns[1], "tunnel=b") || !strings.Contains(warns[1], "spoofed_source=30") {
		t.Errorf("summary %q, want tunnel=b spoofed_source=30", warns[1])
	}
}
