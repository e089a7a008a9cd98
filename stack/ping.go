package stack

import (
	"bytes"
	"context"
	"encoding/binary"
	"net/netip"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/waiter"
)

// Ping sends ICMP (or ICMPv6) echo requests to dst, one a second, until a
// reply comes back or ctx ends, and returns the round-trip time of the
// first reply. Without a deadline on ctx it gives up after 10 seconds.
func (s *Stack) Ping(ctx context.Context, dst netip.Addr) (time.Duration, error) {
	opErr := echoOpError("ping", dst)
	dst, err := s.echoTarget(dst, opErr)
	if err != nil {
		return 0, err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
	}
	reply := uint8(header.ICMPv4EchoReply)
	if dst.Is6() {
		reply = uint8(header.ICMPv6EchoReply)
	}
	e, err := s.openEcho(dst, opErr)
	if err != nil {
		return 0, err
	}
	defer e.Close()
	entry, readable := waiter.NewChannelEntry(waiter.ReadableEvents)
	e.wq.EventRegister(&entry)
	defer e.wq.EventUnregister(&entry)

	sent := map[uint16]time.Time{}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var buf bytes.Buffer
	for seq := uint16(1); ; {
		if terr := e.send(seq); terr != nil {
			return 0, opErr(translate("sendto", terr))
		}
		sent[seq] = time.Now()
		seq++
	wait:
		for {
			select {
			case <-ctx.Done():
				return 0, opErr(ctxError(ctx.Err()))
			case <-tick.C:
				break wait
			case <-readable:
			}
			for {
				buf.Reset()
				_, terr := e.ep.Read(&buf, tcpip.ReadOptions{})
				if _, ok := terr.(*tcpip.ErrWouldBlock); ok {
					break
				}
				if terr != nil {
					return 0, opErr(translate("recvfrom", terr))
				}
				b := buf.Bytes()
				if len(b) < 8 || b[0] != reply {
					continue
				}
				if t0, ok := sent[binary.BigEndian.Uint16(b[6:])]; ok {
					return time.Since(t0), nil
				}
			}
		}
	}
}
