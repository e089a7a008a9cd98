package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ipipstack/ipipstack/service/socks5"
)

var ncCmd = &command{
	name:    "nc",
	summary: "connect stdin and stdout to an address inside the tunnels",
	usage:   "ipipstack nc [-c FILE | --socks5 HOST:PORT] [--timeout 10s] ADDR PORT",
	doc: `Connect stdin and stdout to TCP port PORT of ADDR inside the tunnels, through
the SOCKS5 proxy of a running ipipstack: the first socks5 block of FILE (with
its username and password, if it has them), or --socks5. ADDR is an IP
address, or a name that the daemon's SOCKS5 proxy resolves.

Made for ssh's ProxyCommand. End of stdin shuts down the sending half of the
connection (the remote end reads EOF) and the output goes on; when the remote
end closes, nc exits 0 once all it sent is on stdout.

Exit status: 0 when the remote end closed the connection, 1 if the proxy
cannot be reached or refuses the connection (its reply is printed), or on
an I/O error, 2 on a usage error or if FILE is invalid or has no socks5
block. Flags go before ADDR.`,
	flags: `  -c, --config FILE
        use the first socks5 block of this configuration file
  --socks5 HOST:PORT
        address of the SOCKS5 proxy (no authentication)
  --timeout DURATION
        give up connecting after this long (default 10s); no limit once connected
`,
	example: `  ipipstack nc -c examples/two-peers-a.hcl 10.99.0.2 80 < request.txt
  printf 'GET / HTTP/1.0\r\n\r\n' | ipipstack nc --socks5 127.0.0.1:1080 10.99.0.2 80
  ssh -o ProxyCommand='ipipstack nc -c /etc/ipipstack.hcl %h %p' 10.99.0.2
`,
}

func init() { ncCmd.run = runNC }

// ncStdin is what nc sends; tests replace it.
var ncStdin io.Reader = os.Stdin

func runNC(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("nc", flag.ContinueOnError)
	var (
		file, proxy string
		timeout     = 10 * time.Second
	)
	fs.StringVar(&file, "c", "", "")
	fs.StringVar(&file, "config", "", "")
	fs.StringVar(&proxy, "socks5", "", "")
	fs.DurationVar(&timeout, "timeout", timeout, "")
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	switch err := fs.Parse(args); {
	case errors.Is(err, flag.ErrHelp):
		writeHelp(stdout, ncCmd)
		return ExitOK
	case err != nil:
		return usageError(ncCmd, stderr, "%v", err)
	case fs.NArg() != 2:
		return usageError(ncCmd, stderr, "want ADDR PORT after the flags, got %d arguments", fs.NArg())
	case (file == "") == (proxy == ""):
		return usageError(ncCmd, stderr, "give -c FILE or --socks5 HOST:PORT (one of them)")
	case timeout <= 0:
		return usageError(ncCmd, stderr, "--timeout must be positive")
	}
	host := fs.Arg(0)
	port, err := strconv.ParseUint(fs.Arg(1), 10, 16)
	if err != nil || port == 0 {
		return usageError(ncCmd, stderr, "invalid PORT %q: want 1 to 65535", fs.Arg(1))
	}
	dst := socks5.Addr{Port: uint16(port)}
	if ip, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")); err == nil {
		dst.IP = ip.Unmap()
	} else if host != "" && len(host) <= 255 {
		dst.Name = host
	} else {
		return usageError(ncCmd, stderr, "invalid ADDR %q: want an IP address or a name of 1 to 255 bytes", host)
	}
	var user, pass string
	if file != "" {
		cfg, code := loadConfig(file, stderr)
		if cfg == nil {
			return code
		}
		if len(cfg.SOCKS5) == 0 {
			fmt.Fprintf(stderr, "ipipstack nc: %s has no socks5 block, so the daemon has no proxy to reach the tunnels through; add one, or give --socks5 HOST:PORT\n", file)
			return ExitUsage
		}
		s := cfg.SOCKS5[0]
		proxy = dialable(s.Listen).String()
		user, pass = s.Username, s.Password
	} else if _, _, err := net.SplitHostPort(proxy); err != nil {
		return usageError(ncCmd, stderr, "invalid --socks5 %q: want HOST:PORT", proxy)
	}

	dctx, cancel := context.WithTimeout(ctx, timeout)
	c, err := socksConnect(dctx, proxy, user, pass, dst)
	cancel()
	if err != nil {
		fmt.Fprintf(stderr, "ipipstack nc: %v\n", err)
		return ExitFailure
	}
	if err := pipe(ctx, c, ncStdin, stdout); err != nil {
		fmt.Fprintf(stderr, "ipipstack nc: %s: %v\n", dst, err)
		return ExitFailure
	}
	return ExitOK
}

// socksConnect opens a CONNECT to dst through the SOCKS5 proxy at proxy
// (RFC 1928, with RFC 1929 authentication if user is set). The returned
// conn is the bare TCP connection to the proxy, now relaying to dst.
func socksConnect(ctx context.Context, proxy, user, pass string, dst socks5.Addr) (*net.TCPConn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", proxy)
	if err != nil {
		return nil, fmt.Errorf("reaching the SOCKS5 proxy of the daemon: %w (is ipipstack running with this socks5 block?)", err)
	}
	c := nc.(*net.TCPConn)
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	fail := func(format string, args ...any) (*net.TCPConn, error) {
		c.Close()
		if ctx.Err() != nil {
			args = append(args, ctx.Err())
			format += " (%v)"
		}
		return nil, fmt.Errorf("SOCKS5 proxy %s: "+format, append([]any{proxy}, args...)...)
	}
	method := byte(socks5.MethodNoAuth)
	if user != "" {
		method = socks5.MethodUserPass
	}
	var buf [socks5.MaxRequestLen]byte
	if _, err := c.Write([]byte{socks5.Version, 1, method}); err != nil {
		return fail("sending the greeting: %v", err)
	}
	if _, err := io.ReadFull(c, buf[:2]); err != nil {
		return fail("reading its method: %v", err)
	}
	switch {
	case buf[0] != socks5.Version:
		return fail("not a SOCKS5 server (version %d)", buf[0])
	case buf[1] != method && user == "":
		return fail("it wants authentication: use -c with the file whose socks5 block has username and password")
	case buf[1] != method:
		return fail("it refused username/password authentication (method %#x)", buf[1])
	}
	if user != "" {
		b, err := socks5.AppendUserPass(buf[:0], user, pass)
		if err != nil {
			return fail("%v", err)
		}
		if _, err := c.Write(b); err != nil {
			return fail("sending the credentials: %v", err)
		}
		if _, err := io.ReadFull(c, buf[:2]); err != nil {
			return fail("reading the authentication status: %v", err)
		}
		if buf[1] != socks5.AuthSuccess {
			return fail("wrong username or password (the socks5 block of the file differs from the daemon's?)")
		}
	}
	b, err := socks5.AppendRequest(buf[:0], socks5.Request{Cmd: socks5.CmdConnect, Dst: dst})
	if err != nil {
		return fail("%v", err)
	}
	if _, err := c.Write(b); err != nil {
		return fail("sending the request: %v", err)
	}
	// Read the reply exactly, without reading past it.
	n := 0
	for need := socks5.RequestNeed(buf[:0]); need > n; need = socks5.RequestNeed(buf[:n]) {
		if need > len(buf) {
			return fail("malformed reply")
		}
		if _, err := io.ReadFull(c, buf[n:need]); err != nil {
			return fail("reading the reply: %v", err)
		}
		n = need
	}
	rep, _, _, err := socks5.ParseReply(buf[:n])
	if err != nil {
		return fail("reply: %v", err)
	}
	if rep != 0 {
		return fail("connecting to %s inside the tunnels: %v", dst, rep)
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

// pipe copies in to c and c to out until c's remote end closes. At EOF of
// in it shuts down c's sending half and keeps reading. It returns nil when
// everything the remote end sent is on out; ctx cancelled ends it early.
func pipe(ctx context.Context, c *net.TCPConn, in io.Reader, out io.Writer) error {
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	sendErr := make(chan error, 1)
	go func() {
		_, err := io.Copy(c, in)
		if err == nil {
			err = c.CloseWrite()
		}
		sendErr <- err
	}()
	if _, err := io.Copy(out, c); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("receiving: %w", err)
	}
	// The remote end closed. A send that failed before (other than
	// because the remote end is gone) is still an error; a send still
	// blocked on stdin is abandoned, as nc and ssh do.
	select {
	case err := <-sendErr:
		if err != nil && !errors.Is(err, net.ErrClosed) && !isConnReset(err) {
			return fmt.Errorf("sending: %w", err)
		}
	default:
	}
	return nil
}

// isConnReset reports whether err says the peer went away.
func isConnReset(err error) bool {
	return errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET)
}
