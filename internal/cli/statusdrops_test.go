package cli

import (
	"bytes"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/daemon"
)

// The status table shows each service's dial failures and each tunnel's
// leading drop reasons, most frequent first.
func TestStatusTableDialFailuresAndLeadingDrops(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	st := daemon.Status{
		Uptime: 60,
		Tunnels: []daemon.TunnelStatus{{
			Name: "b", Transport: "udp", Local: "127.0.0.1:4700", Peer: "127.0.0.1:4701", MTU: 1472, DropsTotal: 1117,
			Drops: map[string]uint64{"spoofed_source": 1000, "wrong_peer": 100, "martian": 10, "not_ip": 5, "too_big": 2, "closed": 0},
		}},
		Services: []daemon.ServiceStatus{{Name: "web", Kind: "reverse", Protocol: "tcp", Listen: "10.99.0.2:80",
			Target: "127.0.0.1:8000", Total: 7, DialFailures: 7}},
	}
	st.Build.Version = "v1.2.3"
	var b bytes.Buffer
	writeStatus(&b, &st, now)
	want := `ipipstack v1.2.3, running, up 1m0s (go , gvisor )

TUNNEL  TRANSPORT  LOCAL           PEER            MTU   RX PKTS  RX BYTES  TX PKTS  TX BYTES  DROPS  LAST SEEN
b       udp        127.0.0.1:4700  127.0.0.1:4701  1472  0        0B        0        0B        1117   never
  drops on b: spoofed_source=1000 wrong_peer=100 martian=10 (and 7 more of 2 other reasons)

SERVICE  KIND     PROTO  LISTEN        TARGET          ACTIVE  TOTAL  REJECTED  DIAL FAIL  TO TARGET  FROM TARGET
web      reverse  tcp    10.99.0.2:80  127.0.0.1:8000  0       7      0         7          0B         0B
`
	if got := b.String(); got != want {
		t.Errorf("writeStatus =\n%s\nwant\n%s", got, want)
	}
}
