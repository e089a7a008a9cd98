//go:build unix

package daemon

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// createPrivateFile opens path for writing as a regular file that only its
// owner can read, creating it or truncating what was there. It does not
// follow a symbolic link at path (a link planted there would make the
// daemon overwrite its target), refuses anything but a regular file, and
// sets mode 0600 on a file that already existed with another mode, through
// the descriptor so that nothing can swap the file in between. The caller
// owns the returned file.
func createPrivateFile(path string) (*os.File, error) {
	// O_NONBLOCK: opening a FIFO without a reader would block forever; it
	// is cleared again once the file is known to be regular.
	fd, err := unix.Open(path, unix.O_WRONLY|unix.O_CREAT|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0o600)
	if err != nil {
		switch {
		case errors.Is(err, unix.ELOOP):
			if fi, lerr := os.Lstat(path); lerr == nil && fi.Mode()&os.ModeSymlink != 0 {
				return nil, errors.New("is a symbolic link; refusing to follow it: remove the link or write the capture to another path")
			}
		case errors.Is(err, unix.EISDIR):
			return nil, notRegular(unix.S_IFDIR)
		case errors.Is(err, unix.ENXIO): // a FIFO without reader, a socket
			var st unix.Stat_t
			if unix.Lstat(path, &st) == nil && st.Mode&unix.S_IFMT != unix.S_IFREG {
				return nil, notRegular(uint32(st.Mode))
			}
		}
		return nil, fmt.Errorf("open: %w", err)
	}
	fail := func(op string, err error) (*os.File, error) {
		unix.Close(fd)
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fail("fstat", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return nil, notRegular(uint32(st.Mode))
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		return fail("fcntl", err)
	}
	if err := unix.Fchmod(fd, 0o600); err != nil {
		return fail("fchmod", err)
	}
	if err := unix.Ftruncate(fd, 0); err != nil {
		return fail("truncate", err)
	}
	return os.NewFile(uintptr(fd), path), nil
}

// notRegular is the error for a capture path that is not a regular file.
func notRegular(mode uint32) error {
	return fmt.Errorf("not a regular file but %s; refusing to write a capture to it: give the path of a regular file", fileType(mode))
}

// fileType names the file type bits of a stat mode.
func fileType(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFDIR:
		return "a directory"
	case unix.S_IFIFO:
		return "a FIFO"
	case unix.S_IFSOCK:
		return "a socket"
	case unix.S_IFCHR:
		return "a character device"
	case unix.S_IFBLK:
		return "a block device"
	}
	return "an unknown file type"
}
