// Package cli is the ipipstack command line: subcommands, flags, logging
// and signals. cmd/ipipstack only calls [Main]; everything here is
// importable and testable in process.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
)

// Exit statuses of the ipipstack command.
const (
	ExitOK      = 0 // success
	ExitFailure = 1 // runtime failure
	ExitUsage   = 2 // usage or configuration error
	// ExitNotReady: `ipipstack status` reached the daemon, which is not
	// ready (a keepalive peer is not up, or it is draining).
	ExitNotReady = 3
)

// command is one subcommand.
type command struct {
	name    string
	summary string // one line, for the top-level help
	usage   string // the usage line after "Usage: "
	doc     string // what it does, a paragraph or two
	flags   string // the flag table of the help
	example string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) int
}

// commands lists the subcommands in help order. It is filled in init to
// break the cycle through helpCmd.
var commands []*command

func init() {
	commands = []*command{runCmd, checkCmd, statusCmd, reloadCmd, versionCmd, demoCmd, ncCmd}
}

func lookup(name string) *command {
	for _, c := range commands {
		if c.name == name {
			return c
		}
	}
	return nil
}

const topDoc = `ipipstack is a userspace IP-in-IP tunnel stack (gVisor netstack). It brings
up tunnels to peers, rootless over UDP or as real IPIP over raw sockets, and
exposes the stack to the host through port forwards, reverse forwards, a
SOCKS5 proxy and, with CAP_NET_ADMIN, a TUN device.`

const exitDoc = `Exit status:
  0  success
  1  runtime failure: a port or tunnel socket that cannot be opened, an
     unreachable status server, a failed demo check, an unclean shutdown
  2  usage or configuration error: unknown command or flag, missing
     argument, invalid configuration file
  3  status only: the daemon answers but is not ready (a tunnel with a
     keepalive has no live peer, or it is shutting down)`

// Main runs the command line args (without the program name) and returns
// the exit status. Cancelling ctx stops a running daemon or demo as SIGINT
// does.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		writeTopHelp(stderr)
		return ExitUsage
	}
	name, rest := args[0], args[1:]
	switch name {
	case "-h", "-help", "--help", "help":
		if name == "help" && len(rest) > 0 && !isHelpFlag(rest[0]) {
			c := lookup(rest[0])
			if c == nil {
				fmt.Fprintf(stderr, "ipipstack help: unknown command %q%s\n\n", rest[0], commandHint(rest[0]))
				writeTopHelp(stderr)
				return ExitUsage
			}
			writeHelp(stdout, c)
			return ExitOK
		}
		writeTopHelp(stdout)
		return ExitOK
	case "-v", "-version", "--version":
		name = "version"
	}
	c := lookup(name)
	if c == nil {
		if strings.HasPrefix(name, "-") {
			fmt.Fprintf(stderr, "ipipstack: unknown flag %s (flags go after the command)\n\n", name)
		} else {
			fmt.Fprintf(stderr, "ipipstack: unknown command %q%s\n\n", name, commandHint(name))
		}
		writeTopHelp(stderr)
		return ExitUsage
	}
	return c.run(ctx, rest, stdout, stderr)
}

func writeTopHelp(w io.Writer) {
	fmt.Fprintf(w, "%s\n\nUsage: ipipstack <command> [flags]\n\nCommands:\n", topDoc)
	for _, c := range commands {
		fmt.Fprintf(w, "  %-10s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, "  %-10s %s\n", "help", "show the help of a command (or --help after it)")
	fmt.Fprintf(w, "\nRun 'ipipstack <command> --help' for its flags.\n\n%s\n\n", exitDoc)
	fmt.Fprint(w, `Examples:
  ipipstack check -c examples/two-peers-a.hcl
  ipipstack run -c examples/two-peers-a.hcl --log-level debug
  ipipstack status --addr 127.0.0.1:9100
  ipipstack ping -c examples/two-peers-a.hcl 10.99.0.2
`)
}

func writeHelp(w io.Writer, c *command) {
	fmt.Fprintf(w, "Usage: %s\n\n%s\n", c.usage, c.doc)
	if c.flags != "" {
		fmt.Fprintf(w, "\nFlags:\n%s", c.flags)
	}
	fmt.Fprintf(w, "  -h, --help\n        show this help\n")
	fmt.Fprintf(w, "\nExample:\n%s", c.example)
}

// parseFlags parses args into fs. It returns ok=false with the exit status
// when the command must stop: help was asked for (printed on stdout, exit
// 0), or the flags or arguments are wrong (message and usage on stderr,
// exit 2). Commands take no positional arguments.
func parseFlags(c *command, fs *flag.FlagSet, args []string, stdout, stderr io.Writer) (ok bool, code int) {
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	err := fs.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		writeHelp(stdout, c)
		return false, ExitOK
	case err != nil:
		return false, usageError(c, stderr, "%v%s", err, flagHint(fs, err))
	case fs.NArg() > 0:
		return false, usageError(c, stderr, "unexpected argument %q%s", fs.Arg(0), argHint(c, fs, fs.Arg(0)))
	}
	return true, 0
}

// isHelpFlag reports whether arg asks for help.
func isHelpFlag(arg string) bool {
	return arg == "-h" || arg == "-help" || arg == "--help"
}

// commandHint is ": did you mean "x"?" for a mistyped command, or "".
func commandHint(name string) string {
	if s := suggest(name, commandNames()); s != "" {
		return fmt.Sprintf(": did you mean %q?", s)
	}
	return ""
}

// usageError prints a usage problem and the command's usage on stderr and
// returns ExitUsage.
func usageError(c *command, stderr io.Writer, format string, args ...any) int {
	fmt.Fprintf(stderr, "ipipstack %s: %s\n\nUsage: %s\nRun 'ipipstack %s --help' for details.\n",
		c.name, fmt.Sprintf(format, args...), c.usage, c.name)
	return ExitUsage
}

// isTerminal reports whether w is a character device (a terminal) and the
// user did not ask for NO_COLOR.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok || os.Getenv("NO_COLOR") != "" || os.Getenv("TERM") == "dumb" {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
