package stack_test

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/endpoint"
	"github.com/ipipstack/ipipstack/internal/pkttest"
	"github.com/ipipstack/ipipstack/stack"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
)

// datagramLog records a copy of every datagram a transport writes.
type datagramLog struct {
	endpoint.Transport
	mu sync.Mutex
	d  [][]byte
}

// WriteBatch implements endpoint.Transport.WriteBatch.
func (l *datagramLog) WriteBatch(msgs []endpoint.Message) (int, error) {
	l.mu.Lock()
	for i := range msgs {
		var b []byte
		for _, s := range msgs[i].Buffers {
			b = append(b, s...)
		}
		l.d = append(l.d, b)
	}
	l.mu.Unlock()
	return l.Transport.WriteBatch(msgs)
}

func (l *datagramLog) take() [][]byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	d := l.d
	l.d = nil
	return d
}

// TestFragmentsWithoutDF pings from a stack whose tunnel MTU is 9000 to
// one whose MTU is 1472 with a 3000-byte echo request that has DF set. The
// echo reply is too big for the replier's tunnel and leaves as fragments;
// gVisor copies the request's DF into the reply and then into every
// fragment. A fragment must not carry DF (Linux sends none), so every
// fragment on the wire must have DF clear and a valid header checksum.
func TestFragmentsWithoutDF(t *testing.T) {
	wire := &datagramLog{}
	p := newPair(t, "127.0.0.1", func(side int, tun *stack.Tunnel) {
		if side == 0 {
			tun.MTU = 9000
			return
		}
		tun.Wrap = func(tr endpoint.Transport) endpoint.Transport { wire.Transport = tr; return wire }
	})
	const size = 3000 // IP total length of the request and the reply
	ep := gvEndpoint(t, p.a, icmp.ProtocolNumber4, addrB.Addr())
	defer ep.Close()
	if terr := ep.SetSockOptInt(tcpip.MTUDiscoverOption, int(tcpip.PMTUDiscoveryDo)); terr != nil {
		t.Fatal(terr)
	}
	if terr := ep.Connect(tcpip.FullAddress{Addr: tcpip.AddrFrom4(addrB.Addr().As4())}); terr != nil {
		t.Fatal(terr)
	}
	echo := make([]byte, size-header.IPv4MinimumSize)
	echo[0] = byte(header.ICMPv4Echo)
	binary.BigEndian.PutUint16(echo[6:], 1)
	for i := 8; i < len(echo); i++ {
		echo[i] = byte(i)
	}
	wire.take()
	if _, terr := ep.Write(bytes.NewReader(echo), tcpip.WriteOptions{}); terr != nil {
		t.Fatal(terr)
	}
	var reply bytes.Buffer
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, terr := ep.Read(&reply, tcpip.ReadOptions{}); terr == nil {
			break
		} else if _, ok := terr.(*tcpip.ErrWouldBlock); !ok {
			t.Fatal(terr)
		}
		if time.Now().After(deadline) {
			t.Fatal("no echo reply within 5 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got := reply.Bytes(); len(got) != len(echo) || got[0] != byte(header.ICMPv4EchoReply) || !bytes.Equal(got[8:], echo[8:]) {
		t.Fatalf("echo reply of %d bytes, type %d; want %d bytes, type 0, the request's data", len(got), got[0], len(echo))
	}
	frags, total := 0, 0
	for _, d := range wire.take() {
		if len(d) < header.IPv4MinimumSize || d[0]>>4 != 4 || d[9] != uint8(header.ICMPv4ProtocolNumber) {
			continue
		}
		h := header.IPv4(d)
		if !h.More() && h.FragmentOffset() == 0 {
			continue
		}
		frags++
		total += len(d) - int(h.HeaderLength())
		if h.Flags()&header.IPv4FlagDontFragment != 0 {
			t.Errorf("fragment at offset %d (MF %v) carries DF: flags/offset %#04x", h.FragmentOffset(), h.More(), binary.BigEndian.Uint16(d[6:]))
		}
		if c := pkttest.Checksum(d[:h.HeaderLength()], 0); c != 0 {
			t.Errorf("fragment at offset %d: header checksum does not verify (% x)", h.FragmentOffset(), d[:h.HeaderLength()])
		}
		if netip.AddrFrom4(h.SourceAddress().As4()) != addrB.Addr() {
			t.Errorf("fragment from %v, want %v", h.SourceAddress(), addrB.Addr())
		}
	}
	// 2980 bytes of ICMP at 1448 per fragment (1472 - 20, rounded down
	// to a multiple of 8): 3 fragments.
	if frags != 3 || total != size-header.IPv4MinimumSize {
		t.Errorf("%d fragments with %d bytes of reply on the wire, want 3 with %d", frags, total, size-header.IPv4MinimumSize)
	}
}
