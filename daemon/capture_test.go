package daemon

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// An existing capture file keeps none of its old permissions: it holds the
// traffic, so it ends up 0600 like a new one, and its old content is gone.
func TestCaptureExistingFileMode(t *testing.T) {
	checkGoroutines(t)
	path := filepath.Join(t.TempDir(), "old.pcap")
	if err := os.WriteFile(path, []byte("old content"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chmod(path, 0o644) // whatever the umask did
	c, err := openCapture(path, testLogger(t, nil))
	if err != nil {
		t.Fatalf("openCapture(%s) = %v", path, err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0o600 {
		t.Errorf("mode of existing capture file after openCapture = %v, want -rw-------", got)
	}
	if _, err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); len(b) != 0 {
		t.Errorf("existing capture file not truncated: %q", b)
	}
}

// A symlink at the capture path is refused, not followed: its target is
// neither truncated nor written.
func TestCaptureRefusesSymlink(t *testing.T) {
	checkGoroutines(t)
	dir := t.TempDir()
	target := filepath.Join(dir, "precious")
	want := []byte("do not overwrite me\n")
	if err := os.WriteFile(target, want, 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "cap.pcap")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	c, err := openCapture(link, testLogger(t, nil))
	if err == nil {
		c.Write([]byte("pcap header"))
		c.Close()
		t.Errorf("openCapture(symlink) = nil error, want a refusal")
	} else {
		if msg := err.Error(); !strings.Contains(msg, link) || !strings.Contains(msg, "symbolic link") {
			t.Errorf("openCapture(symlink) error = %q, want it to name %s and say it is a symbolic link", msg, link)
		}
	}
	got, _ := os.ReadFile(target)
	if !bytes.Equal(got, want) {
		t.Errorf("symlink target changed: %q, want %q", got, want)
	}
}

// Anything but a regular file is refused, without blocking on a FIFO that
// has no reader.
func TestCaptureRefusesNonRegular(t *testing.T) {
	checkGoroutines(t)
	fifo := filepath.Join(t.TempDir(), "fifo.pcap")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{fifo, t.TempDir()} {
		c, err := openCapture(path, testLogger(t, nil))
		if err == nil {
			c.Close()
			t.Errorf("openCapture(%s) = nil error, want a refusal", path)
			continue
		}
		if msg := err.Error(); !strings.Contains(msg, path) || !strings.Contains(msg, "not a regular file") {
			t.Errorf("openCapture(%s) error = %q, want it to name the path and say it is not a regular file", path, msg)
		}
	}
}
