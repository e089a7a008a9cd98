package daemon

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/ipipstack/ipipstack/stack"
)

// TestStackConfigFilter: a tunnel's filter block maps rule by rule onto
// stack.Filter, and a tunnel without one gets no filter.
func TestStackConfigFilter(t *testing.T) {
	cfg := parse(t, `
tunnel "hub" {
  local     = "127.0.0.1:4700"
  remote    = "127.0.0.1:4701"
  addresses = ["10.99.0.1/30"]
  filter {
    max_flows = 4096
    rule {
      action       = "allow"
      protocol     = "tcp"
      destinations = ["10.99.0.1/32"]
      ports        = ["22", "8000-8080"]
    }
    rule {
      action   = "allow"
      protocol = "icmp"
    }
    rule {
      action       = "deny"
      protocol     = "udp"
      destinations = ["10.0.0.0/8"]
    }
  }
}

tunnel "open" {
  local     = "127.0.0.1:4702"
  remote    = "127.0.0.1:4703"
  addresses = ["10.99.1.1/30"]
  filter {
    default = "allow"
  }
}

tunnel "plain" {
  local     = "127.0.0.1:4704"
  remote    = "127.0.0.1:4705"
  addresses = ["10.99.2.1/30"]
}
`)
	sc, err := stackConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	want := []*stack.Filter{
		{Default: stack.FilterDeny, MaxFlows: 4096, Rules: []stack.FilterRule{
			{Action: stack.FilterAllow, Protocol: stack.FilterTCP, Destinations: pfx("10.99.0.1/32"),
				Ports: []stack.PortRange{{First: 22, Last: 22}, {First: 8000, Last: 8080}}},
			{Action: stack.FilterAllow, Protocol: stack.FilterICMP},
			{Action: stack.FilterDeny, Protocol: stack.FilterUDP, Destinations: pfx("10.0.0.0/8")},
		}},
		{Default: stack.FilterAllow},
		nil,
	}
	for i, w := range want {
		if diff := cmp.Diff(w, sc.Tunnels[i].Filter, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
			t.Errorf("tunnel %q: Filter (-want +got):\n%s", sc.Tunnels[i].Name, diff)
		}
	}
}
