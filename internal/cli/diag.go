package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/ipipstack/ipipstack/config"
	"github.com/ipipstack/ipipstack/daemon"
)

// The diagnostics are registered after the other commands: init functions
// run in file order, and cli.go's, which sets commands, comes first.
func init() {
	pingCmd.run, tracerouteCmd.run = runPing, runTraceroute
	commands = append(commands, pingCmd, tracerouteCmd)
}

const diagServerDoc = `The running daemon does the work, through its status server (POST
/v1/ping, /v1/traceroute): the status block's listen address of FILE, or
--addr, or ` + config.DefaultStatusListen + ` if neither is given. So no TUN
device and no privilege are needed; at most 2 diagnostics run at once.`

const diagServerFlags = `  -c, --config FILE
        read the status server's address from this configuration file
  --addr HOST:PORT
        address of the status server (default ` + config.DefaultStatusListen + `)
`

var pingCmd = &command{
	name:    "ping",
	summary: "ping an address inside the tunnels from the running process",
	usage:   "ipipstack ping [-c FILE | --addr HOST:PORT] [--count 4] [--interval 1s] [--timeout 1s] ADDR",
	doc: `Send ICMP (or ICMPv6) echo requests from the running daemon's stack to ADDR,
an address inside the tunnels, and print each reply's round-trip time and
a summary, as ping does.

` + diagServerDoc + `

Exit status: 0 if at least one reply came back, 1 if none did or the
status server cannot be reached, 2 on a usage error.`,
	flags: diagServerFlags + `  --count N
        echo requests to send, 1..100 (default 4)
  --interval DURATION
        time between requests, 100ms..10s (default 1s)
  --timeout DURATION
        how long to wait for each reply, 100ms..10s (default 1s)
`,
	example: `  ipipstack ping -c examples/two-peers-a.hcl 10.99.0.2
  ipipstack ping --addr 127.0.0.1:9100 --count 10 --interval 200ms fd99::2
`,
}

var tracerouteCmd = &command{
	name:    "traceroute",
	summary: "show the hops to an address inside the tunnels",
	usage:   "ipipstack traceroute [-c FILE | --addr HOST:PORT] [--max-hops 30] [--wait 2s] ADDR",
	doc: `Send ICMP echo requests with TTL (hop limit) 1, 2, … from the running
daemon's stack towards ADDR and print, one line per TTL, the router that
answered with Time Exceeded and its round-trip time, "*" if none answered
within --wait, until ADDR replies, a router reports it unreachable (!H),
or --max-hops is reached, as traceroute -I does.

` + diagServerDoc + `

Exit status: 0 if ADDR replied, 1 if it did not or the status server
cannot be reached, 2 on a usage error.`,
	flags: diagServerFlags + `  --max-hops N
        largest TTL probed, 1..64 (default 30)
  --wait DURATION
        how long to wait for each hop's answer, 100ms..10s (default 2s)
`,
	example: `  ipipstack traceroute -c examples/two-peers-a.hcl 10.99.0.2
`,
}

// diagArgs parses the flags of a diagnostic and its one ADDR argument,
// which may come before or after the flags. It returns ok=false with the
// exit status when the command must stop.
func diagArgs(c *command, fs *flag.FlagSet, args []string, stdout, stderr io.Writer) (addr netip.Addr, ok bool, code int) {
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	var pos []string
	for {
		err := fs.Parse(args)
		switch {
		case errors.Is(err, flag.ErrHelp):
			writeHelp(stdout, c)
			return addr, false, ExitOK
		case err != nil:
			return addr, false, usageError(c, stderr, "%v%s", err, flagHint(fs, err))
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
	switch len(pos) {
	case 0:
		return addr, false, usageError(c, stderr, "missing ADDR, the address inside the tunnels to probe")
	case 1:
	default:
		return addr, false, usageError(c, stderr, "unexpected argument %q: give one ADDR", pos[1])
	}
	addr, err := netip.ParseAddr(pos[0])
	if err != nil {
		return addr, false, usageError(c, stderr, "ADDR: want an IP address inside the tunnels (the tunnels have no DNS), not %q", pos[0])
	}
	return addr, true, 0
}

// statusServer returns the status server's HOST:PORT from -c FILE or
// --addr, as status finds it.
func statusServer(c *command, file, addr string, stderr io.Writer) (string, int) {
	switch {
	case file != "" && addr != "":
		return "", usageError(c, stderr, "give -c FILE or --addr, not both")
	case file != "":
		cfg, code := loadConfig(file, stderr)
		if cfg == nil {
			return "", code
		}
		if !cfg.Status.Enabled() {
			fmt.Fprintf(stderr, "ipipstack %s: %s has no status block, so the daemon serves no diagnostics\n", c.name, file)
			return "", ExitUsage
		}
		return dialable(cfg.Status.Listen).String(), ExitOK
	case addr == "":
		return config.DefaultStatusListen, ExitOK
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return "", usageError(c, stderr, "invalid --addr %q: want HOST:PORT", addr)
	}
	return addr, ExitOK
}

// postLines POSTs to the status server and calls line with each JSON line
// of the answer as it arrives.
func postLines(ctx context.Context, server, path string, q url.Values, line func(json.RawMessage) error) error {
	u := "http://" + server + path + "?" + q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, nil)
	if err != nil {
		return err
	}
	// The status server is local; never go through an HTTP proxy.
	c := &http.Client{Transport: &http.Transport{Proxy: nil}}
	defer c.CloseIdleConnections()
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("is ipipstack running with a status block? %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("POST %s: %s: %s", path, resp.Status, strings.TrimSpace(string(body)))
	}
	dec := json.NewDecoder(io.LimitReader(resp.Body, 16<<20))
	for {
		var m json.RawMessage
		if err := dec.Decode(&m); err == io.EOF {
			return nil
		} else if err != nil {
			return fmt.Errorf("POST %s: reading the answer: %w", path, err)
		}
		if err := line(m); err != nil {
			return err
		}
	}
}

func runPing(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("ping", flag.ContinueOnError)
	var (
		file, addr        string
		count             = 4
		interval, timeout = time.Second, time.Second
	)
	fs.StringVar(&file, "c", "", "")
	fs.StringVar(&file, "config", "", "")
	fs.StringVar(&addr, "addr", "", "")
	fs.IntVar(&count, "count", count, "")
	fs.DurationVar(&interval, "interval", interval, "")
	fs.DurationVar(&timeout, "timeout", timeout, "")
	dst, ok, code := diagArgs(pingCmd, fs, args, stdout, stderr)
	if !ok {
		return code
	}
	if count < 1 || count > 100 {
		return usageError(pingCmd, stderr, "--count must be 1..100, not %d", count)
	}
	if _, err := strconv.Atoi(file); err == nil {
		if _, err := os.Stat(file); err != nil {
			// ping -c COUNT, as the system's ping takes it.
			return usageError(pingCmd, stderr, "-c is the configuration file here; the number of requests is --count %s", file)
		}
	}
	server, code := statusServer(pingCmd, file, addr, stderr)
	if server == "" {
		return code
	}
	q := url.Values{"addr": {dst.String()}, "count": {strconv.Itoa(count)},
		"interval": {interval.String()}, "timeout": {timeout.String()}}
	fmt.Fprintf(stdout, "PING %s from the ipipstack at %s\n", dst, server)
	var p pingStats
	err := postLines(ctx, server, "/v1/ping", q, func(m json.RawMessage) error {
		var r daemon.PingReply
		if err := json.Unmarshal(m, &r); err != nil {
			return err
		}
		p.add(stdout, r)
		return nil
	})
	if err != nil {
		fmt.Fprintf(stderr, "ipipstack ping: %v\n", err)
		return ExitFailure
	}
	p.summary(stdout, dst)
	if p.received == 0 {
		return ExitFailure
	}
	return ExitOK
}

// pingStats prints the replies and sums them up, as ping does.
type pingStats struct {
	sent, received int
	min, max, sum  time.Duration
}

func (p *pingStats) add(w io.Writer, r daemon.PingReply) {
	p.sent++
	if r.Error != "" {
		fmt.Fprintf(w, "no reply from %s: seq=%d %s\n", r.Addr, r.Seq, r.Error)
		return
	}
	rtt := time.Duration(r.RTTSeconds * float64(time.Second))
	if p.received == 0 || rtt < p.min {
		p.min = rtt
	}
	p.max = max(p.max, rtt)
	p.sum += rtt
	p.received++
	fmt.Fprintf(w, "reply from %s: seq=%d time=%s\n", r.Addr, r.Seq, ms(rtt))
}

func (p *pingStats) summary(w io.Writer, dst netip.Addr) {
	loss := 0
	if p.sent > 0 {
		loss = int(math.Round(100 * float64(p.sent-p.received) / float64(p.sent)))
	}
	fmt.Fprintf(w, "\n--- %s ping statistics ---\n%d packets transmitted, %d received, %d%% packet loss\n", dst, p.sent, p.received, loss)
	if p.received > 0 {
		fmt.Fprintf(w, "rtt min/avg/max = %s/%s/%s ms\n", msNum(p.min), msNum(p.sum/time.Duration(p.received)), msNum(p.max))
	}
}

// ms formats d in milliseconds with three decimals, as ping does.
func ms(d time.Duration) string { return msNum(d) + " ms" }

// msNum is ms without the unit.
func msNum(d time.Duration) string {
	return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 3, 64)
}

func runTraceroute(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("traceroute", flag.ContinueOnError)
	var (
		file, addr string
		maxHops    = 30
		wait       = 2 * time.Second
	)
	fs.StringVar(&file, "c", "", "")
	fs.StringVar(&file, "config", "", "")
	fs.StringVar(&addr, "addr", "", "")
	fs.IntVar(&maxHops, "max-hops", maxHops, "")
	fs.DurationVar(&wait, "wait", wait, "")
	dst, ok, code := diagArgs(tracerouteCmd, fs, args, stdout, stderr)
	if !ok {
		return code
	}
	if maxHops < 1 || maxHops > 64 {
		return usageError(tracerouteCmd, stderr, "--max-hops must be 1..64, not %d", maxHops)
	}
	server, code := statusServer(tracerouteCmd, file, addr, stderr)
	if server == "" {
		return code
	}
	q := url.Values{"addr": {dst.String()}, "max_hops": {strconv.Itoa(maxHops)}, "wait": {wait.String()}}
	fmt.Fprintf(stdout, "traceroute to %s, %d hops max, from the ipipstack at %s\n", dst, maxHops, server)
	reached := false
	err := postLines(ctx, server, "/v1/traceroute", q, func(m json.RawMessage) error {
		var h daemon.TraceHop
		if err := json.Unmarshal(m, &h); err != nil {
			return err
		}
		if h.Error != "" {
			return errors.New(h.Error)
		}
		writeHop(stdout, h)
		reached = reached || h.Reached
		return nil
	})
	if err != nil {
		fmt.Fprintf(stderr, "ipipstack traceroute: %v\n", err)
		return ExitFailure
	}
	if !reached {
		return ExitFailure
	}
	return ExitOK
}

// writeHop prints one hop as traceroute does.
func writeHop(w io.Writer, h daemon.TraceHop) {
	if h.Addr == "" {
		fmt.Fprintf(w, "%2d  *\n", h.TTL)
		return
	}
	mark := ""
	if h.Unreachable {
		mark = " !H"
	}
	fmt.Fprintf(w, "%2d  %s  %s%s\n", h.TTL, h.Addr, ms(time.Duration(h.RTTSeconds*float64(time.Second))), mark)
}
