package cli

import (
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/ipipstack/ipipstack/daemon"
)

// writeSockets prints the outer sockets that tunnels share, with the
// datagrams they received from no tunnel's peer (wrong_peer), which no
// tunnel's drops count; nothing if no socket is shared.
func writeSockets(w io.Writer, st *daemon.Status) {
	if len(st.Sockets) == 0 {
		return
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "SOCKET\tTRANSPORT\tTUNNELS\tRECEIVED\tWRONG PEER")
	for _, s := range st.Sockets {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\n", s.Local, s.Transport, s.Tunnels, s.Received, s.WrongPeer)
	}
	tw.Flush()
}
