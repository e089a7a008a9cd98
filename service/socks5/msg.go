package socks5

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"

	"github.com/ipipstack/ipipstack/service"
)

// Wire constants from RFC 1928 and RFC 1929.
const (
	Version     = 0x05 // RFC 1928 VER
	AuthVersion = 0x01 // RFC 1929 sub-negotiation VER

	MethodNoAuth       = 0x00 // RFC 1928 §3 NO AUTHENTICATION REQUIRED
	MethodUserPass     = 0x02 // RFC 1928 §3 USERNAME/PASSWORD (RFC 1929)
	MethodNoAcceptable = 0xFF // RFC 1928 §3 NO ACCEPTABLE METHODS

	AuthSuccess = 0x00 // RFC 1929 §2 STATUS: success
	AuthFailure = 0x01 // any other STATUS is a failure; this is the one we send

	atypIPv4   = 0x01
	atypDomain = 0x03
	atypIPv6   = 0x04
)

// Sizes of the fixed parts of messages.
const (
	// MaxRequestLen is the largest request or reply: VER CMD RSV ATYP, a
	// length byte and a 255-byte domain name, and the port.
	MaxRequestLen = 4 + 1 + 255 + 2
	// MaxUDPHeaderLen is the largest UDP request header: RSV(2) FRAG ATYP,
	// a length byte and a 255-byte domain name, and the port.
	MaxUDPHeaderLen = 4 + 1 + 255 + 2
	// MaxUserPassLen is the largest RFC 1929 request.
	MaxUserPassLen = 1 + 1 + 255 + 1 + 255
	// maxIPUDPHeaderLen is the largest UDP header with an IP address (IPv6).
	maxIPUDPHeaderLen = 4 + 16 + 2
)

// Errors returned by the parsers besides io.ErrShortBuffer (truncated).
var (
	ErrVersion     = errors.New("socks5: unsupported version")
	ErrAddressType = errors.New("socks5: address type not supported")
	ErrMalformed   = errors.New("socks5: malformed message")
)

// Command is a request's CMD (RFC 1928 §4).
type Command byte

// Commands of RFC 1928 §4.
const (
	CmdConnect      Command = 0x01
	CmdBind         Command = 0x02
	CmdUDPAssociate Command = 0x03
)

func (c Command) String() string {
	switch c {
	case CmdConnect:
		return "CONNECT"
	case CmdBind:
		return "BIND"
	case CmdUDPAssociate:
		return "UDP ASSOCIATE"
	}
	return "Command(" + strconv.Itoa(int(c)) + ")"
}

// Reply is a reply's REP field (RFC 1928 §6).
type Reply byte

// Reply codes of RFC 1928 §6.
const (
	ReplySucceeded               Reply = 0x00
	ReplyGeneralFailure          Reply = 0x01
	ReplyNotAllowed              Reply = 0x02
	ReplyNetworkUnreachable      Reply = 0x03
	ReplyHostUnreachable         Reply = 0x04
	ReplyConnectionRefused       Reply = 0x05
	ReplyTTLExpired              Reply = 0x06
	ReplyCommandNotSupported     Reply = 0x07
	ReplyAddressTypeNotSupported Reply = 0x08
)

var replyNames = [...]string{
	"succeeded", "general SOCKS server failure", "connection not allowed by ruleset",
	"network unreachable", "host unreachable", "connection refused", "TTL expired",
	"command not supported", "address type not supported",
}

func (r Reply) String() string {
	if int(r) < len(replyNames) {
		return replyNames[r]
	}
	return "Reply(" + strconv.Itoa(int(r)) + ")"
}

// Addr is a SOCKS address: ATYP, DST.ADDR and DST.PORT. Exactly one of IP
// and Name is set.
type Addr struct {
	IP   netip.Addr // for ATYP IPv4 (an Is4 address) and IPv6 (Is6, possibly v4-mapped)
	Name string     // for ATYP DOMAINNAME: 1 to 255 bytes, not checked further
	Port uint16
}

// AddrFromNetAddr returns the Addr of a *net.TCPAddr or *net.UDPAddr (or
// anything whose String is "ip:port"), unmapping v4-mapped IPv6. It returns
// the zero IPv4 address 0.0.0.0:0 when a is nil or unparsable.
func AddrFromNetAddr(a net.Addr) Addr {
	ap, ok := service.AddrPort(a)
	if !ok {
		return Addr{IP: netip.IPv4Unspecified()}
	}
	return Addr{IP: ap.Addr(), Port: ap.Port()}
}

// String returns "host:port", with IPv6 in brackets.
func (a Addr) String() string {
	if a.Name != "" || !a.IP.IsValid() {
		return net.JoinHostPort(a.Name, strconv.Itoa(int(a.Port)))
	}
	return netip.AddrPortFrom(a.IP, a.Port).String()
}

// appendAddr appends ATYP ADDR PORT.
func appendAddr(b []byte, a Addr) ([]byte, error) {
	switch {
	case a.Name != "":
		if len(a.Name) > 255 {
			return b, fmt.Errorf("socks5: domain name of %d bytes, more than 255", len(a.Name))
		}
		b = append(b, atypDomain, byte(len(a.Name)))
		b = append(b, a.Name...)
	case a.IP.Is4():
		b = append(b, atypIPv4)
		ip := a.IP.As4()
		b = append(b, ip[:]...)
	case a.IP.Is6():
		ip := a.IP.As16()
		b = append(b, atypIPv6)
		b = append(b, ip[:]...)
	default:
		return b, errors.New("socks5: address has neither IP nor name")
	}
	return binary.BigEndian.AppendUint16(b, a.Port), nil
}

// addrNeed returns the length of ATYP ADDR PORT starting at b[0] given the
// bytes seen so far, or len(b)+1 if more bytes are needed to tell, or 0 for
// an unknown ATYP (whose length cannot be known).
func addrNeed(b []byte) int {
	if len(b) < 1 {
		return 1
	}
	switch b[0] {
	case atypIPv4:
		return 1 + 4 + 2
	case atypIPv6:
		return 1 + 16 + 2
	case atypDomain:
		if len(b) < 2 {
			return 2
		}
		return 1 + 1 + int(b[1]) + 2
	}
	return 0
}

// parseAddr parses ATYP ADDR PORT at the start of b and returns it with its
// length.
func parseAddr(b []byte) (Addr, int, error) {
	n := addrNeed(b)
	if n == 0 {
		return Addr{}, 0, ErrAddressType
	}
	if len(b) < n {
		return Addr{}, 0, io.ErrShortBuffer
	}
	var a Addr
	switch b[0] {
	case atypIPv4:
		a.IP = netip.AddrFrom4([4]byte(b[1:5]))
	case atypIPv6:
		a.IP = netip.AddrFrom16([16]byte(b[1:17]))
	case atypDomain:
		if b[1] == 0 {
			return Addr{}, 0, fmt.Errorf("%w: empty domain name", ErrMalformed)
		}
		a.Name = string(b[2 : 2+int(b[1])])
	}
	a.Port = binary.BigEndian.Uint16(b[n-2 : n])
	return a, n, nil
}

// Greeting: the client's version identifier/method selection message
// (RFC 1928 §3).
//
//	+----+----------+----------+
//	|VER | NMETHODS | METHODS  |
//	+----+----------+----------+
//	| 1  |    1     | 1 to 255 |
//	+----+----------+----------+

// GreetingNeed returns how many bytes the greeting starting with b has in
// total, as far as b tells: reading that many and calling GreetingNeed
// again converges on the full length (it returns len(b) once complete).
// A wrong version stops it early, leaving ParseGreeting to reject it.
func GreetingNeed(b []byte) int {
	switch {
	case len(b) < 1:
		return 2
	case b[0] != Version:
		return len(b)
	case len(b) < 2:
		return 2
	}
	return 2 + int(b[1])
}

// ParseGreeting parses a greeting and returns its METHODS (aliasing b) and
// length. NMETHODS = 0 is accepted and gives no methods.
func ParseGreeting(b []byte) (methods []byte, n int, err error) {
	if len(b) < 1 {
		return nil, 0, io.ErrShortBuffer
	}
	if b[0] != Version {
		return nil, 0, ErrVersion
	}
	if len(b) < 2 || len(b) < 2+int(b[1]) {
		return nil, 0, io.ErrShortBuffer
	}
	n = 2 + int(b[1])
	return b[2:n:n], n, nil
}

// Username/password request (RFC 1929 §2).
//
//	+----+------+----------+------+----------+
//	|VER | ULEN |  UNAME   | PLEN |  PASSWD  |
//	+----+------+----------+------+----------+
//	| 1  |  1   | 1 to 255 |  1   | 1 to 255 |
//	+----+------+----------+------+----------+

// UserPassNeed is GreetingNeed for the RFC 1929 request.
func UserPassNeed(b []byte) int {
	switch {
	case len(b) < 1:
		return 2
	case b[0] != AuthVersion:
		return len(b)
	case len(b) < 2:
		return 2
	}
	ulen := int(b[1])
	if len(b) < 2+ulen+1 {
		return 2 + ulen + 1
	}
	return 2 + ulen + 1 + int(b[2+ulen])
}

// ParseUserPass parses an RFC 1929 request and returns the credentials
// (aliasing b) and its length. Empty names and passwords are accepted.
func ParseUserPass(b []byte) (user, pass []byte, n int, err error) {
	if len(b) < 1 {
		return nil, nil, 0, io.ErrShortBuffer
	}
	if b[0] != AuthVersion {
		return nil, nil, 0, ErrVersion
	}
	n = UserPassNeed(b)
	if len(b) < n {
		return nil, nil, 0, io.ErrShortBuffer
	}
	ulen := int(b[1])
	return b[2 : 2+ulen], b[3+ulen : n], n, nil
}

// AppendUserPass appends an RFC 1929 request, for clients and tests.
func AppendUserPass(b []byte, user, pass string) ([]byte, error) {
	if len(user) > 255 || len(pass) > 255 {
		return b, errors.New("socks5: username or password longer than 255 bytes")
	}
	b = append(b, AuthVersion, byte(len(user)))
	b = append(b, user...)
	b = append(b, byte(len(pass)))
	return append(b, pass...), nil
}

// Request and reply (RFC 1928 §4, §6) share one layout; a reply has REP
// where a request has CMD.
//
//	+----+-----+-------+------+----------+----------+
//	|VER | CMD |  RSV  | ATYP | DST.ADDR | DST.PORT |
//	+----+-----+-------+------+----------+----------+
//	| 1  |  1  | X'00' |  1   | Variable |    2     |
//	+----+-----+-------+------+----------+----------+

// Request is a client's request.
type Request struct {
	Cmd Command
	Dst Addr
}

// RequestNeed is GreetingNeed for requests (and replies). For an unknown
// ATYP it stops after the ATYP byte, leaving ParseRequest to reject it.
func RequestNeed(b []byte) int {
	switch {
	case len(b) < 1:
		return 4
	case b[0] != Version:
		return len(b)
	case len(b) < 4:
		return 4
	}
	n := addrNeed(b[3:])
	if n == 0 {
		return 4
	}
	return 3 + n
}

// ParseRequest parses a request and returns it with its length. RSV is
// ignored. Errors: io.ErrShortBuffer, ErrVersion, ErrAddressType (reply
// ReplyAddressTypeNotSupported) and ErrMalformed (an empty domain name).
// The command is not checked: the server replies to unknown ones.
func ParseRequest(b []byte) (Request, int, error) {
	code, a, n, err := parseMsg(b)
	return Request{Cmd: Command(code), Dst: a}, n, err
}

// ParseReply parses a reply, for clients and tests.
func ParseReply(b []byte) (Reply, Addr, int, error) {
	code, a, n, err := parseMsg(b)
	return Reply(code), a, n, err
}

func parseMsg(b []byte) (code byte, a Addr, n int, err error) {
	if len(b) < 1 {
		return 0, Addr{}, 0, io.ErrShortBuffer
	}
	if b[0] != Version {
		return 0, Addr{}, 0, ErrVersion
	}
	if len(b) < 4 {
		return 0, Addr{}, 0, io.ErrShortBuffer
	}
	a, n, err = parseAddr(b[3:])
	if err != nil {
		return 0, Addr{}, 0, err
	}
	return b[1], a, 3 + n, nil
}

// AppendRequest appends a request, for clients and tests.
func AppendRequest(b []byte, r Request) ([]byte, error) {
	return appendAddr(append(b, Version, byte(r.Cmd), 0), r.Dst)
}

// AppendReply appends a reply with bound address bnd.
func AppendReply(b []byte, rep Reply, bnd Addr) ([]byte, error) {
	return appendAddr(append(b, Version, byte(rep), 0), bnd)
}

// UDP request header (RFC 1928 §7), in front of every relayed datagram.
//
//	+----+------+------+----------+----------+----------+
//	|RSV | FRAG | ATYP | DST.ADDR | DST.PORT |   DATA   |
//	+----+------+------+----------+----------+----------+
//	| 2  |  1   |  1   | Variable |    2     | Variable |
//	+----+------+------+----------+----------+----------+

// UDPHeader is the header of a relayed datagram. Frag is the fragment
// number; 0 means a whole datagram, the only kind this server relays.
type UDPHeader struct {
	Frag byte
	Addr Addr
}

// ParseUDPHeader parses the header at the start of datagram b and returns
// it with its length; the payload is b[n:]. RSV is ignored.
func ParseUDPHeader(b []byte) (h UDPHeader, n int, err error) {
	if len(b) < 4 {
		return UDPHeader{}, 0, io.ErrShortBuffer
	}
	a, n, err := parseAddr(b[3:])
	if err != nil {
		return UDPHeader{}, 0, err
	}
	return UDPHeader{Frag: b[2], Addr: a}, 3 + n, nil
}

// AppendUDPHeader appends the header h.
func AppendUDPHeader(b []byte, h UDPHeader) ([]byte, error) {
	return appendAddr(append(b, 0, 0, h.Frag), h.Addr)
}
