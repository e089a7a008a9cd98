//go:build !unix

package cli

import "errors"

// sendHUP fails: there are no signals to send here; the status block's
// POST /reload does the same.
func sendHUP(pid int) error {
	return errors.New("--pid needs a Unix system (SIGHUP); reload through the status block's /reload instead")
}
