package stack

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// Ping sends ICMP (or ICMPv6) echo requests to dst, one a second, until a
// reply comes back or ctx ends, and returns the round-trip time of the
// first reply. Without a deadline on ctx it gives up after 10 seconds.
func (s *Stack) Ping(ctx context.Context, dst netip.Addr) (time.Duration, error) {
	opErr := func(err error) error {
		return &net.OpError{Op: "ping", Net: "ip", Addr: &net.IPAddr{IP: dst.AsSlice()}, Err: err}
	}
	if s.isClosed() {
		return 0, opErr(ErrClosed)
	}
	dst = dst.Unmap()
	if !dst.IsValid() {
		return 0, opErr(errors.New("invalid address"))
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
	}
	proto := protoOf(dst)
	transport, echo, reply := icmp.ProtocolNumber4, uint8(header.ICMPv4Echo), uint8(header.ICMPv4EchoReply)
	if dst.Is6() {
		transport, echo, reply = icmp.ProtocolNumber6, uint8(header.ICMPv6EchoRequest), uint8(header.ICMPv6EchoReply)
	}
	var wq waiter.Queue
	ep, terr := s.gv.NewEndpoint(transport, proto, &wq)
	if terr != nil {
		return 0, opErr(translate("socket", terr))
	}
	defer ep.Close()
	if terr := ep.Connect(tcpip.FullAddress{Addr: tcpipAddr(dst)}); terr != nil {
		return 0, opErr(translate("connect", terr))
	}
	entry, readable := waiter.NewChannelEntry(waiter.ReadableEvents)
	wq.EventRegister(&entry)
	defer wq.EventUnregister(&entry)

	// The ping endpoint fills in the identifier and the checksum.
	payload := make([]byte, 8+32)
	payload[0] = echo
	sent := map[uint16]time.Time{}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var buf bytes.Buffer
	for seq := uint16(1); ; {
		binary.BigEndian.PutUint16(payload[6:], seq)
		var r bytes.Reader
		r.Reset(payload)
		if _, terr := ep.Write(&r, tcpip.WriteOptions{}); terr != nil {
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
				_, terr := ep.Read(&buf, tcpip.ReadOptions{})
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
