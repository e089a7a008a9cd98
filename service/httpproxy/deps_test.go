package httpproxy

import (
	"testing"

	"github.com/ipipstack/ipipstack/internal/servicetest"
)

// TestDeps keeps the package on service.Network alone: no gVisor, no HCL,
// no daemon code, so that it runs against the host in tests.
func TestDeps(t *testing.T) { servicetest.CheckDeps(t) }
