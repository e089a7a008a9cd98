//go:build linux

package stack_test

import (
	"bytes"
	"net/netip"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/endpoint/encap"
	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// ECN codepoints (RFC 3168 §5).
const (
	notECT = 0b00
	ect0   = 0b10
	ce     = 0b11
)

// TestECNDecapsulation sends FOU datagrams to a stack from a real UDP
// socket whose outer ToS carries an ECN mark, with inner IPv4 and IPv6
// UDP packets of their own ECN field, and reads the inner packets' ToS /
// traffic class as the stack's UDP socket receives them (IP_RECVTOS,
// IPV6_RECVTCLASS). Decapsulation follows RFC 6040 §4.2: an outer CE
// becomes CE on an ECN-capable inner packet; on a Not-ECT inner packet the
// packet is dropped (ECNCongestion).
func TestECNDecapsulation(t *testing.T) {
	tg := newTarget(t, netip.Addr{})
	tests := []struct {
		name            string
		outer, inner    uint8
		want            uint8
		dropped, inner6 bool
	}{
		{"v4 CE over ECT(0)", ce, ect0, ce, false, false},
		{"v6 CE over ECT(0)", ce, ect0, ce, false, true},
		{"v4 ECT(0) over ECT(0)", ect0, ect0, ect0, false, false},
		{"v4 not-ECT over ECT(0)", notECT, ect0, ect0, false, false},
		{"v4 CE over not-ECT", ce, notECT, 0, true, false},
		{"v6 CE over not-ECT", ce, notECT, 0, true, true},
	}
	rc, err := tg.peer.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			port := uint16(9000 + i)
			dst, src := addrA.Addr(), addrB.Addr()
			proto := ipv4.ProtocolNumber
			if tt.inner6 {
				dst, src, proto = addrA6.Addr(), addrB6.Addr(), ipv6.ProtocolNumber
			}
			var wq waiter.Queue
			ep, terr := tg.s.GVisor().NewEndpoint(udp.ProtocolNumber, proto, &wq)
			if terr != nil {
				t.Fatal(terr)
			}
			defer ep.Close()
			ep.SocketOptions().SetReceiveTOS(true)
			ep.SocketOptions().SetReceiveTClass(true)
			if terr := ep.Bind(tcpip.FullAddress{Addr: tcpip.AddrFromSlice(dst.AsSlice()), Port: port}); terr != nil {
				t.Fatal(terr)
			}
			entry, readable := waiter.NewChannelEntry(waiter.ReadableEvents)
			wq.EventRegister(&entry)
			defer wq.EventUnregister(&entry)

			var pkt []byte
			if tt.inner6 {
				pkt = ipv6UDP(src, dst, 1234, port, []byte("ecn"))
				pkt[1] |= tt.inner << 4 // traffic class bits 0-1 are bits 4-5 of byte 1
			} else {
				pkt = ipv4UDP(src, dst, 1234, port, []byte("ecn"))
				pkt[1] = tt.inner
				refix(pkt)
			}
			var serr error
			rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_TOS, int(tt.outer)) })
			if serr != nil {
				t.Fatalf("IP_TOS %#x: %v", tt.outer, serr)
			}
			drops := tg.s.Stats()[0].Drops[encap.ECNCongestion]
			tg.send(t, tg.peer, pkt)

			if tt.dropped {
				waitFor(t, "an ECNCongestion drop", func() bool { return tg.s.Stats()[0].Drops[encap.ECNCongestion] == drops+1 })
				return
			}
			var buf bytes.Buffer
			var res tcpip.ReadResult
			for deadline := time.After(5 * time.Second); ; {
				res, terr = ep.Read(&buf, tcpip.ReadOptions{NeedRemoteAddr: true})
				if _, ok := terr.(*tcpip.ErrWouldBlock); !ok {
					break
				}
				select {
				case <-readable:
				case <-deadline:
					t.Fatal("nothing received in 5 s")
				}
			}
			if terr != nil {
				t.Fatal(terr)
			}
			if buf.String() != "ecn" {
				t.Fatalf("received %q from %v", buf.String(), res.RemoteAddr)
			}
			cm := res.ControlMessages
			got, has := cm.TOS, cm.HasTOS
			if tt.inner6 {
				got, has = uint8(cm.TClass), cm.HasTClass
			}
			if !has {
				t.Fatalf("no ToS / traffic class control message: %+v", cm)
			}
			if got&3 != tt.want {
				t.Errorf("inner ECN field = %02b (ToS %#x), want %02b", got&3, got, tt.want)
			}
			if n := tg.s.Stats()[0].Drops[encap.ECNCongestion]; n != drops {
				t.Errorf("%d ECNCongestion drops", n-drops)
			}
		})
	}
}
