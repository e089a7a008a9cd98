package config

import (
	"strings"
	"testing"
	"time"
)

func TestDialTimeout(t *testing.T) {
	src := minimal + `
forward "web" {
  listen       = "127.0.0.1:8080"
  target       = "10.99.0.2:80"
  dial_timeout = "3s"
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
forward "plain" {
  listen = "127.0.0.1:8081"
  target = "10.99.0.2:81"
}
`
	cfg := mustParse(t, src)
	got := []time.Duration{cfg.Forwards[0].DialTimeout, cfg.Reverses[0].DialTimeout, cfg.SOCKS5[0].DialTimeout, cfg.Forwards[1].DialTimeout}
	want := []time.Duration{3 * time.Second, 1500 * time.Millisecond, 2 * time.Second, DefaultDialTimeout}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("dial timeouts = %v, want %v", got, want)
			break
		}
	}
	// HCL writes every value, defaults included.
	out := string(cfg.HCL())
	if !strings.Contains(out, `dial_timeout    = "3s"`) || strings.Count(out, "dial_timeout") != 4 {
		t.Errorf("HCL() wrote:\n%s\nwant dial_timeout in each of the 4 blocks", out)
	}
}
