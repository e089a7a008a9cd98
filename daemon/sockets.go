package daemon

// Tunnels that name the same local address (and port, for UDP) share one
// set of outer sockets (stack.Stack.SocketStats). A datagram from no
// tunnel's peer is counted once, by the socket, and by no tunnel: these
// counters are its own part of /status ("sockets") and /metrics
// (ipipstack_socket_*), labelled by transport and local address. The
// socket logs such datagrams itself, rate-limited (endpoint.Shared), so
// dropWatch does not.

// SocketStatus is one set of shared outer sockets and its counters.
type SocketStatus struct {
	Transport string `json:"transport"` // "udp" or "raw"
	Local     string `json:"local"`     // the address bound (port 0 for raw)
	Tunnels   int    `json:"tunnels"`   // how many tunnels use it now
	// WrongPeer counts datagrams from no tunnel's peer; Received every
	// datagram the sockets read.
	WrongPeer uint64 `json:"wrong_peer"`
	Received  uint64 `json:"received"`
}

// socketStatus returns the shared sockets' counters, for Status.
func (d *Daemon) socketStatus() []SocketStatus {
	out := []SocketStatus{}
	for _, ss := range d.st.SocketStats() {
		out = append(out, SocketStatus{Transport: ss.Transport.String(), Local: ss.Local.String(),
			Tunnels: ss.Tunnels, WrongPeer: ss.WrongPeer, Received: ss.Received})
	}
	return out
}

// collectSockets returns the metric families of the shared sockets.
func collectSockets(st *Status) []*family {
	tunnels := &family{name: "ipipstack_socket_tunnels", typ: gauge, help: "Tunnels sharing the outer socket."}
	wrong := &family{name: "ipipstack_socket_wrong_peer_total", typ: counter,
		help: "Outer datagrams the shared socket received from no tunnel's peer (counted here, not in any tunnel's drops)."}
	received := &family{name: "ipipstack_socket_received_total", typ: counter, help: "Outer datagrams the shared socket received."}
	for _, s := range st.Sockets {
		l := []string{"transport", s.Transport, "local", s.Local}
		tunnels.add(i64(int64(s.Tunnels)), l...)
		wrong.add(u64(s.WrongPeer), l...)
		received.add(u64(s.Received), l...)
	}
	return []*family{tunnels, wrong, received}
}
