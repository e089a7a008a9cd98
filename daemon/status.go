package daemon

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/ipipstack/ipipstack/endpoint/encap"
	"github.com/ipipstack/ipipstack/internal/buildinfo"
)

// Status is the daemon's state as served at /status. Its JSON form is a
// stable interface: fields may be added, never renamed.
type Status struct {
	Build buildinfo.Info `json:"build"`
	// Started is when the daemon came up; Uptime is seconds since then.
	Started time.Time `json:"started"`
	Uptime  float64   `json:"uptime_seconds"`
	// Draining is true once shutdown has begun.
	Draining bool           `json:"draining"`
	Tunnels  []TunnelStatus `json:"tunnels"`
	// Sockets are the outer sockets that tunnels share (sockets.go):
	// datagrams from no tunnel's peer count there, under wrong_peer.
	Sockets []SocketStatus `json:"sockets"`
	// Services are the forwards, reverse forwards and SOCKS5 proxies, in
	// that order and in file order within each kind.
	Services []ServiceStatus `json:"services"`
	// TUN is the TUN device, nil if none is configured.
	TUN *TUNStatus `json:"tun,omitempty"`
	// ReassemblyBytes is the memory IP reassembly holds now, by family
	// ("ipv4", "ipv6"); a family is absent if gVisor hides it.
	ReassemblyBytes map[string]int `json:"reassembly_bytes,omitempty"`
	// ReassemblyLimitsApplied is false when the stack could not reach
	// gVisor's reassembly state (stack.Stack.ReassemblyLimitsApplied):
	// the stack block's reassembly limits are then not in force.
	ReassemblyLimitsApplied bool `json:"reassembly_limits_applied"`
	// Forwarding is what the stack did to packets it forwarded; nil unless
	// it forwards (stack.forwarding, or a TUN device).
	Forwarding *ForwardingStatus `json:"forwarding,omitempty"`
	// StatusServer is the status server itself; nil if it is disabled.
	StatusServer *StatusServerStatus `json:"status_server,omitempty"`
	// Ready is what /readyz answers: every tunnel with a keepalive has a
	// live peer and every listener is open. NotReady says why not.
	Ready    bool     `json:"ready"`
	NotReady []string `json:"not_ready,omitempty"`
}

// ForwardingStatus is stack.ForwardStats: IPv4 packets the router cut to
// fit the next link and the pieces, IPv4 packets discarded with TTL 1,
// datagrams the router sent itself that lost a fragment, and IPv4 packets
// to cut that were dropped because their data would end past byte 65535.
type ForwardingStatus struct {
	Refragmented        uint64 `json:"refragmented"`
	Fragments           uint64 `json:"fragments"`
	TTLExpired          uint64 `json:"ttl_expired"`
	IncompleteDatagrams uint64 `json:"incomplete_datagrams"`
	OffsetOverflow      uint64 `json:"offset_overflow"`
}

// TunnelStatus is one tunnel's configuration and counters.
type TunnelStatus struct {
	Name      string   `json:"name"`
	Transport string   `json:"transport"`
	Local     string   `json:"local"`  // the outer address actually bound
	Remote    string   `json:"remote"` // the configured peer
	Peer      string   `json:"peer"`   // where packets go now (differs from Remote after roaming)
	Addresses []string `json:"addresses"`
	MTU       uint32   `json:"mtu"`
	RxPackets uint64   `json:"rx_packets"`
	RxBytes   uint64   `json:"rx_bytes"`
	TxPackets uint64   `json:"tx_packets"`
	TxBytes   uint64   `json:"tx_bytes"`
	// RxCoalesced counts received packets that reached the stack merged
	// into larger TCP segments; PathMTULearned the IPv6 path MTUs learned
	// from Packet Too Big, PathMTUCut the packets cut to fit one.
	RxCoalesced    uint64 `json:"rx_coalesced"`
	PathMTULearned uint64 `json:"path_mtu_learned"`
	PathMTUCut     uint64 `json:"path_mtu_cut"`
	// OuterPathMTU is the outer path MTU learned when the kernel refused
	// a datagram as too big, while it holds the MTU down (0: none);
	// OuterPathMTULearned is when it was learned, OuterPathMTUExpires when
	// the tunnel asks the kernel again and goes back up.
	// OuterFragmentation is true while the outer path is narrower than
	// IPv6's minimum MTU: the MTU stays at 1280 and outer packets above
	// the path leave without DF, fragmented on the way.
	OuterPathMTU        int        `json:"outer_path_mtu"`
	OuterPathMTULearned *time.Time `json:"outer_path_mtu_learned,omitempty"`
	OuterPathMTUExpires *time.Time `json:"outer_path_mtu_expires,omitempty"`
	OuterFragmentation  bool       `json:"outer_fragmentation"`
	// Drops counts dropped packets by reason (encap.Reason names, and
	// QueueFull for the tunnel NIC's queue, stack.TunnelStats.QueueDrops);
	// every reason is present, zero or not.
	Drops      map[string]uint64 `json:"drops"`
	DropsTotal uint64            `json:"drops_total"`
	// LastSeen is when the last accepted datagram arrived; nil if none has.
	LastSeen *time.Time `json:"last_seen,omitempty"`
	// PeerState is the watched state of the peer (keepalive.go).
	PeerState *PeerStatus `json:"peer_state,omitempty"`
	// Filter is the state of the tunnel's filter; nil without a filter
	// block. Its drops are under Drops["filtered"].
	Filter *FilterStatus `json:"filter,omitempty"`
}

// FilterStatus is the flow table of a tunnel's filter.
type FilterStatus struct {
	// Flows is the number of flows in the table now; Evicted counts the
	// flows dropped from a full table (max_flows) to make room.
	Flows   int    `json:"flows"`
	Evicted uint64 `json:"evicted"`
}

// QueueFull is the drop reason of the packets that the queue in front of a
// tunnel dropped because it was full (stack.TunnelStats.QueueDrops).
const QueueFull = "queue_full"

// Service kinds.
const (
	KindForward = "forward" // host listener → address inside the tunnels
	KindReverse = "reverse" // listener inside the stack → host address
	KindSOCKS5  = "socks5"
)

// ServiceStatus is one service's configuration and counters. For UDP
// forwards a "connection" is a session (one per client address).
type ServiceStatus struct {
	Name     string `json:"name"`
	Kind     string `json:"kind"`     // KindForward, KindReverse, KindSOCKS5 or KindHTTPProxy
	Protocol string `json:"protocol"` // "tcp" or "udp"
	Listen   string `json:"listen"`   // the address actually bound
	Target   string `json:"target,omitempty"`
	// Active is the number of connections (or UDP sessions) open now.
	Active int64 `json:"active"`
	// Total is the number of connections accepted (or sessions created).
	Total           uint64 `json:"total"`
	Rejected        uint64 `json:"rejected"`
	DialFailures    uint64 `json:"dial_failures"`
	BytesToTarget   uint64 `json:"bytes_to_target"`
	BytesFromTarget uint64 `json:"bytes_from_target"`
	// AcceptErrors counts failed accepts (out of file descriptors, most
	// likely), which the service retries with backoff; always 0 for UDP
	// forwards, which accept nothing.
	AcceptErrors uint64 `json:"accept_errors"`
	// Counters holds the kind's other counters (for SOCKS5:
	// handshake_errors, auth_failures, connects, udp_associations, ...).
	Counters map[string]uint64 `json:"counters,omitempty"`
}

// TUNStatus is the state of the TUN device.
type TUNStatus struct {
	Name string `json:"name"`
	MTU  int    `json:"mtu"`
	Up   bool   `json:"up"`
	// Error says why the device is not up.
	Error string `json:"error,omitempty"`
}

// Status returns a snapshot of the daemon's state and counters.
func (d *Daemon) Status() Status {
	now := time.Now()
	s := Status{
		Build:    d.build,
		Started:  d.started,
		Uptime:   now.Sub(d.started).Seconds(),
		Draining: d.draining.Load(),
		Tunnels:  []TunnelStatus{},
		Services: []ServiceStatus{},
	}
	for _, ts := range d.st.Stats() {
		t := TunnelStatus{
			Name:      ts.Name,
			Local:     ts.Local.String(),
			Peer:      ts.Peer.String(),
			MTU:       ts.MTU,
			RxPackets: ts.RxPackets,
			RxBytes:   ts.RxBytes,
			TxPackets: ts.TxPackets,
			TxBytes:   ts.TxBytes,
			Drops:     make(map[string]uint64, encap.NumReasons),

			RxCoalesced:    ts.RxCoalesced,
			PathMTULearned: ts.PathMTULearned,
			PathMTUCut:     ts.PathMTUCut,

			OuterPathMTU:       ts.OuterPathMTU,
			OuterFragmentation: ts.OuterFragmentation,
		}
		if ts.OuterPathMTU != 0 {
			learned, expires := ts.OuterPathMTULearned, ts.OuterPathMTUExpires
			t.OuterPathMTULearned, t.OuterPathMTUExpires = &learned, &expires
		}
		if ct := d.tunnelConfig(ts.Name); ct != nil {
			t.Transport = ct.Transport.String()
			t.Remote = ct.Remote.String()
			for _, a := range ct.Addresses {
				t.Addresses = append(t.Addresses, a.String())
			}
			if ct.Filter != nil {
				t.Filter = &FilterStatus{Flows: ts.Filter.Flows, Evicted: ts.Filter.Evicted}
			}
		}
		for r := 1; r < encap.NumReasons; r++ { // 0 is encap.OK
			t.Drops[encap.Reason(r).String()] = ts.Drops[r]
			t.DropsTotal += ts.Drops[r]
		}
		t.Drops[QueueFull] = ts.QueueDrops
		t.DropsTotal += ts.QueueDrops
		if !ts.LastSeen.IsZero() {
			ls := ts.LastSeen
			t.LastSeen = &ls
		}
		t.PeerState = d.peerStatus(ts.Name)
		s.Tunnels = append(s.Tunnels, t)
	}
	s.Sockets = d.socketStatus()         // sockets.go
	for _, sv := range d.serviceList() { // reload.go
		s.Services = append(s.Services, sv.status())
	}
	s.ReassemblyLimitsApplied = d.st.ReassemblyLimitsApplied()
	if v4, v6 := d.st.ReassemblyBytes(); v4 >= 0 || v6 >= 0 {
		s.ReassemblyBytes = map[string]int{}
		if v4 >= 0 {
			s.ReassemblyBytes["ipv4"] = v4
		}
		if v6 >= 0 {
			s.ReassemblyBytes["ipv6"] = v6
		}
	}
	if cfg := d.config(); cfg.Stack.Forwarding || cfg.TUN != nil {
		f := d.st.ForwardStats()
		s.Forwarding = &ForwardingStatus{Refragmented: f.Refragmented, Fragments: f.Fragments,
			TTLExpired: f.TTLExpired, IncompleteDatagrams: f.IncompleteDatagrams, OffsetOverflow: f.OffsetOverflow}
	}
	if d.config().TUN != nil {
		d.mu.Lock()
		ts := d.tunStatus
		d.mu.Unlock()
		s.TUN = &ts
	}
	s.StatusServer = d.statusServerStatus()
	s.NotReady = notReady(&s)
	s.Ready = len(s.NotReady) == 0
	return s
}

func (d *Daemon) serveStatus(w http.ResponseWriter, r *http.Request) {
	if !allowRead(w, r) {
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(d.Status())
}

func (d *Daemon) serveMetrics(w http.ResponseWriter, r *http.Request, metrics http.Handler) {
	if !allowRead(w, r) {
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	metrics.ServeHTTP(w, r)
}

func serveIndex(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/" {
		http.NotFound(w, r)
		return
	}
	if !allowRead(w, r) {
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Write([]byte("ipipstack status server\n\n/status   JSON state and counters\n/metrics  Prometheus metrics\n/healthz  200 while the process serves\n/readyz   200 when every keepalive peer is up, 503 and why otherwise\n"))
}

func allowRead(w http.ResponseWriter, r *http.Request) bool {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return false
	}
	return true
}
