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
	doc: `Print the module version of this binary ("(devel)" for a build from a work
tree), the VCS revision if the build recorded one, the Go toolchain that
built it and the gVisor version it contains.`,
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
	fmt.Fprintf(stdout, "go        %s\ngvisor    %s\n", bi.GoVersion, bi.GVisor)
	return ExitOK
}
