package cli

import (
	"context"
	"flag"
	"fmt"
	"io"

	"github.com/ipipstack/ipipstack/internal/buildinfo"
)

var versionCmd = &command{
	name:    "version",
	summary: "print the version, Go version and gVisor version",
	usage:   "ipipstack version",
	doc: `Print the version of this binary, the VCS revision and its time if the
build recorded them, the Go toolchain that built it and the gVisor version
it contains.

The version is the one 'make build' stamped (git describe), else the
module version of 'go install github.com/ipipstack/ipipstack/cmd/ipipstack@VERSION',
else "devel-" and the VCS revision ("-modified" with uncommitted changes)
of a 'go build' in a checkout, else "(devel)".`,
	example: `  ipipstack version
`,
}

func init() { versionCmd.run = runVersion }

func runVersion(_ context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("version", flag.ContinueOnError)
	if ok, code := parseFlags(versionCmd, fs, args, stdout, stderr); !ok {
		return code
	}
	bi := buildinfo.Get()
	fmt.Fprintf(stdout, "ipipstack %s\n", bi.Version)
	if bi.Revision != "" {
		fmt.Fprintf(stdout, "revision  %s\n", bi.Revision)
	}
	if bi.Time != "" {
		modified := ""
		if bi.Modified {
			modified = " (modified)"
		}
		fmt.Fprintf(stdout, "time      %s%s\n", bi.Time, modified)
	}
	fmt.Fprintf(stdout, "go        %s\ngvisor    %s\n", bi.GoVersion, bi.GVisor)
	return ExitOK
}
