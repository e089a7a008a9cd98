// Package transfer is the one SHA-256 transfer harness of the demo and the
// tests: it sends pseudo-random bytes over one stream connection and checks
// that the receiver got exactly those bytes (their count and SHA-256).
//
//	ln, _ := b.Listen("tcp", "10.99.0.2:5001")
//	d, err := transfer.Run(ctx, ln, func(ctx context.Context) (net.Conn, error) {
//		return a.DialContext(ctx, "tcp", "10.99.0.2:5001")
//	}, 64<<20, nil)
//
// It works with any net.Listener and net.Conn: the tunnel stack's, the
// host's, or gVisor's gonet adapters.
package transfer

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"time"
)

// DialTimeout bounds the dial of Run (ctx may end it sooner).
const DialTimeout = 10 * time.Second

// seed makes the bytes sent the same on every run, so that a failure can
// be repeated.
var seed = [32]byte{'i', 'p', 'i', 'p'}

// Run accepts one connection on ln, which it closes before returning,
// dials it with dial, and sends size pseudo-random bytes; the receiver
// hashes what it reads until EOF. If midway is not nil, it runs once half
// of the bytes are written, while the rest are written, and its error
// fails the transfer. It returns the time from the first byte written to
// the receiver's EOF.
//
// ctx bounds everything: once it is done the connection is closed, and
// if it has a deadline both ends also get it as their I/O deadline, so
// that a hang fails by itself. Errors say which side failed, or that the
// bytes differ.
func Run(ctx context.Context, ln net.Listener, dial func(context.Context) (net.Conn, error), size int64, midway func() error) (time.Duration, error) {
	defer ln.Close()
	deadline, _ := ctx.Deadline() // zero: none
	got := make(chan result, 1)
	go receive(ln, deadline, got)

	dctx, cancel := context.WithTimeout(ctx, DialTimeout)
	c, err := dial(dctx)
	cancel()
	if err != nil {
		return 0, fmt.Errorf("transfer: dial: %w", err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	c.SetDeadline(deadline)

	start := time.Now()
	h := sha256.New()
	src := io.TeeReader(io.LimitReader(rand.NewChaCha8(seed), size), h)
	changed := make(chan error, 1)
	if midway == nil {
		changed <- nil
	} else {
		if _, err := io.CopyN(c, src, size/2); err != nil {
			return 0, fmt.Errorf("transfer: sender: %w", err)
		}
		go func() { changed <- midway() }()
	}
	if _, err := io.Copy(c, src); err != nil {
		return 0, fmt.Errorf("transfer: sender: %w", err)
	}
	c.Close()
	if err := <-changed; err != nil {
		return 0, fmt.Errorf("transfer: midway: %w", err)
	}
	var r result
	select {
	case r = <-got:
	case <-ctx.Done():
		return 0, fmt.Errorf("transfer: waiting for the receiver: %w", ctx.Err())
	}
	d := time.Since(start)
	if r.err != nil {
		return d, fmt.Errorf("transfer: receiver: %w", r.err)
	}
	if sum := h.Sum(nil); r.n != size || !bytes.Equal(r.sum[:], sum) {
		return d, fmt.Errorf("transfer: SHA-256 mismatch: received %d bytes with SHA-256 %x, sent %d with %x", r.n, r.sum, size, sum)
	}
	return d, nil
}

// result is what the receiver read.
type result struct {
	sum [sha256.Size]byte
	n   int64
	err error
}

// receive accepts one connection on ln and hashes what it reads until EOF.
func receive(ln net.Listener, deadline time.Time, got chan<- result) {
	c, err := ln.Accept()
	if err != nil {
		got <- result{err: err}
		return
	}
	defer c.Close()
	c.SetDeadline(deadline)
	h := sha256.New()
	var r result
	r.n, r.err = io.Copy(h, c)
	copy(r.sum[:], h.Sum(nil))
	got <- r
}
