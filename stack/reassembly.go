package stack

import (
	"errors"
	"fmt"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	gvstack "gvisor.dev/gvisor/pkg/tcpip/stack"
)

// IP reassembly limits.
//
// gVisor keeps the fragments of incomplete datagrams per family (one table
// for IPv4, one for IPv6) and counts for each fragment its whole packet
// plus the PacketBuffer holding it, much as Linux counts skb truesize.
// When that count passes the high limit it drops the oldest reassemblies
// until the count is at the low limit, and it drops a reassembly whose
// timeout has passed since its first-arriving fragment; if that datagram's
// fragment zero had arrived, it sends ICMP Time Exceeded, code 1 (RFC 792;
// RFC 8200 section 4.5 for IPv6). gVisor has no option for either limit:
// they are set in unexported fields (reassembly_unsafe.go).
const (
	// minReassemblyMemory is the smallest memory limit: room for one
	// maximal (64 KiB) datagram. gVisor's count adds each fragment's IP
	// header and PacketBuffer (328 bytes on amd64), so a maximal datagram
	// in 1472-byte fragments counts about 80 KiB, and eviction brings the
	// count down to three quarters of the limit: below about 106 KiB a
	// maximal datagram could be evicted while others are pending.
	minReassemblyMemory = 128 << 10
	// maxReassemblyMemory bounds the limit at 1 GiB, like config.
	maxReassemblyMemory = 1 << 30
	// minReassemblyTimeout and maxReassemblyTimeout bound the timeout:
	// below a millisecond hardly any datagram could complete, and an hour
	// is far past any use (Linux uses 30 s, RFC 8200 60 s).
	minReassemblyTimeout = time.Millisecond
	maxReassemblyTimeout = time.Hour
	// Defaults, as in gVisor's fragmentation package (HighFragThreshold,
	// LowFragThreshold) and network packages, and Linux's ipfrag_*.
	defaultReassemblyMemory = 4 << 20
	defaultReassemblyLow    = 3 << 20
)

// ErrReassemblyUnsupported reports that this gVisor version does not have
// the reassembly state New sets for Config.ReassemblyTimeout and
// Config.ReassemblyMemory; leaving both zero keeps gVisor's defaults.
var ErrReassemblyUnsupported = errors.New("stack: reassembly limits cannot be set on this gVisor version")

// reassembly is the stack's handle on gVisor's reassembly state, one per
// family; an entry is nil if the gVisor version lacks what it needs.
type reassembly struct {
	v4, v6 *fragState
}

// reassemblyLow is the low limit that goes with the high limit high, in
// gVisor's and Linux's default ratio of 3 to 4.
func reassemblyLow(high int) int { return high / 4 * 3 }

// checkReassembly validates the reassembly fields of cfg.
func checkReassembly(cfg *Config) error {
	if t := cfg.ReassemblyTimeout; t != 0 && (t < minReassemblyTimeout || t > maxReassemblyTimeout) {
		return fmt.Errorf("stack: reassembly timeout %v: want 0 (the default) or %v to %v", t, minReassemblyTimeout, maxReassemblyTimeout)
	}
	if m := cfg.ReassemblyMemory; m != 0 && (m < minReassemblyMemory || m > maxReassemblyMemory) {
		return fmt.Errorf("stack: reassembly memory %d bytes: want 0 (the default) or %d (one maximal datagram) to %d", m, minReassemblyMemory, maxReassemblyMemory)
	}
	return nil
}

// setupReassembly finds gVisor's reassembly state and applies cfg's limits
// to it. It must run before the stack has any NIC, so that no fragment is
// pending while the limits change. When the state cannot be found it fails
// if cfg asks for non-default limits; otherwise it logs a warning that
// says what is not applied and why, and ReassemblyLimitsApplied reports
// false.
//
// find is findFragState, or a stand-in in tests.
func (s *Stack) setupReassembly(cfg *Config, find func(gvstack.NetworkProtocol) (*fragState, error)) error {
	if err := checkReassembly(cfg); err != nil {
		return err
	}
	var errs []error
	lookup := func(name string, p tcpip.NetworkProtocolNumber) *fragState {
		fs, err := find(s.gv.NetworkProtocolInstance(p))
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
		}
		return fs
	}
	s.reasm.v4 = lookup("ipv4", ipv4.ProtocolNumber)
	s.reasm.v6 = lookup("ipv6", ipv6.ProtocolNumber)
	if err := errors.Join(errs...); err != nil {
		if cfg.ReassemblyTimeout != 0 || cfg.ReassemblyMemory != 0 {
			return fmt.Errorf("%w: %w", ErrReassemblyUnsupported, err)
		}
		s.log.Warn("IP reassembly limits not applied: gVisor's reassembly state was not found "+
			"(the pinned gVisor version renamed or retyped it); gVisor's built-in limits stay in force, "+
			"reassembly_timeout and reassembly_memory cannot be set, and reassembly memory reads -1; "+
			"update stack/reassembly_unsafe.go for this gVisor version", "err", err)
		return nil
	}
	for _, fs := range []*fragState{s.reasm.v4, s.reasm.v6} {
		fs.mu.Lock()
		if t := cfg.ReassemblyTimeout; t != 0 {
			*fs.timeout = t
		}
		if m := cfg.ReassemblyMemory; m != 0 {
			*fs.highLimit, *fs.lowLimit = m, reassemblyLow(m)
		}
		fs.mu.Unlock()
	}
	if cfg.ReassemblyTimeout != 0 || cfg.ReassemblyMemory != 0 {
		s.log.Debug("reassembly limits set", "timeout", cfg.ReassemblyTimeout, "memory", cfg.ReassemblyMemory)
	}
	return nil
}

// ReassemblyLimitsApplied reports whether New found gVisor's reassembly
// state for both IPv4 and IPv6, so that Config.ReassemblyTimeout and
// Config.ReassemblyMemory are in force and ReassemblyBytes is real. It is
// false when a gVisor upgrade renamed the unexported fields the stack
// sets; New then warns, keeps gVisor's built-in limits and refuses
// non-default ones.
func (s *Stack) ReassemblyLimitsApplied() bool {
	return s.reasm.v4 != nil && s.reasm.v6 != nil
}

// ReassemblyBytes returns the memory that IP reassembly holds now for
// incomplete IPv4 and IPv6 datagrams, as gVisor counts it (see
// Config.ReassemblyMemory), or -1 for a family whose count this gVisor
// version hides. It takes gVisor's reassembly lock for a moment.
func (s *Stack) ReassemblyBytes() (v4, v6 int) {
	return s.reasm.v4.bytes(), s.reasm.v6.bytes()
}

// bytes returns fs's memory count, or -1 if fs is nil.
func (fs *fragState) bytes() int {
	if fs == nil {
		return -1
	}
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return *fs.memSize
}
