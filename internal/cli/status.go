package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ipipstack/ipipstack/config"
	"github.com/ipipstack/ipipstack/daemon"
)

var statusCmd = &command{
	name:    "status",
	summary: "show the tunnels and services of a running process",
	usage:   "ipipstack status [-c FILE | --addr HOST:PORT] [--json] [--timeout 5s]",
	doc: `Fetch /status from the status server of a running ipipstack and print its
tunnels (outer addresses, MTU, packet and byte counters, drops with their
leading reasons, when the peer was last heard from) and services (open and
total connections, refusals, failed dials of the target, bytes).

The server is the status block's listen address of FILE, or --addr, or
` + config.DefaultStatusListen + ` if neither is given.

Peers are up, down (a keepalive went unanswered) or unknown; the daemon is
ready when every tunnel with a keepalive has its peer up, as /readyz says, so
the command serves as a container health check.

Exit status: 0 on success, 1 if the server cannot be reached, 2 on a usage
error or if FILE is invalid or has no status block, 3 if the daemon is not
ready (the reasons go to stderr).`,
	flags: `  -c, --config FILE
        read the status server's address from this configuration file
  --addr HOST:PORT
        address of the status server (default ` + config.DefaultStatusListen + `)
  --json
        print the JSON document as served instead of tables
  --timeout DURATION
        give up on the request after this long (default 5s)
`,
	example: `  ipipstack status -c examples/two-peers-a.hcl
  ipipstack status --addr 127.0.0.1:9101 --json
`,
}

func init() { statusCmd.run = runStatus }

func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	var (
		file, addr string
		asJSON     bool
		timeout    = 5 * time.Second
	)
	fs.StringVar(&file, "c", "", "")
	fs.StringVar(&file, "config", "", "")
	fs.StringVar(&addr, "addr", "", "")
	fs.BoolVar(&asJSON, "json", false, "")
	fs.DurationVar(&timeout, "timeout", timeout, "")
	if ok, code := parseFlags(statusCmd, fs, args, stdout, stderr); !ok {
		return code
	}
	if file != "" && addr != "" {
		return usageError(statusCmd, stderr, "give -c FILE or --addr, not both")
	}
	if timeout <= 0 {
		return usageError(statusCmd, stderr, "--timeout must be positive")
	}
	switch {
	case file != "":
		cfg, code := loadConfig(file, stderr)
		if cfg == nil {
			return code
		}
		if !cfg.Status.Enabled() {
			fmt.Fprintf(stderr, "ipipstack status: %s has no status block, so the daemon serves no status\n", file)
			return ExitUsage
		}
		addr = dialable(cfg.Status.Listen).String()
	case addr == "":
		addr = config.DefaultStatusListen
	default:
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return usageError(statusCmd, stderr, "invalid --addr %q: want HOST:PORT", addr)
		}
	}

	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	body, err := fetch(ctx, "http://"+addr+"/status")
	if err != nil {
		fmt.Fprintf(stderr, "ipipstack status: %v\n", err)
		return ExitFailure
	}
	var st daemon.Status
	if err := json.Unmarshal(body, &st); err != nil {
		fmt.Fprintf(stderr, "ipipstack status: http://%s/status: bad JSON: %v\n", addr, err)
		return ExitFailure
	}
	if asJSON {
		stdout.Write(body)
	} else {
		writeStatus(stdout, &st, time.Now())
		writePeers(stdout, &st, time.Now()) // peers.go
		writeSockets(stdout, &st)           // sockets.go
	}
	if !st.Ready {
		fmt.Fprintf(stderr, "ipipstack status: not ready: %s\n", strings.Join(st.NotReady, "; "))
		return ExitNotReady
	}
	return ExitOK
}

// dialable turns a wildcard listen address into the loopback address of
// its family, which reaches it.
func dialable(ap netip.AddrPort) netip.AddrPort {
	switch {
	case ap.Addr() == netip.IPv4Unspecified():
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), ap.Port())
	case ap.Addr() == netip.IPv6Unspecified():
		return netip.AddrPortFrom(netip.IPv6Loopback(), ap.Port())
	}
	return ap
}

func fetch(ctx context.Context, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	// The status server is local; never go through an HTTP proxy.
	c := &http.Client{Transport: &http.Transport{Proxy: nil}}
	defer c.CloseIdleConnections()
	resp, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("is ipipstack running with a status block? %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s: %s", url, resp.Status, bytes.TrimSpace(body))
	}
	return body, nil
}

// writeStatus prints st as tables.
func writeStatus(w io.Writer, st *daemon.Status, now time.Time) {
	state := "running"
	if st.Draining {
		state = "draining"
	}
	fmt.Fprintf(w, "ipipstack %s, %s, up %s (go %s, gvisor %s)\n\n", st.Build.Version, state,
		(time.Duration(st.Uptime * float64(time.Second))).Round(time.Second), st.Build.GoVersion, st.Build.GVisor)

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TUNNEL\tTRANSPORT\tLOCAL\tPEER\tMTU\tRX PKTS\tRX BYTES\tTX PKTS\tTX BYTES\tDROPS\tLAST SEEN")
	for _, t := range st.Tunnels {
		seen := "never"
		if t.LastSeen != nil {
			seen = ago(now.Sub(*t.LastSeen))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%s\t%d\t%s\t%d\t%s\n", t.Name, t.Transport, t.Local, t.Peer, t.MTU,
			t.RxPackets, size(t.RxBytes), t.TxPackets, size(t.TxBytes), t.DropsTotal, seen)
	}
	tw.Flush()
	for _, t := range st.Tunnels {
		if t.DropsTotal == 0 {
			continue
		}
		fmt.Fprintf(w, "  drops on %s: %s\n", t.Name, leadingDrops(t.Drops))
	}

	if len(st.Services) > 0 {
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "SERVICE\tKIND\tPROTO\tLISTEN\tTARGET\tACTIVE\tTOTAL\tREJECTED\tDIAL FAIL\tTO TARGET\tFROM TARGET")
		for _, s := range st.Services {
			target := s.Target
			if target == "" {
				target = "-"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%s\t%s\n", s.Name, s.Kind, s.Protocol, s.Listen, target,
				s.Active, s.Total, s.Rejected, s.DialFailures, size(s.BytesToTarget), size(s.BytesFromTarget))
		}
		tw.Flush()
	}
	if st.TUN != nil {
		state := "up"
		if !st.TUN.Up {
			state = "down"
			if st.TUN.Error != "" {
				state += ": " + st.TUN.Error
			}
		}
		fmt.Fprintf(w, "\nTUN %s (mtu %d): %s\n", st.TUN.Name, st.TUN.MTU, state)
	}
}

// leadingDropReasons is how many drop reasons a tunnel's line names.
const leadingDropReasons = 3

// leadingDrops formats the non-zero drops by reason, most frequent first
// (then by name), naming the first leadingDropReasons and summing up the
// rest.
func leadingDrops(drops map[string]uint64) string {
	reasons := make([]string, 0, len(drops))
	for r, n := range drops {
		if n > 0 {
			reasons = append(reasons, r)
		}
	}
	sort.Slice(reasons, func(i, j int) bool {
		if a, b := drops[reasons[i]], drops[reasons[j]]; a != b {
			return a > b
		}
		return reasons[i] < reasons[j]
	})
	var parts []string
	for _, r := range reasons[:min(len(reasons), leadingDropReasons)] {
		parts = append(parts, r+"="+strconv.FormatUint(drops[r], 10))
	}
	if rest := reasons[min(len(reasons), leadingDropReasons):]; len(rest) > 0 {
		var n uint64
		for _, r := range rest {
			n += drops[r]
		}
		parts = append(parts, fmt.Sprintf("(and %d more of %s)", n, plural(len(rest), "other reason")))
	}
	return strings.Join(parts, " ")
}

// size formats a byte count with a binary unit.
func size(n uint64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatUint(n, 10) + "B"
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// ago formats a duration in the past.
func ago(d time.Duration) string {
	switch {
	case d < 0:
		return "just now"
	case d < time.Second:
		return d.Round(time.Millisecond).String() + " ago"
	}
	return d.Round(time.Second).String() + " ago"
}
