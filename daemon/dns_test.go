package daemon

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/proxy"

	"github.com/ipipstack/ipipstack/internal/dnstest"
	"github.com/ipipstack/ipipstack/internal/servicetest"
	"github.com/ipipstack/ipipstack/service/socks5"
)

// TestSOCKS5Names: A's socks5 "tunnel" resolves through the dns block (a
// DNS server on B's stack), A's socks5 "nodns" in a daemon without a dns
// block refuses names with reply 4 and logs why, and a forward whose
// target is a name reaches it.
func TestSOCKS5Names(t *testing.T) {
	pa, pb := freeUDPPort(t), freeUDPPort(t)
	cfgB := parse(t, fmt.Sprintf(`
tunnel "a" {
  local     = "127.0.0.1:%d"
  remote    = "127.0.0.1:%d"
  addresses = ["10.99.0.2/30"]
}`, pb, pa))
	cfgA := parse(t, fmt.Sprintf(`
tunnel "b" {
  local     = "127.0.0.1:%d"
  remote    = "127.0.0.1:%d"
  addresses = ["10.99.0.1/30"]
}
dns {
  servers = ["10.99.0.2"]
}
forward "web" {
  listen = "127.0.0.1:3"
  target = "web.ipipstack.test:80"
}
socks5 "tunnel" {
  listen = "127.0.0.1:4"
}`, pa, pb))
	loop0 := netip.MustParseAddrPort("127.0.0.1:0")
	cfgA.Forwards[0].Listen, cfgA.SOCKS5[0].Listen = loop0, loop0
	b := startDaemon(t, cfgB, Options{Logger: testLogger(t, nil).With("peer", "B")})
	a := startDaemon(t, cfgA, Options{Logger: testLogger(t, nil).With("peer", "A")})

	dns := &dnstest.Server{Records: map[string][]netip.Addr{"web.ipipstack.test.": {netip.MustParseAddr("10.99.0.2")}}}
	pc, err := b.Stack().ListenPacket("udp4", "10.99.0.2:53")
	if err != nil {
		t.Fatal(err)
	}
	dl, err := b.Stack().Listen("tcp4", "10.99.0.2:53")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	defer dl.Close()
	dns.Serve(pc, dl)
	web, err := b.Stack().Listen("tcp4", "10.99.0.2:80")
	if err != nil {
		t.Fatal(err)
	}
	defer web.Close()
	go func() {
		for {
			c, err := web.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	echo := func(c net.Conn, what string) {
		t.Helper()
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		c.Write([]byte("hello " + what))
		buf := make([]byte, 64)
		n, err := io.ReadAtLeast(c, buf, len("hello "+what))
		if err != nil || string(buf[:n]) != "hello "+what {
			t.Errorf("%s echo = %q, %v; want %q", what, buf[:n], err, "hello "+what)
		}
	}

	d, err := proxy.SOCKS5("tcp", svcStatus(t, a, KindSOCKS5, "tunnel").Listen, nil, proxy.Direct)
	if err != nil {
		t.Fatal(err)
	}
	c, err := d.Dial("tcp", "web.ipipstack.test:80")
	if err != nil {
		t.Fatalf("SOCKS5 CONNECT web.ipipstack.test:80: %v", err)
	}
	echo(c, "socks5")
	c, err = net.Dial("tcp", svcStatus(t, a, KindForward, "web").Listen)
	if err != nil {
		t.Fatal(err)
	}
	echo(c, "forward")
	if q := strings.Join(dns.Asked(), ";"); !strings.Contains(q, "A web.ipipstack.test.") {
		t.Errorf("DNS server saw %q, want queries for web.ipipstack.test.", q)
	}
}

// TestSOCKS5NoDNSRefusesNames: without a dns block, a CONNECT to a name
// gets reply 4 (host unreachable), the log says why, and the name is not
// looked up anywhere.
func TestSOCKS5NoDNSRefusesNames(t *testing.T) {
	pa, pb := freeUDPPort(t), freeUDPPort(t)
	cfg := parse(t, fmt.Sprintf(`
tunnel "b" {
  local     = "127.0.0.1:%d"
  remote    = "127.0.0.1:%d"
  addresses = ["10.99.0.1/30"]
}
socks5 "nodns" {
  listen = "127.0.0.1:4"
}`, pa, pb))
	cfg.SOCKS5[0].Listen = netip.MustParseAddrPort("127.0.0.1:0")
	var logs servicetest.LogBuffer
	a := startDaemon(t, cfg, Options{Logger: testLogger(t, &logs)})
	c, err := net.Dial("tcp", svcStatus(t, a, KindSOCKS5, "nodns").Listen)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	name := "web.ipipstack.test"
	req := append([]byte{5, 1, 0, 5, 1, 0, 3, byte(len(name))}, name...)
	c.Write(append(req, 0, 80))
	got := make([]byte, 12)
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	// Method reply 05 00, then VER REP RSV ATYP=1 0.0.0.0:0.
	if want := []byte{5, 0, 5, byte(socks5.ReplyHostUnreachable), 0, 1, 0, 0, 0, 0, 0, 0}; string(got) != string(want) {
		t.Errorf("SOCKS5 replies %x, want %x", got, want)
	}
	if !strings.Contains(logs.String(), "no dns block") {
		t.Errorf("log does not say why the name was refused:\n%s", logs.String())
	}
}
