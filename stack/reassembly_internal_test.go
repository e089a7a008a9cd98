package stack

import (
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	gvstack "gvisor.dev/gvisor/pkg/tcpip/stack"
)

// TestFragStateFound checks that findFragState finds gVisor's reassembly
// state on the gVisor version in go.mod, and that what it reads there are
// gVisor's documented defaults: a gVisor upgrade that renames, retypes or
// repurposes the fields fails here rather than in production, where New
// would refuse non-default reassembly limits.
func TestFragStateFound(t *testing.T) {
	gv := gvstack.New(gvstack.Options{
		NetworkProtocols: []gvstack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
	})
	defer func() {
		gv.Close()
		gv.Wait()
	}()
	tests := []struct {
		name        string
		proto       tcpip.NetworkProtocolNumber
		wantTimeout time.Duration
	}{
		{"ipv4", ipv4.ProtocolNumber, ipv4.ReassembleTimeout},
		{"ipv6", ipv6.ProtocolNumber, ipv6.ReassembleTimeout},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs, err := findFragState(gv.NetworkProtocolInstance(tt.proto))
			if err != nil {
				t.Fatalf("findFragState: %v", err)
			}
			fs.mu.Lock()
			high, low, timeout, mem := *fs.highLimit, *fs.lowLimit, *fs.timeout, *fs.memSize
			fs.mu.Unlock()
			if high != defaultReassemblyMemory || low != defaultReassemblyLow || timeout != tt.wantTimeout || mem != 0 {
				t.Errorf("gVisor's reassembly state = high %d, low %d, timeout %v, memory %d; want %d, %d, %v, 0",
					high, low, timeout, mem, defaultReassemblyMemory, defaultReassemblyLow, tt.wantTimeout)
			}
			if got := reassemblyLow(defaultReassemblyMemory); got != defaultReassemblyLow {
				t.Errorf("reassemblyLow(%d) = %d, want gVisor's %d", defaultReassemblyMemory, got, defaultReassemblyLow)
			}
		})
	}
}

// TestFragStateNotFound checks that findFragState refuses what is not
// gVisor's protocol type, rather than writing into it.
func TestFragStateNotFound(t *testing.T) {
	type fakeFragmentation struct {
		//lint:ignore U1000 read only through reflection: a field gVisor's type has, in a type that is not gVisor's.
		highLimit int
	}
	tests := []struct {
		name string
		p    gvstack.NetworkProtocol
	}{
		{"nil", nil},
		{"no field", struct{ gvstack.NetworkProtocol }{}},
		{"wrong type", &struct {
			gvstack.NetworkProtocol
			fragmentation *fakeFragmentation
		}{fragmentation: &fakeFragmentation{}}},
	}
	for _, tt := range tests {
		if fs, err := findFragState(tt.p); err == nil {
			t.Errorf("findFragState(%s) = %+v, nil; want an error", tt.name, fs)
		}
	}
}

// TestSetupReassemblyMissingState checks what New does on a gVisor version
// without the reassembly state: non-default limits are an error, never
// silently ignored; with default ones New goes on, with a warning that
// says what is not applied and why, ReassemblyLimitsApplied false (the
// daemon's ipipstack_reassembly_limits_applied 0) and ReassemblyBytes -1.
func TestSetupReassemblyMissingState(t *testing.T) {
	missing := func(gvstack.NetworkProtocol) (*fragState, error) {
		return nil, errors.New("no field fragmentation")
	}
	tests := []struct {
		name    string
		cfg     Config
		wantErr bool
	}{
		{"defaults", Config{}, false},
		{"timeout", Config{ReassemblyTimeout: time.Second}, true},
		{"memory", Config{ReassemblyMemory: 1 << 20}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var logs strings.Builder
			gv := gvstack.New(gvstack.Options{
				NetworkProtocols: []gvstack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
			})
			defer func() {
				gv.Close()
				gv.Wait()
			}()
			s := &Stack{gv: gv, log: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}
			err := s.setupReassembly(&tt.cfg, missing)
			if tt.wantErr {
				if !errors.Is(err, ErrReassemblyUnsupported) || !strings.Contains(err.Error(), "no field fragmentation") {
					t.Errorf("setupReassembly(%+v) = %v, want ErrReassemblyUnsupported with the cause", tt.cfg, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("setupReassembly(defaults) = %v, want nil", err)
			}
			if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "no field fragmentation") ||
				!strings.Contains(logs.String(), "not applied") {
				t.Errorf("logs = %q, want a warning that the limits are not applied, with the cause", logs.String())
			}
			if s.ReassemblyLimitsApplied() {
				t.Errorf("ReassemblyLimitsApplied() = true, want false")
			}
			if v4, v6 := s.ReassemblyBytes(); v4 != -1 || v6 != -1 {
				t.Errorf("ReassemblyBytes() = %d, %d; want -1, -1", v4, v6)
			}
		})
	}
}

// TestSetupReassemblyApplied checks that ReassemblyLimitsApplied reports
// true when gVisor's state was found, with or without limits set, and
// false when only one family's state was found.
func TestSetupReassemblyApplied(t *testing.T) {
	onlyV4 := func(p gvstack.NetworkProtocol) (*fragState, error) {
		if p.Number() == ipv6.ProtocolNumber {
			return nil, errors.New("no field fragmentation")
		}
		return findFragState(p)
	}
	tests := []struct {
		name string
		cfg  Config
		find func(gvstack.NetworkProtocol) (*fragState, error)
		want bool
	}{
		{"defaults", Config{}, findFragState, true},
		{"set", Config{ReassemblyTimeout: time.Second, ReassemblyMemory: 1 << 20}, findFragState, true},
		{"ipv6 missing", Config{}, onlyV4, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var logs strings.Builder
			gv := gvstack.New(gvstack.Options{
				NetworkProtocols: []gvstack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
			})
			defer func() {
				gv.Close()
				gv.Wait()
			}()
			s := &Stack{gv: gv, log: slog.New(slog.NewTextHandler(&logs, nil))}
			if err := s.setupReassembly(&tt.cfg, tt.find); err != nil {
				t.Fatalf("setupReassembly: %v", err)
			}
			if got := s.ReassemblyLimitsApplied(); got != tt.want {
				t.Errorf("ReassemblyLimitsApplied() = %v, want %v", got, tt.want)
			}
			if warned := strings.Contains(logs.String(), "level=WARN"); warned == tt.want {
				t.Errorf("logs = %q, want a warning: %v", logs.String(), !tt.want)
			}
		})
	}
}
