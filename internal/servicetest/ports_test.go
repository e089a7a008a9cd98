package servicetest

import "testing"

// TestFreePortDistinct: FreePort never hands out one port twice, and each
// is below the ephemeral range and bindable when returned.
func TestFreePortDistinct(t *testing.T) {
	seen := map[int]bool{}
	for range 200 {
		p := FreePort(t)
		if seen[p] {
			t.Fatalf("port %d handed out twice", p)
		}
		if p < 20000 || p >= 32768 {
			t.Fatalf("port %d outside 20000-32767", p)
		}
		seen[p] = true
	}
}
