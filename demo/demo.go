// Package demo is the main job on its embedded default: two stacks in one
// process joined by a real loopback UDP tunnel, exercised end to end.
package demo

import (
	"context"
	"errors"
	"io"
)

// Options tune the demo; the zero value is the default run.
type Options struct {
	// TransferSize is the number of bytes moved over one TCP connection;
	// 0 means 256 MiB.
	TransferSize int64
}

// Run brings up the two stacks, runs every check, prints what happened to
// w and returns an error if any check failed.
func Run(ctx context.Context, w io.Writer, opts Options) error {
	return errors.New("demo: not implemented yet")
}
