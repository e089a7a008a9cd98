package cli

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/config"
	"github.com/ipipstack/ipipstack/daemon"
)

// ncPeers starts two daemons in process: B reverse-forwards 10.99.0.2:7 to
// a host TCP echo (which half-closes after echoing) and 10.99.0.2:8 to a
// host service that sends a greeting and closes without reading; A has a
// SOCKS5 proxy (with the given extra attributes). It returns A's file.
func ncPeers(t *testing.T, socksAttrs string) (fileA string) {
	t.Helper()
	echo := hostTCP(t, func(c *net.TCPConn) { io.Copy(c, c); c.CloseWrite() })
	hello := hostTCP(t, func(c *net.TCPConn) { io.WriteString(c, "hello from B\n") })
	pa, pb := freeUDPPort(t), freeUDPPort(t)
	fileB := writeFile(t, "b.hcl", fmt.Sprintf(`
tunnel "a" {
  local     = "127.0.0.1:%d"
  remote    = "127.0.0.1:%d"
  addresses = ["10.99.0.2/30"]
}
reverse "echo" {
  listen = "10.99.0.2:7"
  target = "%s"
}
reverse "hello" {
  listen = "10.99.0.2:8"
  target = "%s"
}`, pb, pa, echo, hello))
	fileA = writeFile(t, "a.hcl", fmt.Sprintf(`
tunnel "b" {
  local     = "127.0.0.1:%d"
  remote    = "127.0.0.1:%d"
  addresses = ["10.99.0.1/30"]
}
socks5 "proxy" {
  listen = "127.0.0.1:%d"
  %s
}`, pa, pb, freeTCPPort(t), socksAttrs))
	for _, f := range []string{fileB, fileA} {
		cfg, diags := (&config.Parser{}).Load(f)
		if diags.HasErrors() {
			t.Fatal(diags)
		}
		d, err := daemon.Start(t.Context(), cfg, daemon.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			d.Shutdown(ctx)
		})
	}
	return fileA
}

// hostTCP serves each connection on 127.0.0.1 with serve, then closes it.
func hostTCP(t *testing.T, serve func(*net.TCPConn)) string {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); serve(c.(*net.TCPConn)) }()
		}
	}()
	return ln.Addr().String()
}

// runNCWith runs nc with stdin in.
func runNCWith(t *testing.T, in io.Reader, args ...string) (stdout []byte, stderr string, code int) {
	t.Helper()
	old := ncStdin
	ncStdin = in
	defer func() { ncStdin = old }()
	var o, e bytes.Buffer
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	code = Main(ctx, append([]string{"nc"}, args...), &o, &e)
	return o.Bytes(), e.String(), code
}

// TestNCEcho: what nc reads on stdin reaches the echo inside the tunnel
// byte-exact, stdin's EOF reaches the echo as EOF (it half-closes only
// then), and nc exits 0 when the echo closes, with all of it on stdout.
// Through the file's socks5 block (with authentication) and through
// --socks5.
func TestNCEcho(t *testing.T) {
	data := make([]byte, 3<<20+11)
	rand.Read(data)
	t.Run("config with auth", func(t *testing.T) {
		file := ncPeers(t, "username = \"u\"\n  password = \"p\"")
		out, errOut, code := runNCWith(t, bytes.NewReader(data), "-c", file, "10.99.0.2", "7")
		if code != ExitOK || sha256.Sum256(out) != sha256.Sum256(data) {
			t.Fatalf("nc -c: exit %d, %d bytes out with SHA-256 %x; want 0 and %d bytes with %x\n%s",
				code, len(out), sha256.Sum256(out), len(data), sha256.Sum256(data), errOut)
		}
	})
	t.Run("socks5 flag", func(t *testing.T) {
		file := ncPeers(t, "")
		cfg, _ := (&config.Parser{}).Load(file)
		out, errOut, code := runNCWith(t, bytes.NewReader(data), "--socks5", cfg.SOCKS5[0].Listen.String(), "10.99.0.2", "7")
		if code != ExitOK || sha256.Sum256(out) != sha256.Sum256(data) {
			t.Fatalf("nc --socks5: exit %d, %d bytes out; want 0 and the %d bytes sent\n%s", code, len(out), len(data), errOut)
		}
	})
}

// TestNCRemoteClose: when the remote end closes, nc exits 0 with what it
// sent, even though stdin is still open.
func TestNCRemoteClose(t *testing.T) {
	file := ncPeers(t, "")
	pr, pw := io.Pipe() // stdin that never ends
	defer pw.Close()
	out, errOut, code := runNCWith(t, pr, "-c", file, "10.99.0.2", "8")
	if code != ExitOK || string(out) != "hello from B\n" {
		t.Fatalf("nc to a service that closes: exit %d, stdout %q; want 0 and the greeting\n%s", code, out, errOut)
	}
}

// TestNCFailures: a refused connection inside the tunnel and a wrong
// password exit 1 saying why; usage errors exit 2.
func TestNCFailures(t *testing.T) {
	file := ncPeers(t, "username = \"u\"\n  password = \"p\"")
	_, errOut, code := runNCWith(t, strings.NewReader(""), "-c", file, "10.99.0.2", "9")
	if code != ExitFailure || !strings.Contains(errOut, "connecting to 10.99.0.2:9 inside the tunnels: connection refused") {
		t.Errorf("nc to a closed port: exit %d, stderr %q; want 1 and the SOCKS5 reply", code, errOut)
	}
	cfg, _ := (&config.Parser{}).Load(file)
	_, errOut, code = runNCWith(t, strings.NewReader(""), "--socks5", cfg.SOCKS5[0].Listen.String(), "10.99.0.2", "7")
	if code != ExitFailure || !strings.Contains(errOut, "wants authentication") {
		t.Errorf("nc without credentials: exit %d, stderr %q; want 1 saying it wants authentication", code, errOut)
	}
	noSOCKS := writeFile(t, "n.hcl", `
tunnel "t" {
  local     = "127.0.0.1:4700"
  remote    = "127.0.0.1:4701"
  addresses = ["10.99.0.1/30"]
}`)
	for _, args := range [][]string{
		{"10.99.0.2", "7"},
		{"-c", file, "10.99.0.2"},
		{"-c", file, "--socks5", "127.0.0.1:1", "10.99.0.2", "7"},
		{"-c", file, "10.99.0.2", "0"},
		{"-c", file, "10.99.0.2", "ssh"},
		{"-c", noSOCKS, "10.99.0.2", "22"},
	} {
		if _, errOut, code := runNCWith(t, strings.NewReader(""), args...); code != ExitUsage {
			t.Errorf("nc %q: exit %d, want 2\n%s", args, code, errOut)
		}
	}
}
