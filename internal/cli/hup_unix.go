//go:build unix

package cli

import "syscall"

// sendHUP asks process pid to reload its configuration.
func sendHUP(pid int) error { return syscall.Kill(pid, syscall.SIGHUP) }
