package e2e

import (
	"bufio"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// readyz returns the status code and body of GET /readyz.
func readyz(t *testing.T, statusAddr string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	defer c.CloseIdleConnections()
	resp, err := c.Get("http://" + statusAddr + "/readyz")
	if err != nil {
		t.Fatalf("GET /readyz: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b))
}

// peerState returns the peer state of the named tunnel in /status.
func peerState(t *testing.T, statusAddr, tunnel string) string {
	t.Helper()
	var st struct {
		Tunnels []struct {
			Name      string `json:"name"`
			PeerState *struct {
				State string `json:"state"`
			} `json:"peer_state"`
		} `json:"tunnels"`
	}
	if err := json.Unmarshal(get(t, "http://"+statusAddr+"/status"), &st); err != nil {
		t.Fatalf("/status: %v", err)
	}
	for _, tu := range st.Tunnels {
		if tu.Name == tunnel && tu.PeerState != nil {
			return tu.PeerState.State
		}
	}
	t.Fatalf("/status has no peer_state for tunnel %q", tunnel)
	return ""
}

// waitPeer polls A's status server until tunnel's peer is in state and
// /readyz answers code, and fails after timeout.
func waitPeer(t *testing.T, statusAddr, tunnel, state string, code int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got := peerState(t, statusAddr, tunnel)
		gotCode, body := readyz(t, statusAddr)
		if got == state && gotCode == code {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: tunnel %s peer %s, /readyz %d %q; want peer %s and /readyz %d", timeout, tunnel, got, gotCode, body, state, code)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestKeepalivePeerDownUp: with keepalive = "1s" on A's tunnel, killing B
// marks B down (warn line, /readyz 503, status exit 3), and starting B
// again marks it up (info line, /readyz 200, status exit 0).
func TestKeepalivePeerDownUp(t *testing.T) {
	t.Parallel()
	p := startPeers(t, peerOptions{editA: func(s string) string {
		const block = "tunnel \"b\" {\n"
		return strings.Replace(s, block, block+"  keepalive = \"1s\"\n", 1)
	}})
	sa := addr(p.statusA)
	waitPeer(t, sa, "b", "up", http.StatusOK, 15*time.Second)
	if _, _, code := runCLI(t, "status", "--addr", sa); code != 0 {
		t.Errorf("ipipstack status with the peer up: exit %d, want 0", code)
	}

	argsB := p.b.cmd.Args[1:]
	p.b.cmd.Process.Kill()
	p.b.exitCode(t, 10*time.Second)
	// Down after 3 keepalive intervals without an answer.
	waitPeer(t, sa, "b", "down", http.StatusServiceUnavailable, 20*time.Second)
	if _, body := readyz(t, sa); !strings.Contains(body, "tunnel b: peer 10.99.0.2 is down") {
		t.Errorf("/readyz with B killed says %q, want the tunnel and peer that are down", body)
	}
	if out, _, code := runCLI(t, "status", "--addr", sa); code != 3 {
		t.Errorf("ipipstack status with the peer down: exit %d, want 3\n%s", code, out)
	}
	waitOutput(t, p.a, 5*time.Second, "level=WARN", "peer down", "tunnel=b", "peer=10.99.0.2")

	b2 := start(t, "peer B (restarted)", argsB...)
	b2.waitReady(t, addr(p.statusB))
	waitPeer(t, sa, "b", "up", http.StatusOK, 20*time.Second)
	if _, _, code := runCLI(t, "status", "--addr", sa); code != 0 {
		t.Errorf("ipipstack status with the peer back up: exit %d, want 0", code)
	}
	waitOutput(t, p.a, 5*time.Second, "level=INFO", "peer up", "tunnel=b", "from=down", "to=up")

	p.a.stop(t, 10*time.Second)
	b2.stop(t, 10*time.Second)
}

// TestReloadSIGHUP: SIGHUP with a new file adds a forward, removes
// another and changes a tunnel, while a download through an unchanged
// forward, open across the reload, completes byte-exact. SIGHUP with an
// invalid file keeps that configuration: the process keeps serving and
// its log says why.
func TestReloadSIGHUP(t *testing.T) {
	t.Parallel()
	cPort, cPort2, cLocal, web2 := freePort(t, "udp"), freePort(t, "udp"), freePort(t, "udp"), freePort(t, "tcp")
	tunnelC := func(remote int) string {
		return fmt.Sprintf("\ntunnel \"c\" {\n  transport = \"udp\"\n  local     = %q\n  remote    = %q\n  addresses = [\"10.97.0.1/30\"]\n}\n",
			addr(cLocal), addr(remote))
	}
	var before string
	p := startPeers(t, peerOptions{blobSize: 32 << 20, editA: func(s string) string {
		before = s + tunnelC(cPort)
		return before
	}})
	sa := addr(p.statusA)
	want := sha256.Sum256(p.blob)

	// A download through forward "web", read in part and held open.
	c, err := net.DialTimeout("tcp4", addr(p.web), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := io.WriteString(c, "GET /blob HTTP/1.0\r\nHost: 10.99.0.2\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	resp, err := http.ReadResponse(bufioReader(c), nil)
	if err != nil {
		t.Fatalf("response through forward web: %v", err)
	}
	if _, err := io.CopyN(h, resp.Body, 1<<20); err != nil {
		t.Fatalf("first MiB through forward web: %v", err)
	}

	// The new file: forward "web2" added, forward "echo" removed, tunnel
	// "c" pointed at another remote.
	const echoBlock = "forward \"echo\" {"
	i := strings.Index(before, echoBlock)
	j := strings.Index(before[i:], "\n}\n")
	if i < 0 || j < 0 {
		t.Fatalf("A's file has no %s … } block", echoBlock)
	}
	after := before[:i] + before[i+j+3:]
	after = strings.Replace(after, tunnelC(cPort), tunnelC(cPort2), 1)
	after += fmt.Sprintf("\nforward \"web2\" {\n  protocol = \"tcp\"\n  listen   = %q\n  target   = \"10.99.0.2:80\"\n}\n", addr(web2))
	if err := os.WriteFile(p.cfgA, []byte(after), 0o644); err != nil {
		t.Fatal(err)
	}
	p.a.cmd.Process.Signal(syscall.SIGHUP)
	waitOutput(t, p.a, 20*time.Second, "msg=\"reload done\"")
	mustContain(t, "A's log", p.a.out.String(),
		`msg="reload: service stopped" kind=forward service=echo`,
		`msg="reload: service listening" kind=forward service=web2`,
		`msg="reload: tunnel added" tunnel=c`)

	checkReloaded := func(when string) {
		t.Helper()
		if got := curl(t, "http://"+addr(web2)+"/blob"); got != want {
			t.Errorf("%s: curl through the added forward web2: SHA-256 %x, want %x", when, got, want)
		}
		if c, err := net.DialTimeout("udp4", addr(p.echo), time.Second); err == nil {
			// UDP: the port is closed if nobody listens; a read gets the ICMP error.
			c.Write([]byte("x"))
			c.SetReadDeadline(time.Now().Add(time.Second))
			if _, err := c.Read(make([]byte, 16)); err == nil {
				t.Errorf("%s: the removed UDP forward echo still answers on %s", when, addr(p.echo))
			}
			c.Close()
		}
		var st struct {
			Tunnels []struct {
				Name   string `json:"name"`
				Remote string `json:"remote"`
			} `json:"tunnels"`
			Services []struct{ Kind, Name string } `json:"services"`
		}
		if err := json.Unmarshal(get(t, "http://"+sa+"/status"), &st); err != nil {
			t.Fatal(err)
		}
		var remoteC string
		for _, tu := range st.Tunnels {
			if tu.Name == "c" {
				remoteC = tu.Remote
			}
		}
		if remoteC != addr(cPort2) {
			t.Errorf("%s: tunnel c's remote in /status is %q, want %s", when, remoteC, addr(cPort2))
		}
		var services []string
		for _, s := range st.Services {
			services = append(services, s.Kind+" "+s.Name)
		}
		got := " " + strings.Join(services, ", ") + ","
		if !strings.Contains(got, " forward web2,") || strings.Contains(got, " forward echo,") || !strings.Contains(got, " forward web,") {
			t.Errorf("%s: services in /status: %s; want forward web and web2, no forward echo", when, got)
		}
	}
	checkReloaded("after the reload")
	st := getStatus(t, sa)
	if active, _, _ := st.service(t, "forward", "web"); active != 1 {
		t.Errorf("forward web has %d active connections after the reload, want 1 (the held download)", active)
	}

	// The held download completes byte-exact.
	if _, err := io.Copy(h, resp.Body); err != nil {
		t.Fatalf("rest of the download through forward web: %v", err)
	}
	if got := [32]byte(h.Sum(nil)); got != want {
		t.Errorf("download through forward web across the reload: SHA-256 %x, want %x", got, want)
	}
	c.Close() // else A's shutdown waits its drain timeout for it

	// An invalid file: rejected, logged with where, and nothing changes.
	broken := after + "\nforward \"bad\" {\n  protocol = \"tcp\"\n  listen   = \"127.0.0.1:notaport\"\n  target   = \"10.99.0.2:80\"\n}\n"
	if err := os.WriteFile(p.cfgA, []byte(broken), 0o644); err != nil {
		t.Fatal(err)
	}
	p.a.cmd.Process.Signal(syscall.SIGHUP)
	line := waitOutput(t, p.a, 20*time.Second, "reload rejected: invalid configuration; the running configuration stays")
	if !strings.Contains(line, "level=ERROR") || !strings.Contains(line, "file="+p.cfgA) {
		t.Errorf("rejection line %q: want level=ERROR and file=%s", line, p.cfgA)
	}
	badLine := strconv.Itoa(strings.Count(after, "\n") + 4) // the listen line of forward "bad"
	waitOutput(t, p.a, 5*time.Second, "reload rejected:", "at="+p.cfgA+":"+badLine+":")
	checkReloaded("after the invalid file")
	if got := curl(t, "http://"+addr(p.web)+"/blob"); got != want {
		t.Errorf("after the invalid file: curl through forward web: SHA-256 %x, want %x", got, want)
	}

	p.a.stop(t, 10*time.Second)
	p.b.stop(t, 10*time.Second)
}

func bufioReader(r io.Reader) *bufio.Reader { return bufio.NewReaderSize(r, 64<<10) }
