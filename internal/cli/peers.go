package cli

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/ipipstack/ipipstack/daemon"
)

// writePeers prints the peer state of every tunnel and the readiness.
func writePeers(w io.Writer, st *daemon.Status, now time.Time) {
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TUNNEL\tPEER STATE\tSINCE\tKEEPALIVE\tPROBED\tRTT\tREPLIES/PROBES")
	for _, t := range st.Tunnels {
		p := t.PeerState
		if p == nil {
			continue
		}
		ka, addr, rtt := "off", "-", "-"
		if p.Keepalive > 0 {
			ka = (time.Duration(p.Keepalive * float64(time.Second))).String()
			addr = p.Address
		}
		if p.RTT != nil {
			rtt = (time.Duration(*p.RTT * float64(time.Second))).Round(time.Microsecond).String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d/%d\n", t.Name, p.State, ago(now.Sub(p.Since)), ka, addr, rtt, p.Replies, p.Probes)
	}
	tw.Flush()
	if st.Ready {
		fmt.Fprintln(w, "\nready")
		return
	}
	fmt.Fprintln(w, "\nNOT READY:")
	for _, why := range st.NotReady {
		fmt.Fprintf(w, "  %s\n", why)
	}
}
