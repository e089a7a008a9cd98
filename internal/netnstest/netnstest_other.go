//go:build !linux

// Package netnstest gives tests throwaway Linux network namespaces. Off
// Linux there are none: every test that asks for one is skipped, so that
// the tests of portable packages build and run everywhere.
package netnstest

import (
	"errors"
	"os/exec"
	"testing"
)

// EnvPrivileged is the environment variable that CI sets to "1" on Linux.
const EnvPrivileged = "IPIPSTACK_PRIVILEGED"

const why = "netnstest: network namespaces need Linux"

// Privileged skips the test: privileged tests need Linux.
func Privileged(t testing.TB) {
	t.Helper()
	t.Skip(why)
}

// Program returns the path of the named program, or skips the test.
func Program(t testing.TB, name, pkg string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("netnstest: %s is not installed (package %s)", name, pkg)
	}
	return path
}

// NS is a network namespace; off Linux none is ever made.
type NS struct{}

// New skips the test.
func New(t testing.TB) *NS {
	t.Helper()
	t.Skip(why)
	return nil
}

// Name returns "".
func (*NS) Name() string { return "" }

// Command returns a command that fails: there is no namespace to run in.
func (*NS) Command(cmd ...string) *exec.Cmd { return exec.Command("false") }

// Run skips the test.
func (*NS) Run(t testing.TB, cmd ...string) string {
	t.Helper()
	t.Skip(why)
	return ""
}

// Do fails: there is no namespace to enter.
func (*NS) Do(fn func() error) error { return errors.New(why) }
