//go:build linux && interop

package interop

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/stack"
	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// capture records the packets of one device of the namespace, from an
// AF_PACKET socket (SOCK_DGRAM: the IP packet without its Ethernet header).
type capture struct {
	fd   int
	done chan struct{}

	mu      sync.Mutex // guards packets
	packets []packet
}

// packet is one captured IP packet.
type packet struct {
	outgoing bool // sent by the namespace (our stack), not the VM
	data     []byte
}

// startCapture opens the capture on dev inside the test's namespace; it
// stops when the test ends.
func (e *env) startCapture(t *testing.T, dev string) *capture {
	t.Helper()
	c := &capture{fd: -1, done: make(chan struct{})}
	err := e.ns.Do(func() error {
		ifi, err := net.InterfaceByName(dev)
		if err != nil {
			return err
		}
		proto := int(htons(unix.ETH_P_ALL))
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, proto)
		if err != nil {
			return fmt.Errorf("AF_PACKET socket: %w", err)
		}
		c.fd = fd
		tv := unix.NsecToTimeval(int64(20 * time.Millisecond))
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return fmt.Errorf("SO_RCVTIMEO: %w", err)
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index})
	})
	if err != nil {
		if c.fd >= 0 {
			unix.Close(c.fd)
		}
		t.Fatalf("capture on %s in %s: %v", dev, e.ns.Name(), err)
	}
	stop := make(chan struct{})
	go func() {
		defer close(c.done)
		buf := make([]byte, 65536)
		for {
			select {
			case <-stop:
				return
			default:
			}
			n, from, err := unix.Recvfrom(c.fd, buf, 0)
			if err != nil {
				continue // EAGAIN every 20 ms, to look at stop
			}
			ll, ok := from.(*unix.SockaddrLinklayer)
			if !ok {
				continue
			}
			c.mu.Lock()
			c.packets = append(c.packets, packet{outgoing: ll.Pkttype == unix.PACKET_OUTGOING, data: append([]byte(nil), buf[:n]...)})
			c.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		close(stop)
		<-c.done
		unix.Close(c.fd)
	})
	return c
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// snapshot returns the packets captured so far.
func (c *capture) snapshot() []packet {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]packet(nil), c.packets...)
}

// outer describes an outer packet by the fields Linux's tunnel sets, with
// those that depend on the inner packet stated relative to it, so that the
// kernel's packets and ours can be compared field by field.
type outer struct {
	Version int
	// IPv4: DSCP is the ToS without ECN; IPv6: the traffic class's.
	DSCP uint8
	// ECN is "copied" when the outer ECN field equals the inner one.
	ECN string
	// TTL is "inherited" when the outer TTL / hop limit equals the
	// inner one, else the number.
	TTL string
	// IPv4 only.
	DF, MF    bool
	FragOff   int
	ID        string // "zero" or "non-zero"
	HeaderSum string // "valid" or "bad"
	// Protocol is the chain of IP protocol numbers up to the inner
	// packet: "4", "41", "60/41", "17" ...
	Protocol string
	// Overhead is the outer length minus the inner packet's length
	// (IPv4 total length, IPv6 payload length + 40).
	Overhead int
	// FlowLabel is "zero" or "non-zero" (IPv6).
	FlowLabel string
	// DestOpt is the IPv6 destination options header, in hex.
	DestOpt string
	// UDP (FOU): the UDP length minus the inner length, and the checksum:
	// "zero", "valid" or "bad".
	UDPOverhead int
	UDPSum      string
	// Ports are "fixed" when the source port is the kind's FOU port (the
	// kernel) or our port (us), else "other".
	SrcPort string
}

// parseOuter parses one captured packet of kind k sent from src to dst,
// and returns its description and the inner packet; ok is false for a
// packet that is not k's tunnel packet from src to dst.
func parseOuter(k kind, src, dst netip.Addr, p []byte) (o outer, inner []byte, ok bool) {
	if len(p) < 1 {
		return o, nil, false
	}
	var proto uint8
	var rest []byte
	o.Version = int(p[0] >> 4)
	var tosByte, ttl uint8
	var outerLen, udpLen int
	switch {
	case o.Version == 4 && len(p) >= 20:
		ihl := int(p[0]&0xf) * 4
		if ihl < 20 || len(p) < ihl {
			return o, nil, false
		}
		s, _ := netip.AddrFromSlice(p[12:16])
		d, _ := netip.AddrFromSlice(p[16:20])
		if s != src || d != dst {
			return o, nil, false
		}
		tosByte, ttl, proto = p[1], p[8], p[9]
		outerLen = int(binary.BigEndian.Uint16(p[2:4]))
		fl := binary.BigEndian.Uint16(p[6:8])
		o.DF, o.MF, o.FragOff = fl&0x4000 != 0, fl&0x2000 != 0, int(fl&0x1fff)*8
		o.ID = zeroOr(binary.BigEndian.Uint16(p[4:6]) == 0)
		o.HeaderSum = "bad"
		if checksum(p[:ihl], 0) == 0 {
			o.HeaderSum = "valid"
		}
		rest = p[ihl:]
	case o.Version == 6 && len(p) >= 40:
		s, _ := netip.AddrFromSlice(p[8:24])
		d, _ := netip.AddrFromSlice(p[24:40])
		if s != src || d != dst {
			return o, nil, false
		}
		tosByte = uint8(binary.BigEndian.Uint16(p[0:2]) >> 4)
		o.FlowLabel = zeroOr(binary.BigEndian.Uint32(p[0:4])&0xfffff == 0)
		ttl, proto = p[7], p[6]
		outerLen = int(binary.BigEndian.Uint16(p[4:6])) + 40
		rest = p[40:]
	default:
		return o, nil, false
	}
	o.DSCP = tosByte >> 2
	o.Protocol = fmt.Sprint(proto)
	if proto == unix.IPPROTO_DSTOPTS && len(rest) >= 8 {
		n := (int(rest[1]) + 1) * 8
		if len(rest) < n {
			return o, nil, false
		}
		o.DestOpt = fmt.Sprintf("% x", rest[:n])
		proto = rest[0]
		o.Protocol += fmt.Sprintf("/%d", proto)
		rest = rest[n:]
	}
	if k.fou {
		if proto != unix.IPPROTO_UDP || len(rest) < 8 {
			return o, nil, false
		}
		sport, dport := binary.BigEndian.Uint16(rest[0:2]), binary.BigEndian.Uint16(rest[2:4])
		usum := binary.BigEndian.Uint16(rest[6:8])
		udpLen = int(binary.BigEndian.Uint16(rest[4:6]))
		if src == k.vmOuter() && dport != k.usPort() || src != k.vmOuter() && dport != k.fouPort() {
			return o, nil, false
		}
		o.SrcPort = "other"
		if src == k.vmOuter() && sport == k.fouPort() || src != k.vmOuter() && sport == k.usPort() {
			o.SrcPort = "fixed"
		}
		switch {
		case usum == 0:
			o.UDPSum = "zero"
		case udpChecksumOK(src, dst, rest):
			o.UDPSum = "valid"
		default:
			o.UDPSum = "bad"
		}
		rest = rest[8:]
	} else if proto != 4 && proto != 41 {
		return o, nil, false
	}
	if len(rest) < 20 {
		return o, nil, false
	}
	inner = rest
	var innerTOS, innerTTL uint8
	var innerLen int
	switch inner[0] >> 4 {
	case 4:
		innerTOS, innerTTL, innerLen = inner[1], inner[8], int(binary.BigEndian.Uint16(inner[2:4]))
	case 6:
		if len(inner) < 40 {
			return o, nil, false
		}
		innerTOS, innerTTL = uint8(binary.BigEndian.Uint16(inner[0:2])>>4), inner[7]
		innerLen = int(binary.BigEndian.Uint16(inner[4:6])) + 40
	default:
		return o, nil, false
	}
	o.ECN = fmt.Sprintf("outer %d, inner %d", tosByte&3, innerTOS&3)
	if tosByte&3 == innerTOS&3 {
		o.ECN = "copied"
	}
	o.TTL = fmt.Sprint(ttl)
	if ttl == innerTTL {
		o.TTL = "inherited"
	}
	o.Overhead = outerLen - innerLen
	if k.fou {
		o.UDPOverhead = udpLen - innerLen
	}
	return o, inner, true
}

func zeroOr(zero bool) string {
	if zero {
		return "zero"
	}
	return "non-zero"
}

// checksum is the Internet checksum (RFC 1071) of b, added to initial.
func checksum(b []byte, initial uint32) uint16 {
	sum := initial
	for len(b) >= 2 {
		sum += uint32(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// udpChecksumOK checks a UDP datagram's checksum with its pseudo-header.
func udpChecksumOK(src, dst netip.Addr, udp []byte) bool {
	var sum uint32
	for _, a := range [][]byte{src.AsSlice(), dst.AsSlice()} {
		for i := 0; i+1 < len(a); i += 2 {
			sum += uint32(binary.BigEndian.Uint16(a[i:]))
		}
	}
	sum += unix.IPPROTO_UDP + uint32(len(udp))
	return checksum(udp, sum) == 0
}

// innerTTL returns an inner packet's TTL or hop limit.
func innerTTL(inner []byte) uint8 {
	if inner[0]>>4 == 6 {
		return inner[7]
	}
	return inner[8]
}

// findTTL returns the first captured tunnel packet of kind k from src to
// dst whose inner packet has TTL (hop limit) ttl, parsed.
func findTTL(k kind, pkts []packet, src, dst netip.Addr, ttl uint8) (outer, error) {
	for _, p := range pkts {
		if o, inner, ok := parseOuter(k, src, dst, p.data); ok && innerTTL(inner) == ttl {
			return o, nil
		}
	}
	return outer{}, fmt.Errorf("no tunnel packet with an inner TTL of %d", ttl)
}

// sendWithTTL sends one UDP datagram from our stack to dst with inner TTL
// (hop limit) ttl, through a gVisor endpoint, since net.PacketConn has no
// TTL option.
func sendWithTTL(s *stack.Stack, dst netip.AddrPort, ttl uint8) error {
	netProto, opt := ipv4.ProtocolNumber, tcpip.IPv4TTLOption
	if dst.Addr().Is6() {
		netProto, opt = ipv6.ProtocolNumber, tcpip.IPv6HopLimitOption
	}
	var wq waiter.Queue
	ep, terr := s.GVisor().NewEndpoint(udp.ProtocolNumber, netProto, &wq)
	if terr != nil {
		return fmt.Errorf("gVisor UDP endpoint: %v", terr)
	}
	defer ep.Close()
	if terr := ep.SetSockOptInt(opt, int(ttl)); terr != nil {
		return fmt.Errorf("set TTL %d: %v", ttl, terr)
	}
	to := tcpip.FullAddress{Addr: tcpip.AddrFromSlice(dst.Addr().AsSlice()), Port: dst.Port()}
	if _, terr := ep.Write(bytes.NewReader([]byte("ttl probe")), tcpip.WriteOptions{To: &to}); terr != nil {
		return fmt.Errorf("write to %s: %v", dst, terr)
	}
	return nil
}

// expectedDiff says why our outer header may differ from the kernel's in
// field, from the kernel's value to ours; "" means it may not. Each
// exemption is for one pair of values only.
func expectedDiff(k kind, field string, kernel, ours any) string {
	switch {
	case field == "ID" && k.fou && kernel == "non-zero" && ours == "zero":
		// README, Wire formats: with DF the host kernel gives each
		// datagram of our unconnected UDP socket ID 0 (RFC 6864 section
		// 4.1: the ID of an atomic datagram means nothing), where
		// ip_tunnel's iptunnel_xmit always numbers them.
		return "the ID of a DF datagram means nothing (RFC 6864); our UDP socket's kernel sends 0"
	case field == "SrcPort" && k.autoSport && kernel == "other" && ours == "fixed":
		return "encap-sport auto hashes the flow into the source port; we send from our fixed port"
	case field == "FlowLabel" && kernel == "non-zero" && ours == "zero":
		// ip6_tnl_xmit sets ip6_make_flowlabel's automatic flow label.
		return "Linux fills in an automatic flow label (net.ipv6.auto_flowlabels); RFC 6437 lets a source send 0"
	case field == "TTL" && k.outer6 && kernel == "64" && ours == "inherited":
		// ip6tnl's default hop limit is 64 (iproute2's
		// DEFAULT_TNL_HOP_LIMIT), where encap.Policy's zero value
		// inherits the inner one like ipip, on IPv6 outer headers too.
		return "Linux ip6tnl defaults to hoplimit 64, our tunnels to inherit (encap.Policy.TTL 0, like ipip); ttl = 64 matches ip6tnl"
	}
	return ""
}

// compareOuter returns the differences between the kernel's outer header
// and ours, split into expected ones (with their reason) and the rest.
func compareOuter(k kind, kernel, us outer) (expected, unexpected []string) {
	kv, uv := reflect.ValueOf(kernel), reflect.ValueOf(us)
	for i := 0; i < kv.NumField(); i++ {
		f := kv.Type().Field(i).Name
		a, b := kv.Field(i).Interface(), uv.Field(i).Interface()
		if reflect.DeepEqual(a, b) {
			continue
		}
		d := fmt.Sprintf("%s: the kernel sends %v, we send %v", f, a, b)
		if why := expectedDiff(k, f, a, b); why != "" {
			expected = append(expected, d+" ("+why+")")
		} else {
			unexpected = append(unexpected, d)
		}
	}
	return expected, unexpected
}
