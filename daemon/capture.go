package daemon

import (
	"bufio"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// captureFlushInterval bounds how stale a capture file on disk may be while
// the daemon runs, so that `tshark -r` on a live file shows recent packets.
const captureFlushInterval = time.Second

// captureFile is the io.Writer given to stack.Tunnel.Capture: gVisor's
// sniffer writes one pcap record per Write, from many goroutines and
// without synchronization, and panics if Write fails. captureFile
// serializes the writes, buffers them, never returns an error (a write
// failure is logged once and capture stops) and discards writes after
// Close.
type captureFile struct {
	path string
	log  *slog.Logger
	stop chan struct{}
	done chan struct{}

	mu sync.Mutex
	// The fields below are guarded by mu.
	f       *os.File
	bw      *bufio.Writer
	failed  bool
	closed  bool
	records uint64
}

// openCapture creates (or truncates) the pcap file at path and starts its
// flusher. The file is readable by its owner only: it holds the traffic.
func openCapture(path string, log *slog.Logger) (*captureFile, error) {
	f, err := createPrivateFile(path)
	if err != nil {
		return nil, fmt.Errorf("daemon: capture %s: %w", path, err)
	}
	c := &captureFile{
		path: path,
		log:  log,
		f:    f,
		bw:   bufio.NewWriterSize(f, 256<<10),
		stop: make(chan struct{}),
		done: make(chan struct{}),
	}
	go c.flushLoop()
	return c, nil
}

// Write implements io.Writer. It always reports success.
func (c *captureFile) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.failed {
		return len(p), nil
	}
	if _, err := c.bw.Write(p); err != nil {
		c.fail(err)
		return len(p), nil
	}
	c.records++
	return len(p), nil
}

// fail stops capturing after an error. c.mu must be held.
func (c *captureFile) fail(err error) {
	c.failed = true
	c.log.Error("capture failed; no more packets will be written", "file", c.path, "err", err)
}

func (c *captureFile) flushLoop() {
	defer close(c.done)
	tick := time.NewTicker(captureFlushInterval)
	defer tick.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-tick.C:
			c.mu.Lock()
			if !c.closed && !c.failed {
				if err := c.bw.Flush(); err != nil {
					c.fail(err)
				}
			}
			c.mu.Unlock()
		}
	}
}

// Close flushes and closes the file. Writes after Close are discarded. It
// returns the number of records (packets, plus the file header) written.
func (c *captureFile) Close() (uint64, error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return c.records, nil
	}
	c.closed = true
	var err error
	if !c.failed {
		err = c.bw.Flush()
	}
	if cerr := c.f.Close(); err == nil {
		err = cerr
	}
	n := c.records
	c.mu.Unlock()
	close(c.stop)
	<-c.done
	if err != nil {
		return n, fmt.Errorf("daemon: capture %s: %w", c.path, err)
	}
	return n, nil
}

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
				return nil, notRegular(st.Mode)
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
		return nil, notRegular(st.Mode)
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
