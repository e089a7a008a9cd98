package daemon

import (
	"bufio"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
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
