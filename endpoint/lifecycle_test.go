package endpoint

import (
	"net/netip"
	"runtime"
	"sync"
	"testing"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// udpPacket4 builds an IPv4 UDP packet with checksum 0, as gVisor hands
// it to an endpoint with TX checksum offload: a whole datagram of payload
// bytes with DF, or, with first set, the first fragment (payload bytes
// of a datagram twice as long).
func udpPacket4(id uint16, payload int, first bool) *stack.PacketBuffer {
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{
		ReserveHeaderBytes: header.IPv4MinimumSize + header.UDPMinimumSize,
		Payload:            buffer.MakeWithData(make([]byte, payload)),
	})
	udpLen := header.UDPMinimumSize + payload
	flags := uint8(header.IPv4FlagDontFragment)
	if first {
		udpLen = 2 * udpLen
		flags = header.IPv4FlagMoreFragments
	}
	header.UDP(pkt.TransportHeader().Push(header.UDPMinimumSize)).Encode(&header.UDPFields{
		SrcPort: 1000, DstPort: 2000, Length: uint16(udpLen)})
	pkt.TransportProtocolNumber = header.UDPProtocolNumber
	ip := header.IPv4(pkt.NetworkHeader().Push(header.IPv4MinimumSize))
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(header.IPv4MinimumSize + header.UDPMinimumSize + payload),
		ID:          id,
		Flags:       flags,
		TTL:         64,
		Protocol:    uint8(header.UDPProtocolNumber),
		SrcAddr:     tcpip.AddrFrom4([4]byte{10, 99, 0, 1}),
		DstAddr:     tcpip.AddrFrom4([4]byte{10, 99, 0, 2}),
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	pkt.NetworkProtocolNumber = ipv4.ProtocolNumber
	return pkt
}

// TestCloseRacesWriters closes endpoints while a queue goroutine writes
// first fragments (which the endpoint holds until their datagram is
// complete) and packets too big for the tunnel (which start a goroutine
// sending ICMP into the stack), and while the stack attaches. Close must
// wait for the writers before it drops the held fragments, so that none
// is held after Close; under -race, the goroutines' accounting must not
// race Close's wait.
func TestCloseRacesWriters(t *testing.T) {
	const rounds = 300
	local, remote := netip.AddrPortFrom(outer4L, 4700), netip.AddrPortFrom(outer4R, 4701)
	deliver := dispatchFunc(func(*stack.PacketBuffer) {})
	leaked := 0
	for round := range rounds {
		e, err := New(Options{Transport: newMemTransport(FramingUDP, local), Remote: remote, MTU: 1400})
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		var written []*stack.PacketBuffer
		start := make(chan struct{})
		wg.Add(3)
		go func() { // the NIC's queue goroutine
			defer wg.Done()
			<-start
			for i := 0; ; i++ {
				var pkts stack.PacketBufferList
				first := udpPacket4(uint16(i), 1000, true)
				big := udpPacket4(uint16(i), 1500, false)
				written = append(written, first)
				pkts.PushBack(first)
				pkts.PushBack(big)
				_, terr := e.WritePackets(pkts)
				big.DecRef()
				if terr != nil {
					return
				}
			}
		}()
		go func() {
			defer wg.Done()
			<-start
			e.Attach(deliver)
		}()
		go func() {
			defer wg.Done()
			<-start
			for range round % 50 {
				runtime.Gosched() // a moment's delay, different each round
			}
			e.Close()
		}()
		close(start)
		wg.Wait()
		e.Wait()
		for _, pkt := range written {
			if n := pkt.ReadRefs(); n != 1 {
				leaked++ // held after Close released the others
			}
			pkt.DecRef()
		}
	}
	if leaked > 0 {
		t.Errorf("%d first fragments still held after Close in %d rounds", leaked, rounds)
	}
}
