package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"

	"github.com/ipipstack/ipipstack/demo"
)

var demoCmd = &command{
	name:    "demo",
	summary: "run two stacks in this process joined by a loopback tunnel, and check them",
	usage:   "ipipstack demo [--size MiB]",
	doc: `Bring up two stacks in this process, joined by a real UDP tunnel over
loopback, exercise them end to end and print what happened. Needs no
configuration file and no privileges. SIGINT stops it.

Exit status: 0 if every check passed, 1 if one failed.`,
	flags: `  --size MiB
        size of the TCP transfer in MiB (default 0: the demo's own default, 256)
`,
	example: `  ipipstack demo --size 64
`,
}

func init() { demoCmd.run = runDemo }

func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	var sizeMiB int64
	fs.Int64Var(&sizeMiB, "size", 0, "")
	if ok, code := parseFlags(demoCmd, fs, args, stdout, stderr); !ok {
		return code
	}
	if sizeMiB < 0 || sizeMiB > 1<<20 {
		return usageError(demoCmd, stderr, "--size must be between 0 and 1048576 MiB, not %d", sizeMiB)
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt)
	defer stop()
	if err := demo.Run(ctx, stdout, demo.Options{TransferSize: sizeMiB << 20}); err != nil {
		fmt.Fprintf(stderr, "ipipstack demo: %v\n", err)
		return ExitFailure
	}
	return ExitOK
}
