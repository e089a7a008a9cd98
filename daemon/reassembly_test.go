package daemon

import (
	"testing"
	"time"
)

// TestStackConfigReassembly checks that the stack block's reassembly
// limits reach stack.Config, and that config's defaults (gVisor's) go as
// zero, which keeps IPv6's 60 s timeout.
func TestStackConfigReassembly(t *testing.T) {
	tests := []struct {
		name        string
		stack       string
		wantTimeout time.Duration
		wantMemory  int
	}{
		{"absent", "", 0, 0},
		{"defaults", `stack {
  reassembly_timeout = "30s"
  reassembly_memory  = 4194304
}`, 0, 0},
		{"set", `stack {
  reassembly_timeout = "5s"
  reassembly_memory  = 1048576
}`, 5 * time.Second, 1 << 20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sc, err := stackConfig(parse(t, tt.stack+tunnel))
			if err != nil {
				t.Fatalf("stackConfig: %v", err)
			}
			if sc.ReassemblyTimeout != tt.wantTimeout || sc.ReassemblyMemory != tt.wantMemory {
				t.Errorf("stackConfig() reassembly = %v, %d; want %v, %d",
					sc.ReassemblyTimeout, sc.ReassemblyMemory, tt.wantTimeout, tt.wantMemory)
			}
		})
	}
}
