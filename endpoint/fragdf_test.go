package endpoint

import (
	"bytes"
	"encoding/hex"
	"strings"
	"testing"

	"github.com/ipipstack/ipipstack/internal/pkttest"
)

// TestClearDF checks clearDF against IPv4 headers (10.99.0.2 -> 10.99.0.1,
// ICMP, 1468 bytes) whose checksums were computed by hand over the whole
// header, before and after.
func TestClearDF(t *testing.T) {
	tests := []struct {
		name    string
		in, out string
		cleared bool
	}{
		{"first fragment", "450005bc123460004001ee440a6300020a630001", "450005bc123420004001 2e450a6300020a630001", true},
		{"middle fragment", "450005bc123440b540010d900a6300020a630001", "450005bc123400b540014d900a6300020a630001", true},
		{"last fragment", "450005bc1234416a40010cdb0a6300020a630001", "450005bc1234016a40014cdb0a6300020a630001", true},
		{"fragment without DF", "450005bc123420004001 2e450a6300020a630001", "450005bc123420004001 2e450a6300020a630001", false},
		{"whole packet with DF", "450005bc123440004001 0e450a6300020a630001", "450005bc123440004001 0e450a6300020a630001", false},
	}
	dec := func(s string) []byte {
		b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h, want := dec(tc.in), dec(tc.out)
			if c := pkttest.Checksum(h, 0); c != 0 {
				t.Fatalf("bad fixture: checksum does not verify (%#04x)", c)
			}
			if got := clearDF(h); got != tc.cleared {
				t.Errorf("clearDF(% x) = %v, want %v", dec(tc.in), got, tc.cleared)
			}
			if !bytes.Equal(h, want) {
				t.Errorf("header\n% x\nwant\n% x", h, want)
			}
			if c := pkttest.Checksum(h, 0); c != 0 {
				t.Errorf("checksum does not verify after clearDF (%#04x)", c)
			}
		})
	}
}
