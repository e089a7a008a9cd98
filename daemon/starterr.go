package daemon

import (
	"fmt"
	"strings"
)

// serviceError is the error of a service that failed to start, naming it
// once: the services' own errors start with their name ("forward "web":
// listen …", "socks5: listen …"), which the daemon's prefix repeats.
type serviceError struct {
	kind, name string
	err        error
}

func (e *serviceError) Error() string {
	msg := e.err.Error()
	for _, p := range []string{fmt.Sprintf("forward %q: ", e.name), "socks5: "} {
		msg = strings.TrimPrefix(msg, p)
	}
	return fmt.Sprintf("daemon: %s %q: %s", e.kind, e.name, msg)
}

func (e *serviceError) Unwrap() error { return e.err }
