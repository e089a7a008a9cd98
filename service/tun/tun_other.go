//go:build !linux

package tun

import (
	"context"
	"errors"

	"github.com/ipipstack/ipipstack/stack"
)

// Start returns an error: TUN mode is implemented for Linux only.
func Start(ctx context.Context, s *stack.Stack, opts Options) (*Device, error) {
	return nil, errors.New("tun: TUN mode is only supported on Linux")
}
