package stack_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/endpoint/endpointtest"
	"github.com/ipipstack/ipipstack/stack"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// TestTCPDefaults checks what TCPOptions' zero value gives gVisor's TCP:
// the exported defaults, which the daemon relies on for its own.
func TestTCPDefaults(t *testing.T) {
	oa, ob := netip.MustParseAddrPort("198.51.100.1:1"), netip.MustParseAddrPort("198.51.100.2:2")
	ta, tb := endpointtest.Pipe(oa, ob, 0)
	defer tb.Close()
	s, err := stack.New(stack.Config{Tunnels: []stack.Tunnel{{Name: "t", Local: oa, Remote: ob, Conn: ta,
		Addresses: []netip.Prefix{netip.MustParsePrefix("10.0.1.1/30")}}}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	gv := s.GVisor()
	var cc tcpip.CongestionControlOption
	if terr := gv.TransportProtocolOption(tcp.ProtocolNumber, &cc); terr != nil || string(cc) != stack.DefaultCongestionControl {
		t.Errorf("congestion control = %q (%v), want %q", cc, terr, stack.DefaultCongestionControl)
	}
	var snd tcpip.TCPSendBufferSizeRangeOption
	var rcv tcpip.TCPReceiveBufferSizeRangeOption
	gv.TransportProtocolOption(tcp.ProtocolNumber, &snd)
	gv.TransportProtocolOption(tcp.ProtocolNumber, &rcv)
	if snd.Max != stack.DefaultTCPBuffer || rcv.Max != stack.DefaultTCPBuffer {
		t.Errorf("TCP buffer maxima = %d, %d; want %d", snd.Max, rcv.Max, stack.DefaultTCPBuffer)
	}
	var rto tcpip.TCPMinRTOOption
	gv.TransportProtocolOption(tcp.ProtocolNumber, &rto)
	if time.Duration(rto) != stack.DefaultTCPMinRTO {
		t.Errorf("TCP minimum RTO = %v, want %v", time.Duration(rto), stack.DefaultTCPMinRTO)
	}
}
