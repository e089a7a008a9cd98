package daemon

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"
)

// A listener that cannot bind names its service once.
func TestStartAddressInUse(t *testing.T) {
	busy, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	for _, kind := range []string{"forward", "socks5"} {
		block := `forward "web" {
  listen = "127.0.0.1:1"
  target = "10.99.0.2:80"
}`
		if kind == "socks5" {
			block = `socks5 "web" {
  listen = "127.0.0.1:1"
}`
		}
		cfg := parse(t, fmt.Sprintf(`
tunnel "t" {
  local     = "127.0.0.1:%d"
  remote    = "127.0.0.1:%d"
  addresses = ["10.99.0.1/30"]
}
%s`, freeUDPPort(t), freeUDPPort(t), block))
		ap := netip.MustParseAddrPort(busy.Addr().String())
		if kind == "socks5" {
			cfg.SOCKS5[0].Listen = ap
		} else {
			cfg.Forwards[0].Listen = ap
		}
		d, err := Start(t.Context(), cfg, Options{})
		if err == nil {
			d.Shutdown(t.Context())
			t.Fatalf("%s: Start on a busy address succeeded", kind)
		}
		want := fmt.Sprintf(`daemon: %s "web": listen tcp %s: bind: address already in use`, kind, ap)
		if err.Error() != want {
			t.Errorf("Start() = %q\nwant      %q", err, want)
		}
		var op *net.OpError
		if !errors.As(err, &op) {
			t.Errorf("Start() = %v, want a wrapped *net.OpError", err)
		}
	}
}
