package stack

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// icmpEcho is the ping endpoint of Ping and Traceroute, connected to one
// destination: it sends echo requests, whose identifier (its port) and
// checksum gVisor fills in.
type icmpEcho struct {
	ep        tcpip.Endpoint
	wq        waiter.Queue // ep's
	transport tcpip.TransportProtocolNumber
	// payload is the echo request: its type, then zeros but for the
	// sequence number that send writes, and 32 bytes of data.
	payload []byte
}

// echoOpError returns a function that wraps an error as op's
// *net.OpError on dst ("ping", "traceroute").
func echoOpError(op string, dst netip.Addr) func(error) error {
	return func(err error) error {
		return &net.OpError{Op: op, Net: "ip", Addr: &net.IPAddr{IP: dst.AsSlice()}, Err: err}
	}
}

// echoTarget checks that the stack is open and dst valid, and returns dst
// unmapped; errors are wrapped by opErr.
func (s *Stack) echoTarget(dst netip.Addr, opErr func(error) error) (netip.Addr, error) {
	if s.isClosed() {
		return dst, opErr(ErrClosed)
	}
	dst = dst.Unmap()
	if !dst.IsValid() {
		return dst, opErr(errors.New("invalid address"))
	}
	return dst, nil
}

// openEcho opens an icmpEcho to dst (an echoTarget result), which the
// caller closes; errors are wrapped by opErr.
func (s *Stack) openEcho(dst netip.Addr, opErr func(error) error) (*icmpEcho, error) {
	e := &icmpEcho{transport: icmp.ProtocolNumber4, payload: make([]byte, 8+32)}
	e.payload[0] = uint8(header.ICMPv4Echo)
	if dst.Is6() {
		e.transport = icmp.ProtocolNumber6
		e.payload[0] = uint8(header.ICMPv6EchoRequest)
	}
	ep, terr := s.gv.NewEndpoint(e.transport, protoOf(dst), &e.wq)
	if terr != nil {
		return nil, opErr(translate("socket", terr))
	}
	if terr := ep.Connect(tcpip.FullAddress{Addr: tcpipAddr(dst)}); terr != nil {
		ep.Close()
		return nil, opErr(translate("connect", terr))
	}
	e.ep = ep
	return e, nil
}

// send writes an echo request with sequence number seq.
func (e *icmpEcho) send(seq uint16) tcpip.Error {
	binary.BigEndian.PutUint16(e.payload[6:], seq)
	var r bytes.Reader
	r.Reset(e.payload)
	_, terr := e.ep.Write(&r, tcpip.WriteOptions{})
	return terr
}

// Close closes the endpoint.
func (e *icmpEcho) Close() { e.ep.Close() }
