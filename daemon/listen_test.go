package daemon

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ipipstack/ipipstack/internal/servicetest"
)

// startOne starts a daemon with a tunnel to a peer that never answers, a
// TCP forward, a SOCKS5 proxy and the status server, all on 127.0.0.1 and
// port 0; extra is appended to its config.
func startOne(t *testing.T, opts Options) *Daemon {
	t.Helper()
	cfg := parse(t, fmt.Sprintf(`
status {
  listen = "127.0.0.1:1"
}
tunnel "p" {
  local     = "127.0.0.1:%d"
  remote    = "127.0.0.1:%d"
  addresses = ["10.99.0.1/30"]
}
forward "web" {
  listen = "127.0.0.1:2"
  target = "10.99.0.2:80"
}
socks5 "proxy" {
  listen = "127.0.0.1:3"
}`, freeUDPPort(t), freeUDPPort(t)))
	loop0 := netip.MustParseAddrPort("127.0.0.1:0")
	cfg.Status.Listen, cfg.Forwards[0].Listen, cfg.SOCKS5[0].Listen = loop0, loop0, loop0
	if opts.Logger == nil {
		opts.Logger = testLogger(t, nil)
	}
	return startDaemon(t, cfg, opts)
}

// /metrics carries the Go runtime's and the process's standard series next
// to the daemon's own.
func TestMetricsRuntimeAndProcess(t *testing.T) {
	d := startOne(t, Options{})
	hc := &http.Client{Timeout: 5 * time.Second}
	defer hc.CloseIdleConnections()
	metrics := string(get(t, hc, "http://"+d.StatusAddr().String()+"/metrics"))
	value := func(name string) float64 {
		t.Helper()
		m := regexp.MustCompile(`(?m)^` + name + ` (\S+)$`).FindStringSubmatch(metrics)
		if m == nil {
			t.Fatalf("/metrics has no %s series:\n%s", name, metrics)
		}
		v, err := strconv.ParseFloat(m[1], 64)
		if err != nil {
			t.Fatalf("%s = %q: %v", name, m[1], err)
		}
		return v
	}
	// The daemon runs at least its accept loops and the status server.
	if g := value("go_goroutines"); g < 3 {
		t.Errorf("go_goroutines = %v, want at least 3", g)
	}
	// Three listeners, a tunnel socket and the HTTP connection at least,
	// and no more than the test process has now (plus slack for sockets
	// opened since).
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	if n := value("process_open_fds"); n < 5 || n > float64(len(ents)+16) {
		t.Errorf("process_open_fds = %v, want 5..%d (/proc/self/fd has %d entries)", n, len(ents)+16, len(ents))
	}
	if rss := value("process_resident_memory_bytes"); rss < 1<<20 || rss > 1<<40 {
		t.Errorf("process_resident_memory_bytes = %v, want between 1 MiB and 1 TiB", rss)
	}
}

// The fd tests run the daemon in a child process (this test binary again,
// with fdChildEnv set to the test's name) so that lowering RLIMIT_NOFILE
// and running out of descriptors touches nothing else. The child talks on
// stdout in lines starting with fdChildPrefix and reads commands on stdin;
// the connections that press on its listeners come from the parent, which
// has descriptors to spare.
const (
	fdChildEnv    = "IPIPSTACK_TEST_FD_CHILD"
	fdChildPrefix = "FDCHILD "
)

// fdChild is the parent's handle on a child.
type fdChild struct {
	t      *testing.T
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string
	stderr *servicetest.LogBuffer
	addrs  map[string]string // "status", "forward", "socks5"
}

// startFDChild runs the current test in a child process and returns once
// the child's daemon is listening.
func startFDChild(t *testing.T) *fdChild {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^"+t.Name()+"$", "-test.count=1")
	cmd.Env = append(os.Environ(), fdChildEnv+"="+t.Name())
	c := &fdChild{t: t, cmd: cmd, lines: make(chan string, 16), stderr: &servicetest.LogBuffer{}}
	cmd.Stderr = c.stderr
	var err error
	if c.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.stdin.Close() // the child shuts down on EOF
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil && !t.Failed() {
				t.Errorf("child: %v\n%s", err, c.stderr.String())
			}
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-done
			t.Errorf("child did not exit\n%s", c.stderr.String())
		}
		if t.Failed() {
			t.Logf("child's stderr:\n%s", c.stderr.String())
		}
	})
	go func() {
		defer close(c.lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if l, ok := strings.CutPrefix(sc.Text(), fdChildPrefix); ok {
				c.lines <- l
			} else {
				c.stderr.Write([]byte(sc.Text() + "\n")) // the child's test output
			}
		}
	}()
	if err := json.Unmarshal([]byte(c.expect("listening ")), &c.addrs); err != nil {
		t.Fatal(err)
	}
	return c
}

// expect waits for the child's next line, which must start with prefix,
// and returns the rest.
func (c *fdChild) expect(prefix string) string {
	c.t.Helper()
	select {
	case l, ok := <-c.lines:
		if !ok {
			c.t.Fatalf("child exited before %q\n%s", prefix, c.stderr.String())
		}
		rest, found := strings.CutPrefix(l, prefix)
		if !found {
			c.t.Fatalf("child said %q, want %q...", l, prefix)
		}
		return rest
	case <-time.After(30 * time.Second):
		c.t.Fatalf("child did not say %q within 30s\n%s", prefix, c.stderr.String())
	}
	return ""
}

func (c *fdChild) send(cmd string) {
	c.t.Helper()
	if _, err := io.WriteString(c.stdin, cmd+"\n"); err != nil {
		c.t.Fatal(err)
	}
}

// childSide is the child's end: its daemon, its log, stdin and stdout.
type childSide struct {
	t   *testing.T
	d   *Daemon
	log *servicetest.LogBuffer
	in  *bufio.Scanner
}

// startChildSide starts the child's daemon and tells the parent where it
// listens.
func startChildSide(t *testing.T) *childSide {
	log := &servicetest.LogBuffer{}
	h := slog.NewTextHandler(io.MultiWriter(os.Stderr, log), &slog.HandlerOptions{Level: slog.LevelDebug})
	c := &childSide{t: t, log: log, in: bufio.NewScanner(os.Stdin)}
	c.d = startOne(t, Options{Logger: slog.New(h), DrainTimeout: -1})
	addrs := map[string]string{
		"status":  c.d.StatusAddr().String(),
		"forward": svcStatus(t, c.d, KindForward, "web").Listen,
		"socks5":  svcStatus(t, c.d, KindSOCKS5, "proxy").Listen,
	}
	b, _ := json.Marshal(addrs)
	c.say("listening " + string(b))
	return c
}

func (c *childSide) say(line string) { fmt.Printf("%s%s\n", fdChildPrefix, line) }

// wait reads the parent's next command, which must be cmd.
func (c *childSide) wait(cmd string) {
	c.t.Helper()
	if !c.in.Scan() || c.in.Text() != cmd {
		c.t.Fatalf("parent said %q (%v), want %q", c.in.Text(), c.in.Err(), cmd)
	}
}

// openFDs counts the process's open descriptors. It needs one itself.
func openFDs() (int, error) {
	ents, err := os.ReadDir("/proc/self/fd")
	return len(ents) - 1, err
}

// setFDLimit sets the soft RLIMIT_NOFILE of the process.
func setFDLimit(t *testing.T, n uint64) {
	t.Helper()
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	lim.Cur = n
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
}

// exhaustFDs opens descriptors until the process has none left, and
// returns them.
func exhaustFDs(t *testing.T) []int {
	t.Helper()
	var fds []int
	for {
		fd, err := unix.Dup(0)
		if err != nil {
			if err != unix.EMFILE {
				t.Fatalf("dup: %v", err)
			}
			return fds
		}
		fds = append(fds, fd)
	}
}

// Every listener (forward, SOCKS5, status) keeps failing to accept while
// the process is out of descriptors, counts those failures, and accepts
// again once descriptors are free: the connections that waited in the
// backlog are served.
func TestListenersSurviveFDExhaustion(t *testing.T) {
	if os.Getenv(fdChildEnv) == t.Name() {
		c := startChildSide(t)
		n, err := openFDs()
		if err != nil {
			t.Fatal(err)
		}
		setFDLimit(t, uint64(n+64))
		fds := exhaustFDs(t)
		c.say("exhausted")
		// The parent has dialed all three; wait until each has failed.
		waitFor(t, 20*time.Second, "accept errors on every listener", func() bool {
			for _, addr := range c.addrsOf() {
				if !strings.Contains(c.log.String(), " "+addr+": accept4: too many open files") {
					return false
				}
			}
			return true
		})
		for _, fd := range fds {
			unix.Close(fd)
		}
		c.say("released")
		c.wait("done")
		return
	}

	c := startFDChild(t)
	c.expect("exhausted")
	// These wait in the listeners' backlogs while the child has no
	// descriptor to accept them with.
	var conns []net.Conn
	for _, name := range []string{"status", "forward", "socks5"} {
		nc, err := net.DialTimeout("tcp", c.addrs[name], 5*time.Second)
		if err != nil {
			t.Fatalf("dial %s: %v", name, err)
		}
		defer nc.Close()
		conns = append(conns, nc)
	}
	c.expect("released")

	// The status connection made during the exhaustion is served now.
	conns[0].SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conns[0], "GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(conns[0]), nil)
	if err != nil {
		t.Fatalf("status request sent on the connection made while out of descriptors: %v", err)
	}
	var st map[string]any
	err = json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	// And the forward's and the proxy's: they were accepted (counted in
	// total), after their failures were counted.
	hc := &http.Client{Timeout: 5 * time.Second}
	defer hc.CloseIdleConnections()
	var services []struct {
		Kind         string  `json:"kind"`
		Total        uint64  `json:"total"`
		AcceptErrors *uint64 `json:"accept_errors"`
	}
	waitFor(t, 10*time.Second, "the forward and the proxy to accept their waiting connection", func() bool {
		if err := json.Unmarshal(get(t, hc, "http://"+c.addrs["status"]+"/status"), &struct{ Services any }{&services}); err != nil {
			t.Fatal(err)
		}
		for _, s := range services {
			if s.Total == 0 {
				return false
			}
		}
		return true
	})
	for _, s := range services {
		if s.AcceptErrors == nil || *s.AcceptErrors == 0 {
			t.Errorf("/status: %s accept_errors = %v, want > 0 (its accepts failed while out of descriptors)", s.Kind, s.AcceptErrors)
		}
	}
	var ss struct {
		StatusServer *struct {
			AcceptErrors uint64 `json:"accept_errors"`
		} `json:"status_server"`
	}
	b, _ := json.Marshal(st)
	json.Unmarshal(b, &ss)
	if ss.StatusServer == nil || ss.StatusServer.AcceptErrors == 0 {
		t.Errorf("/status: status_server = %+v, want accept_errors > 0", ss.StatusServer)
	}
	metrics := string(get(t, hc, "http://"+c.addrs["status"]+"/metrics"))
	for _, re := range []string{
		`(?m)^ipipstack_service_accept_errors_total\{kind="forward",service="web"\} [1-9]`,
		`(?m)^ipipstack_service_accept_errors_total\{kind="socks5",service="proxy"\} [1-9]`,
		`(?m)^ipipstack_status_accept_errors_total [1-9]`,
	} {
		if !regexp.MustCompile(re).MatchString(metrics) {
			t.Errorf("/metrics has no line matching %s", re)
		}
	}
	c.send("done")
}

func (c *childSide) addrsOf() []string {
	return []string{c.d.StatusAddr().String(), svcStatus(c.t, c.d, KindForward, "web").Listen,
		svcStatus(c.t, c.d, KindSOCKS5, "proxy").Listen}
}

// More idle connections to the status server than it serves at once do not
// take the descriptors a forward needs to accept.
func TestIdleStatusConnsDoNotStarveForward(t *testing.T) {
	const held = 3 * statusMaxConns
	if os.Getenv(fdChildEnv) == t.Name() {
		c := startChildSide(t)
		n, err := openFDs()
		if err != nil {
			t.Fatal(err)
		}
		// Room for the status server's connections and a few more, but
		// not for all the parent holds.
		setFDLimit(t, uint64(n+statusMaxConns+16))
		c.say("limited")
		c.wait("held")
		statusAddr := c.d.StatusAddr().String()
		// The status server has taken all it takes: it ran out of
		// descriptors, or it holds its cap.
		waitFor(t, 20*time.Second, "the status server to take the connections", func() bool {
			if strings.Contains(c.log.String(), " "+statusAddr+": accept4: too many open files") {
				return true
			}
			m, err := openFDs()
			return err == nil && m >= n+statusMaxConns
		})
		c.say("saturated")
		c.wait("dialed")
		var st ServiceStatus
		waitFor(t, 20*time.Second, "the forward to accept or fail", func() bool {
			st = svcStatus(t, c.d, KindForward, "web")
			return st.Total > 0 || st.AcceptErrors > 0
		})
		c.say(fmt.Sprintf("forward %d %d", st.Total, st.AcceptErrors))
		c.wait("done")
		return
	}

	c := startFDChild(t)
	c.expect("limited")
	for i := range held {
		nc, err := net.DialTimeout("tcp", c.addrs["status"], 5*time.Second)
		if err != nil {
			t.Fatalf("dial status #%d: %v", i, err)
		}
		defer nc.Close()
	}
	c.send("held")
	c.expect("saturated")
	fc, err := net.DialTimeout("tcp", c.addrs["forward"], 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer fc.Close()
	c.send("dialed")
	var total, acceptErrs uint64
	if _, err := fmt.Sscanf(c.expect("forward "), "%d %d", &total, &acceptErrs); err != nil {
		t.Fatal(err)
	}
	if total != 1 || acceptErrs != 0 {
		t.Errorf("with %d idle status connections held, the forward accepted %d connections and failed %d accepts; want 1 and 0", held, total, acceptErrs)
	}
	c.send("done")
}
