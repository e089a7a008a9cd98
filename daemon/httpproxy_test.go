package daemon

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// proxyPair is daemon A with an http_proxy and daemon B, joined by a UDP
// tunnel; B reverse-forwards 10.99.0.2:80 to a host web server serving
// body at /blob and 10.99.0.2:7 to a host TCP echo server.
type proxyPair struct {
	a, b  *Daemon
	proxy string // the http_proxy's host address
	body  []byte
}

func newProxyPair(t *testing.T, proxyAttrs string) *proxyPair {
	t.Helper()
	p := &proxyPair{body: make([]byte, 1<<20+7)}
	rand.Read(p.body)
	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/blob" {
			http.NotFound(w, r)
			return
		}
		w.Write(p.body)
	}))
	t.Cleanup(web.Close)
	echo, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { echo.Close() })
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c); c.(*net.TCPConn).CloseWrite() }()
		}
	}()
	pa, pb := freeUDPPort(t), freeUDPPort(t)
	cfgB := parse(t, fmt.Sprintf(`
tunnel "a" {
  local     = "127.0.0.1:%d"
  remote    = "127.0.0.1:%d"
  addresses = ["10.99.0.2/30"]
}
reverse "web" {
  listen = "10.99.0.2:80"
  target = "%s"
}
reverse "echo" {
  listen = "10.99.0.2:7"
  target = "%s"
}`, pb, pa, web.Listener.Addr(), echo.Addr()))
	cfgA := parse(t, fmt.Sprintf(`
tunnel "b" {
  local     = "127.0.0.1:%d"
  remote    = "127.0.0.1:%d"
  addresses = ["10.99.0.1/30"]
}
http_proxy "web" {
  listen = "127.0.0.1:3128"
  %s
}`, pa, pb, proxyAttrs))
	cfgA.HTTPProxies[0].Listen = netip.MustParseAddrPort("127.0.0.1:0")
	p.b = startDaemon(t, cfgB, Options{Logger: testLogger(t, nil).With("peer", "B")})
	p.a = startDaemon(t, cfgA, Options{Logger: testLogger(t, nil).With("peer", "A")})
	p.proxy = svcStatus(t, p.a, KindHTTPProxy, "web").Listen
	return p
}

// TestHTTPProxyThroughTunnel: CONNECT relays byte-exact through the tunnel,
// an absolute-URI GET is answered from inside it, a port nobody listens on
// inside the tunnel gets 502, and the service's status counts all of it.
func TestHTTPProxyThroughTunnel(t *testing.T) {
	checkGoroutines(t)
	p := newProxyPair(t, "")

	// CONNECT to the echo, both directions at once.
	c, err := net.Dial("tcp", p.proxy)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	io.WriteString(c, "CONNECT 10.99.0.2:7 HTTP/1.1\r\nHost: 10.99.0.2:7\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("CONNECT 10.99.0.2:7 = %v, %v; want 200", resp, err)
	}
	data := make([]byte, 2<<20+13)
	rand.Read(data)
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		c.(*net.TCPConn).CloseWrite()
		werr <- err
	}()
	got, err := io.ReadAll(br)
	if err != nil {
		t.Fatalf("reading the echo: %v", err)
	}
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(got) != sha256.Sum256(data) {
		t.Fatalf("echo through CONNECT: %d bytes with SHA-256 %x, want %d with %x", len(got), sha256.Sum256(got), len(data), sha256.Sum256(data))
	}
	c.Close()

	// GET with an absolute URI.
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: p.proxy}), DisableKeepAlives: true}}
	resp, err = hc.Get("http://10.99.0.2/blob")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 || sha256.Sum256(body) != sha256.Sum256(p.body) {
		t.Fatalf("GET http://10.99.0.2/blob = %s, %d bytes, %v; want 200 and the %d bytes served", resp.Status, len(body), err, len(p.body))
	}

	// Nothing listens on 10.99.0.2:81: B's stack resets, A answers 502.
	resp, err = hc.Get("http://10.99.0.2:81/")
	if err != nil {
		t.Fatal(err)
	}
	msg, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(string(msg), "10.99.0.2:81") {
		t.Errorf("GET a closed port in the tunnel = %s %q, want 502 naming it", resp.Status, msg)
	}

	waitFor(t, 10*time.Second, "client connections to close", func() bool {
		return svcStatus(t, p.a, KindHTTPProxy, "web").Active == 0
	})
	st := svcStatus(t, p.a, KindHTTPProxy, "web")
	if st.Total != 3 || st.DialFailures != 1 || st.BytesToTarget != uint64(len(data)) ||
		st.BytesFromTarget != uint64(len(data)+len(p.body)) || st.Counters["connects"] != 1 || st.Counters["requests"] != 1 {
		t.Errorf("http_proxy status = %+v, want 3 connections, 1 dial failure, 1 connect, 1 request, %d bytes to and %d from targets",
			st, len(data), len(data)+len(p.body))
	}
}

// TestHTTPProxyCurl: curl, as users run it, through the daemon's proxy
// with Basic authentication: plain HTTP and through a CONNECT tunnel, and
// refused with the wrong password.
func TestHTTPProxyCurl(t *testing.T) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("no curl (make deps installs it):", err)
	}
	p := newProxyPair(t, "username = \"alice\"\n  password = \"s3cret\"")
	run := func(args ...string) ([]byte, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, curl, append([]string{"-sS", "--max-time", "20"}, args...)...)
		cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=" + t.TempDir()} // no proxy variables, no .curlrc
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return out, fmt.Errorf("curl %q: %v: %s", args, err, stderr.String())
		}
		return out, nil
	}
	for _, tc := range []struct {
		name  string
		extra []string
	}{
		{"absolute URI", nil},
		{"CONNECT", []string{"--proxytunnel"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"--proxy", "http://" + p.proxy, "--proxy-user", "alice:s3cret", "--fail"}, tc.extra...)
			got, err := run(append(args, "http://10.99.0.2/blob")...)
			if err != nil {
				t.Fatal(err)
			}
			if sha256.Sum256(got) != sha256.Sum256(p.body) {
				t.Errorf("curl got %d bytes with SHA-256 %x, want %d with %x", len(got), sha256.Sum256(got), len(p.body), sha256.Sum256(p.body))
			}
		})
	}
	out, err := run("--proxy", "http://"+p.proxy, "--proxy-user", "alice:wrong", "-o", "/dev/null", "-w", "%{http_code}", "http://10.99.0.2/blob")
	if err != nil || string(out) != "407" {
		t.Errorf("curl with a wrong password = %q, %v; want 407", out, err)
	}
	st := svcStatus(t, p.a, KindHTTPProxy, "web")
	if st.Counters["auth_failures"] != 1 || st.Counters["connects"] != 1 || st.Counters["requests"] != 1 {
		t.Errorf("http_proxy status = %+v, want 1 auth failure, 1 connect, 1 request", st)
	}
}
