package daemon

import (
	"log/slog"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/service/forward"
	"github.com/ipipstack/ipipstack/service/socks5"
)

// dial_timeout reaches the forward, reverse forward and SOCKS5 services.
func TestServicesDialTimeout(t *testing.T) {
	cfg := parse(t, `
tunnel "t" {
  local     = "127.0.0.1:4700"
  remote    = "127.0.0.1:4701"
  addresses = ["10.99.0.1/30"]
}
forward "web" {
  listen       = "127.0.0.1:8080"
  target       = "10.99.0.2:80"
  dial_timeout = "3s"
}
forward "dns" {
  protocol     = "udp"
  listen       = "127.0.0.1:5353"
  target       = "10.99.0.2:53"
  dial_timeout = "4s"
}
reverse "back" {
  listen       = "10.99.0.1:22"
  target       = "127.0.0.1:22"
  dial_timeout = "1500ms"
}
socks5 "proxy" {
  listen       = "127.0.0.1:1080"
  dial_timeout = "2s"
}
`)
	got := map[string]time.Duration{}
	for _, s := range newServices(cfg, nil, slog.New(slog.DiscardHandler)) {
		switch srv := s.srv.(type) {
		case *forward.TCP:
			got[s.name] = srv.DialTimeout
		case *forward.UDP:
			got[s.name] = srv.DialTimeout
		case *socks5.Server:
			got[s.name] = srv.DialTimeout
		}
	}
	want := map[string]time.Duration{"web": 3 * time.Second, "dns": 4 * time.Second, "back": 1500 * time.Millisecond, "proxy": 2 * time.Second}
	for name, w := range want {
		if got[name] != w {
			t.Errorf("%s: DialTimeout = %v, want %v", name, got[name], w)
		}
	}
}
