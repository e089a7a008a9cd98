// Package demo is the main job on its embedded default: two stacks in one
// process joined by a real loopback UDP tunnel, exercised end to end.
//
// Run brings up stack A (inner 10.99.0.1, fd99::1) and stack B (10.99.0.2,
// fd99::2), each bound to a UDP port on 127.0.0.1, serves HTTP on B's inner
// address, fetches a page through the tunnel from A with a plain
// http.Client, pings B over ICMP and ICMPv6, moves TransferSize bytes over
// one TCP connection with a SHA-256 check, and prints what happened.
package demo

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ipipstack/ipipstack/endpoint/encap"
	xfer "github.com/ipipstack/ipipstack/internal/transfer"
	"github.com/ipipstack/ipipstack/stack"
)

// Options tune the demo; the zero value is the default run.
type Options struct {
	// TransferSize is the number of bytes moved over one TCP connection;
	// 0 means 256 MiB.
	TransferSize int64
}

var (
	innerA  = netip.MustParsePrefix("10.99.0.1/30")
	innerB  = netip.MustParsePrefix("10.99.0.2/30")
	innerA6 = netip.MustParsePrefix("fd99::1/64")
	innerB6 = netip.MustParsePrefix("fd99::2/64")
)

// Run brings up the two stacks, runs every check, prints what happened to
// w and returns an error naming every check that failed.
func Run(ctx context.Context, w io.Writer, opts Options) error {
	size := opts.TransferSize
	if size <= 0 {
		size = 256 << 20
	}
	a, b, err := pair()
	if err != nil {
		return err
	}
	defer a.Close()
	defer b.Close()
	sa, sb := a.Stats()[0], b.Stats()[0]
	fmt.Fprintf(w, "ipipstack demo: two userspace stacks joined by an IPIP-in-UDP (FOU) tunnel over loopback\n\n")
	fmt.Fprintf(w, "  A  outer %-16v inner %v, %v\n", sa.Local, innerA, innerA6)
	fmt.Fprintf(w, "  B  outer %-16v inner %v, %v\n", sb.Local, innerB, innerB6)
	fmt.Fprintf(w, "  tunnel MTU %d (1500 - 20 IPv4 - 8 UDP), TCP MSS %d\n\n", sa.MTU, sa.MTU-40)

	var failed []string
	check := func(name string, err error, detail string) {
		status := "ok  "
		if err != nil {
			status = "FAIL"
			failed = append(failed, name)
			detail = err.Error()
		}
		fmt.Fprintf(w, "  [%s] %-28s %s\n", status, name, detail)
	}

	stopHTTP, err := serveHTTP(b)
	if err != nil {
		return err
	}
	defer stopHTTP()

	body, err := fetch(ctx, a, "http://10.99.0.2/hello")
	check("HTTP GET through the tunnel", errIf(err, body != helloBody, "unexpected body %q", body), fmt.Sprintf("http://10.99.0.2/hello -> %q", strings.TrimSpace(body)))
	body, err = fetch(ctx, a, "http://[fd99::2]/hello")
	check("HTTP GET over inner IPv6", errIf(err, body != helloBody, "unexpected body %q", body), "http://[fd99::2]/hello")

	for _, dst := range []netip.Addr{innerB.Addr(), innerB6.Addr()} {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		rtt, err := a.Ping(pctx, dst)
		cancel()
		check("ping "+dst.String(), err, fmt.Sprintf("rtt %v", rtt.Round(time.Microsecond)))
	}

	d, err := transfer(ctx, a, b, size)
	rate := float64(size) * 8 / d.Seconds() / 1e9
	// Both ends hash every byte (about 1.6 Gbit/s per core without SHA
	// instructions): the figure bounds the hashing more than the tunnel.
	check(fmt.Sprintf("TCP %d MiB A -> B", size>>20), err,
		fmt.Sprintf("%.2f Gbit/s in %v, SHA-256 equal (hashing both ends bounds the rate; make bench measures the tunnel)", rate, d.Round(time.Millisecond)))

	fmt.Fprintf(w, "\ncounters:\n")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "  side\trx packets\trx bytes\ttx packets\ttx bytes\tdrops\t\n")
	for i, s := range []*stack.Stack{a, b} {
		st := s.Stats()[0]
		fmt.Fprintf(tw, "  %c\t%d\t%d\t%d\t%d\t%s\t\n", 'A'+i, st.RxPackets, st.RxBytes, st.TxPackets, st.TxBytes, drops(st))
		if st.RxPackets == 0 || st.TxPackets == 0 {
			failed = append(failed, fmt.Sprintf("counters of %c did not move", 'A'+i))
		}
	}
	tw.Flush()
	if len(failed) > 0 {
		fmt.Fprintf(w, "\nFAILED: %s\n", strings.Join(failed, "; "))
		return fmt.Errorf("demo: %d check(s) failed: %s", len(failed), strings.Join(failed, "; "))
	}
	fmt.Fprintf(w, "\nall checks passed\n")
	return nil
}

func errIf(err error, bad bool, format string, args ...any) error {
	if err != nil {
		return err
	}
	if bad {
		return fmt.Errorf(format, args...)
	}
	return nil
}

func drops(st stack.TunnelStats) string {
	var parts []string
	for r, n := range st.Drops {
		if n > 0 {
			parts = append(parts, fmt.Sprintf("%s=%d", encap.Reason(r), n))
		}
	}
	if len(parts) == 0 {
		return "0"
	}
	return strings.Join(parts, ",")
}

// pair brings up the two stacks on free loopback ports.
func pair() (a, b *stack.Stack, err error) {
	pa, err := freePort()
	if err != nil {
		return nil, nil, err
	}
	pb, err := freePort()
	if err != nil {
		return nil, nil, err
	}
	a, err = stack.New(stack.Config{Tunnels: []stack.Tunnel{{
		Name: "to-b", Local: pa, Remote: pb, Addresses: []netip.Prefix{innerA, innerA6},
	}}})
	if err != nil {
		return nil, nil, err
	}
	b, err = stack.New(stack.Config{Tunnels: []stack.Tunnel{{
		Name: "to-a", Local: pb, Remote: pa, Addresses: []netip.Prefix{innerB, innerB6},
	}}})
	if err != nil {
		a.Close()
		return nil, nil, err
	}
	return a, b, nil
}

func freePort() (netip.AddrPort, error) {
	c, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("demo: find a free UDP port: %w", err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).AddrPort(), nil
}

const helloBody = "hello from stack B, through the tunnel\n"

func serveHTTP(b *stack.Stack) (stop func(), err error) {
	mux := http.NewServeMux()
	mux.HandleFunc("/hello", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, helloBody) })
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	var lns []net.Listener
	for _, addr := range []string{"10.99.0.2:80", "[fd99::2]:80"} {
		ln, err := b.Listen("tcp", addr)
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return nil, fmt.Errorf("demo: %w", err)
		}
		lns = append(lns, ln)
		go srv.Serve(ln)
	}
	return func() { srv.Close() }, nil
}

func fetch(ctx context.Context, a *stack.Stack, url string) (string, error) {
	tr := &http.Transport{DialContext: a.DialContext}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return string(body), err
}

// transfer moves size pseudo-random bytes from a to b over one TCP
// connection and compares SHA-256 sums (internal/transfer).
func transfer(ctx context.Context, a, b *stack.Stack, size int64) (time.Duration, error) {
	ln, err := b.Listen("tcp", "10.99.0.2:5001")
	if err != nil {
		return 0, err
	}
	return xfer.Run(ctx, ln, func(ctx context.Context) (net.Conn, error) {
		return a.DialContext(ctx, "tcp", "10.99.0.2:5001")
	}, size, nil)
}
