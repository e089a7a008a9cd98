package daemon

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/ipipstack/ipipstack/config"
)

// Linux capability bits (linux/capability.h).
const (
	CapNetAdmin = 12
	CapNetRaw   = 13
)

// rawHint says how to give a raw tunnel its privilege.
const rawHint = "a raw tunnel needs CAP_NET_RAW: run as root, grant it with `setcap cap_net_raw+ep $(command -v ipipstack)` " +
	"(or AmbientCapabilities=CAP_NET_RAW under systemd), or use transport = \"udp\", which needs no privilege"

// explainStartError adds to a privilege error of a raw socket what the
// socket needs and how to grant it; other errors are returned unchanged.
func explainStartError(err error) error {
	if err == nil || !isPermission(err) || !strings.Contains(err.Error(), "raw socket") {
		return err
	}
	return fmt.Errorf("%w: %s", err, rawHint)
}

// MissingCapability is a capability cfg needs that the process lacks.
type MissingCapability struct {
	Name string // "CAP_NET_RAW"
	Why  string // what in the file needs it
	Hint string // how to grant it, or what to change instead
}

// MissingCapabilities returns the capabilities cfg needs that have lacks:
// CAP_NET_RAW for each raw tunnel, CAP_NET_ADMIN for a TUN device. A nil
// have asks the running process (its effective set, from
// /proc/self/status).
func MissingCapabilities(cfg *config.Config, have func(bit int) bool) []MissingCapability {
	if have == nil {
		have = hasCapability
	}
	var out []MissingCapability
	if !have(CapNetRaw) {
		for _, t := range cfg.Tunnels {
			if t.Transport == config.TransportRaw {
				out = append(out, MissingCapability{Name: "CAP_NET_RAW",
					Why: fmt.Sprintf("tunnel %q has transport = \"raw\"", t.Name), Hint: rawHint})
			}
		}
	}
	if cfg.TUN != nil && !have(CapNetAdmin) {
		out = append(out, MissingCapability{Name: "CAP_NET_ADMIN", Why: "the tun block creates a TUN device",
			Hint: errNeedNetAdmin.Error() + "; without it the other services run and the device is reported down"})
	}
	return out
}

// hasCapability reports whether the process has the capability bit in its
// effective set; without /proc it assumes root has every one.
func hasCapability(bit int) bool {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return os.Geteuid() == 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				return os.Geteuid() == 0
			}
			return caps&(1<<bit) != 0
		}
	}
	return os.Geteuid() == 0
}
