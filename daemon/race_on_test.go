//go:build race

package daemon

// raceEnabled: gVisor's IPv4 forwarding reads memory it has just freed
// (stack/forward.go, bug 4), which the race detector reports; tests that
// forward IPv4 through a router daemon skip those cases under -race, and
// make test runs them again without it.
const raceEnabled = true
