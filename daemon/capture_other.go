//go:build !unix

package daemon

import (
	"errors"
	"fmt"
	"os"
)

// createPrivateFile opens path for writing as a regular file that only its
// owner can read, creating it or truncating what was there. Without
// O_NOFOLLOW it checks first that path is not a symbolic link or another
// kind of file; see capture_unix.go for the race-free version.
func createPrivateFile(path string) (*os.File, error) {
	if fi, err := os.Lstat(path); err == nil {
		switch {
		case fi.Mode()&os.ModeSymlink != 0:
			return nil, errors.New("is a symbolic link; refusing to follow it: remove the link or write the capture to another path")
		case !fi.Mode().IsRegular():
			return nil, fmt.Errorf("not a regular file but %v; refusing to write a capture to it: give the path of a regular file", fi.Mode().Type())
		}
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open: %w", err)
	}
	return f, nil
}
