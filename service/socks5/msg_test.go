package socks5

import (
	"bytes"
	"encoding/hex"
	"errors"
	"io"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func mustHex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var addrCmp = cmp.Comparer(func(a, b netip.Addr) bool { return a == b })

func TestParseRequest(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    Request
		wantN   int
		wantErr error
	}{
		{"ipv4", "05 01 00 01 7f000001 0050", Request{CmdConnect, Addr{IP: netip.MustParseAddr("127.0.0.1"), Port: 80}}, 10, nil},
		{"ipv6", "05 03 00 04 00000000000000000000000000000001 1f90",
			Request{CmdUDPAssociate, Addr{IP: netip.MustParseAddr("::1"), Port: 8080}}, 22, nil},
		{"domain", "05 01 00 03 09 6c6f63616c686f7374 01bb", Request{CmdConnect, Addr{Name: "localhost", Port: 443}}, 16, nil},
		{"trailing data kept", "05 01 00 01 0a000001 0016 ffff", Request{CmdConnect, Addr{IP: netip.MustParseAddr("10.0.0.1"), Port: 22}}, 10, nil},
		{"rsv ignored", "05 01 ff 01 0a000001 0016", Request{CmdConnect, Addr{IP: netip.MustParseAddr("10.0.0.1"), Port: 22}}, 10, nil},
		{"unknown command parsed", "05 09 00 01 0a000001 0016", Request{Command(9), Addr{IP: netip.MustParseAddr("10.0.0.1"), Port: 22}}, 10, nil},
		{"empty", "", Request{}, 0, io.ErrShortBuffer},
		{"bad version", "04 01 00 01 7f000001 0050", Request{}, 0, ErrVersion},
		{"truncated header", "05 01 00", Request{}, 0, io.ErrShortBuffer},
		{"truncated ipv4", "05 01 00 01 7f0000", Request{}, 0, io.ErrShortBuffer},
		{"truncated port", "05 01 00 01 7f000001 00", Request{}, 0, io.ErrShortBuffer},
		{"truncated ipv6", "05 01 00 04 0000", Request{}, 0, io.ErrShortBuffer},
		{"truncated domain", "05 01 00 03 09 6c6f", Request{}, 0, io.ErrShortBuffer},
		{"bad atyp", "05 01 00 05 7f000001 0050", Request{}, 0, ErrAddressType},
		{"atyp 0", "05 01 00 00", Request{}, 0, ErrAddressType},
		{"empty domain", "05 01 00 03 00 0050", Request{}, 0, ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := mustHex(t, tt.in)
			got, n, err := ParseRequest(in)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("ParseRequest(%x) error = %v, want %v", in, err, tt.wantErr)
			}
			if diff := cmp.Diff(tt.want, got, addrCmp); diff != "" || n != tt.wantN {
				t.Errorf("ParseRequest(%x) = %+v, %d, want %+v, %d (-want +got):\n%s", in, got, n, tt.want, tt.wantN, diff)
			}
			if err == nil && RequestNeed(in) != n {
				t.Errorf("RequestNeed(%x) = %d, want %d", in, RequestNeed(in), n)
			}
		})
	}
}

func TestAppendReply(t *testing.T) {
	tests := []struct {
		name string
		rep  Reply
		bnd  Addr
		want string
	}{
		{"ipv4", ReplySucceeded, Addr{IP: netip.MustParseAddr("192.0.2.1"), Port: 1080}, "05 00 00 01 c0000201 0438"},
		{"ipv6", ReplyConnectionRefused, Addr{IP: netip.MustParseAddr("2001:db8::1"), Port: 1}, "05 05 00 04 20010db8000000000000000000000001 0001"},
		{"domain", ReplyHostUnreachable, Addr{Name: "a.b", Port: 53}, "05 04 00 03 03 612e62 0035"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			prefix := []byte{0xff, 0xff} // appended bytes must not touch what is there
			got, err := AppendReply(prefix, tt.rep, tt.bnd)
			if err != nil {
				t.Fatal(err)
			}
			if want := append([]byte{0xff, 0xff}, mustHex(t, tt.want)...); !bytes.Equal(got, want) {
				t.Errorf("AppendReply(%v, %v) = %x, want %x", tt.rep, tt.bnd, got, want)
			}
			rep, bnd, n, err := ParseReply(got[2:])
			if err != nil || rep != tt.rep || bnd != tt.bnd || n != len(got)-2 {
				t.Errorf("ParseReply(%x) = %v, %v, %d, %v; want the input back", got[2:], rep, bnd, n, err)
			}
		})
	}
	if _, err := AppendReply(nil, ReplySucceeded, Addr{Name: strings.Repeat("a", 256)}); err == nil {
		t.Error("AppendReply with a 256-byte name succeeded")
	}
	if _, err := AppendReply(nil, ReplySucceeded, Addr{}); err == nil {
		t.Error("AppendReply with an empty address succeeded")
	}
}

func TestParseUDPHeader(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    UDPHeader
		wantN   int
		wantErr error
	}{
		{"ipv4", "0000 00 01 7f000001 0035 abcd", UDPHeader{Addr: Addr{IP: netip.MustParseAddr("127.0.0.1"), Port: 53}}, 10, nil},
		{"ipv6 frag", "0000 02 04 00000000000000000000000000000001 0035", UDPHeader{Frag: 2, Addr: Addr{IP: netip.MustParseAddr("::1"), Port: 53}}, 22, nil},
		{"domain", "0000 00 03 01 61 0035", UDPHeader{Addr: Addr{Name: "a", Port: 53}}, 8, nil},
		{"empty", "", UDPHeader{}, 0, io.ErrShortBuffer},
		{"short", "0000 00", UDPHeader{}, 0, io.ErrShortBuffer},
		{"truncated addr", "0000 00 01 7f00", UDPHeader{}, 0, io.ErrShortBuffer},
		{"bad atyp", "0000 00 07 7f000001 0035", UDPHeader{}, 0, ErrAddressType},
		{"empty domain", "0000 00 03 00 0035", UDPHeader{}, 0, ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := mustHex(t, tt.in)
			got, n, err := ParseUDPHeader(in)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("ParseUDPHeader(%x) error = %v, want %v", in, err, tt.wantErr)
			}
			if diff := cmp.Diff(tt.want, got, addrCmp); diff != "" || n != tt.wantN {
				t.Errorf("ParseUDPHeader(%x) = %+v, %d, want %+v, %d (-want +got):\n%s", in, got, n, tt.want, tt.wantN, diff)
			}
		})
	}
}

func TestParseGreetingAndUserPass(t *testing.T) {
	m, n, err := ParseGreeting(mustHex(t, "05 02 00 02 ff"))
	if err != nil || n != 4 || !bytes.Equal(m, []byte{0, 2}) {
		t.Errorf("ParseGreeting = %x, %d, %v; want 0002, 4, nil", m, n, err)
	}
	if _, _, err := ParseGreeting(mustHex(t, "05 03 00")); !errors.Is(err, io.ErrShortBuffer) {
		t.Errorf("ParseGreeting(truncated) error = %v, want ErrShortBuffer", err)
	}
	if _, _, err := ParseGreeting(mustHex(t, "04 01 00")); !errors.Is(err, ErrVersion) {
		t.Errorf("ParseGreeting(v4) error = %v, want ErrVersion", err)
	}
	b, _ := AppendUserPass(nil, "user", "pw")
	u, p, n, err := ParseUserPass(b)
	if err != nil || string(u) != "user" || string(p) != "pw" || n != len(b) || UserPassNeed(b) != n {
		t.Errorf("ParseUserPass(%x) = %q, %q, %d, %v", b, u, p, n, err)
	}
	if _, _, _, err := ParseUserPass(b[:len(b)-1]); !errors.Is(err, io.ErrShortBuffer) {
		t.Errorf("ParseUserPass(truncated) error = %v, want ErrShortBuffer", err)
	}
	if _, _, _, err := ParseUserPass(mustHex(t, "05 01 61 01 62")); !errors.Is(err, ErrVersion) {
		t.Errorf("ParseUserPass(ver 5) error = %v, want ErrVersion", err)
	}
}

// checkParseErr fails unless err is one the parsers document.
func checkParseErr(t *testing.T, err error) {
	if err != nil && !errors.Is(err, io.ErrShortBuffer) && !errors.Is(err, ErrVersion) &&
		!errors.Is(err, ErrAddressType) && !errors.Is(err, ErrMalformed) {
		t.Fatalf("undocumented error %v", err)
	}
}

func FuzzParseRequest(f *testing.F) {
	for _, s := range []string{
		"05 01 00 01 7f000001 0050",
		"05 03 00 04 00000000000000000000000000000001 1f90",
		"05 01 00 03 09 6c6f63616c686f7374 01bb",
		"05 01 00 03 00 0050",
		"05 01 00 05",
		"04 01 00 01 7f000001 0050",
		"05 01 00 03 ff",
	} {
		f.Add(mustHex(f, s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		req, n, err := ParseRequest(b)
		checkParseErr(t, err)
		need := RequestNeed(b)
		if need < 0 || need > max(len(b), MaxRequestLen) {
			t.Fatalf("RequestNeed(%x) = %d, want at most max(len, %d)", b, need, MaxRequestLen)
		}
		if errors.Is(err, io.ErrShortBuffer) && need <= len(b) {
			t.Fatalf("ParseRequest(%x) is short but RequestNeed = %d", b, need)
		}
		if err != nil {
			return
		}
		if n > len(b) || n != need {
			t.Fatalf("ParseRequest(%x) n = %d, RequestNeed = %d, len %d", b, n, need, len(b))
		}
		// Round trip: re-encoding gives the input, RSV zeroed.
		enc, err := AppendRequest(nil, req)
		if err != nil {
			t.Fatalf("AppendRequest(%+v): %v", req, err)
		}
		want := bytes.Clone(b[:n])
		want[2] = 0
		if !bytes.Equal(enc, want) {
			t.Fatalf("AppendRequest(ParseRequest(%x)) = %x", want, enc)
		}
	})
}

func FuzzParseUDPHeader(f *testing.F) {
	for _, s := range []string{
		"0000 00 01 7f000001 0035 abcd",
		"0000 02 04 00000000000000000000000000000001 0035",
		"0000 00 03 01 61 0035",
		"0000 00 03 00 0035",
		"0000 00 07",
	} {
		f.Add(mustHex(f, s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		h, n, err := ParseUDPHeader(b)
		checkParseErr(t, err)
		if err != nil {
			return
		}
		if n > len(b) || n > MaxUDPHeaderLen {
			t.Fatalf("ParseUDPHeader(%x) n = %d, len %d", b, n, len(b))
		}
		enc, err := AppendUDPHeader(nil, h)
		if err != nil {
			t.Fatalf("AppendUDPHeader(%+v): %v", h, err)
		}
		want := bytes.Clone(b[:n])
		want[0], want[1] = 0, 0
		if !bytes.Equal(enc, want) {
			t.Fatalf("AppendUDPHeader(ParseUDPHeader(%x)) = %x", want, enc)
		}
	})
}

func FuzzParseHandshake(f *testing.F) {
	f.Add(mustHex(f, "05 02 00 02"))
	f.Add(mustHex(f, "01 04 75736572 02 7077"))
	f.Add(mustHex(f, "01 ff"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if m, n, err := ParseGreeting(b); err == nil {
			if n > len(b) || n != GreetingNeed(b) || len(m) != n-2 {
				t.Fatalf("ParseGreeting(%x) = %x, %d", b, m, n)
			}
		} else {
			checkParseErr(t, err)
		}
		u, p, n, err := ParseUserPass(b)
		checkParseErr(t, err)
		if err != nil {
			return
		}
		if n > len(b) || n > MaxUserPassLen || n != UserPassNeed(b) {
			t.Fatalf("ParseUserPass(%x) n = %d", b, n)
		}
		enc, err := AppendUserPass(nil, string(u), string(p))
		if err != nil || !bytes.Equal(enc, b[:n]) {
			t.Fatalf("AppendUserPass(ParseUserPass(%x)) = %x, %v", b[:n], enc, err)
		}
	})
}
