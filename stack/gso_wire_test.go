//go:build linux

package stack_test

import (
	"encoding/binary"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/stack"
	"golang.org/x/sys/unix"
)

// TestUDPGSOOnTheWire sends a UDP-transport tunnel's TCP transfer across a
// veth pair with GSO and GRO on, and checks on the receiving veth that no
// datagram on the wire exceeds the 1500-byte outer MTU. The capture asks
// for virtio-net headers (PACKET_VNET_HDR): the kernel may carry a
// UDP_SEGMENT send as one GSO packet as far as the veth, and the header
// says the size of the datagrams it stands for.
func TestUDPGSOOnTheWire(t *testing.T) {
	rawPrivileged(t)
	n := rawNewNet(t)
	ta := stack.Tunnel{Name: "to-b", Local: netip.AddrPortFrom(rawOuterA4, 4700), Remote: netip.AddrPortFrom(rawOuterB4, 4701),
		Addresses: []netip.Prefix{addrA, addrA6}}
	tb := stack.Tunnel{Name: "to-a", Local: netip.AddrPortFrom(rawOuterB4, 4701), Remote: netip.AddrPortFrom(rawOuterA4, 4700),
		Addresses: []netip.Prefix{addrB, addrB6}}
	start := func(ns *rawNS, tun stack.Tunnel) *stack.Stack {
		var s *stack.Stack
		if err := ns.do(func() (err error) {
			s, err = stack.New(stack.Config{Tunnels: []stack.Tunnel{tun}})
			return err
		}); err != nil {
			t.Fatalf("stack in %s: %v", ns.name, err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	a, b := start(n.a, ta), start(n.b, tb)
	if a.Endpoint("to-b").GSOMaxSize() == 0 {
		t.Fatal("GSO is off on the sender; this test is about GSO")
	}
	capt := startVnetCapture(t, n.b, "vB")
	transfer(t, a, b, "10.99.0.2:5001", 8<<20)
	transfer(t, b, a, "[fd99::1]:5002", 2<<20)
	frames := capt.stop(t)

	var datagrams, full, gsoFrames int
	for _, f := range frames {
		// Ethernet, then IPv4 carrying UDP between the outer addresses.
		if len(f.eth) < 14+20+8 || binary.BigEndian.Uint16(f.eth[12:]) != unix.ETH_P_IP || f.eth[14+9] != unix.IPPROTO_UDP {
			continue
		}
		ip := f.eth[14:]
		ihl := int(ip[0]&0xf) * 4
		udpHdr := ihl + 8
		if f.gsoSize == 0 {
			datagrams++
			if l := int(binary.BigEndian.Uint16(ip[2:])); l > 1500 {
				t.Errorf("an outer datagram of %d bytes on the wire, above the 1500-byte MTU", l)
			} else if l >= 1400 {
				full++
			}
			continue
		}
		// A GSO packet: it leaves as datagrams of gsoSize payload bytes.
		gsoFrames++
		if l := udpHdr + f.gsoSize; l > 1500 {
			t.Errorf("a GSO packet cut into %d-byte datagrams, above the 1500-byte MTU", l)
		}
		segs := (f.size - 14 - udpHdr + f.gsoSize - 1) / f.gsoSize
		datagrams += segs
		full += segs - 1
	}
	t.Logf("%d frames captured: %d datagrams, %d of 1400 bytes or more, %d GSO packets", len(frames), datagrams, full, gsoFrames)
	if full < (8<<20)/1500/2 {
		t.Errorf("only %d full-size datagrams for an 8 MiB transfer: the capture saw too little to judge", full)
	}
}

type vnetFrame struct {
	gsoSize int    // virtio-net gso_size: payload bytes per datagram, 0 for one datagram
	size    int    // the frame's length after the virtio-net header
	eth     []byte // the first bytes of the frame, Ethernet header on
}

type vnetCapture struct {
	fd     int
	done   chan struct{}
	quit   chan struct{}
	mu     sync.Mutex
	frames []vnetFrame
}

// startVnetCapture records the frames that arrive on dev in ns, each with
// its virtio-net header.
func startVnetCapture(t *testing.T, ns *rawNS, dev string) *vnetCapture {
	t.Helper()
	c := &vnetCapture{fd: -1, done: make(chan struct{}), quit: make(chan struct{})}
	err := ns.do(func() error {
		ifi, err := net.InterfaceByName(dev)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(rawHtons(unix.ETH_P_ALL)))
		if err != nil {
			return err
		}
		c.fd = fd
		if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_VNET_HDR, 1); err != nil {
			return err
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 32<<20); err != nil {
			return err
		}
		tv := unix.NsecToTimeval(int64(20 * time.Millisecond))
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: rawHtons(unix.ETH_P_ALL), Ifindex: ifi.Index})
	})
	if err != nil {
		if c.fd >= 0 {
			unix.Close(c.fd)
		}
		t.Fatalf("capture on %s: %v", dev, err)
	}
	go func() {
		defer close(c.done)
		buf := make([]byte, 1<<17)
		for {
			select {
			case <-c.quit:
				return
			default:
			}
			n, from, err := unix.Recvfrom(c.fd, buf, 0)
			if err != nil || n < 10 {
				continue
			}
			if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
				continue
			}
			// struct virtio_net_hdr: flags, gso_type, hdr_len, gso_size,
			// csum_start, csum_offset, in host (little-endian) order.
			f := vnetFrame{size: n - 10, eth: append([]byte(nil), buf[10:min(n, 10+128)]...)}
			if buf[1] != 0 { // gso_type != VIRTIO_NET_HDR_GSO_NONE
				f.gsoSize = int(binary.LittleEndian.Uint16(buf[4:]))
			}
			c.mu.Lock()
			c.frames = append(c.frames, f)
			c.mu.Unlock()
		}
	}()
	t.Cleanup(func() { c.stop(t) })
	return c
}

func (c *vnetCapture) stop(t *testing.T) []vnetFrame {
	select {
	case <-c.quit:
	default:
		close(c.quit)
		<-c.done
		unix.Close(c.fd)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.frames
}
