package daemon

import (
	"net/http"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// The /metrics endpoint is served by client_golang's promhttp from a
// registry holding the daemon's collector, which reads the stack's and the
// services' counters at scrape time (nothing is cached between scrapes),
// and the library's Go runtime and process collectors.

// Metric types.
const (
	counter = "counter"
	gauge   = "gauge"
)

// family is one metric: its name, help text, type and samples.
type family struct {
	name, help, typ string
	samples         []sample
}

type sample struct {
	labels []string // name, value, name, value, ...
	value  string
}

func (f *family) add(value string, labels ...string) {
	f.samples = append(f.samples, sample{labels: labels, value: value})
}

func u64(v uint64) string  { return strconv.FormatUint(v, 10) }
func i64(v int64) string   { return strconv.FormatInt(v, 10) }
func f64(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }

// collect reads every counter of the daemon into metric families.
func (d *Daemon) collect() []*family {
	st := d.Status()
	fam := func(name, typ, help string) *family { return &family{name: name, typ: typ, help: help} }

	build := fam("ipipstack_build_info", gauge, "Build information; the value is always 1.")
	build.add("1", "version", st.Build.Version, "goversion", st.Build.GoVersion, "gvisor", st.Build.GVisor)
	start := fam("ipipstack_start_time_seconds", gauge, "Unix time the daemon started.")
	start.add(f64(float64(st.Started.UnixNano()) / 1e9))
	draining := fam("ipipstack_draining", gauge, "1 while the daemon is shutting down and draining connections.")
	draining.add(boolValue(st.Draining))

	info := fam("ipipstack_tunnel_info", gauge, "Tunnel configuration; the value is always 1.")
	mtu := fam("ipipstack_tunnel_mtu_bytes", gauge, "Inner MTU of the tunnel.")
	rxp := fam("ipipstack_tunnel_rx_packets_total", counter, "Inner packets received from the peer and delivered to the stack.")
	rxb := fam("ipipstack_tunnel_rx_bytes_total", counter, "Bytes of inner packets received from the peer.")
	txp := fam("ipipstack_tunnel_tx_packets_total", counter, "Inner packets sent to the peer.")
	txb := fam("ipipstack_tunnel_tx_bytes_total", counter, "Bytes of inner packets sent to the peer.")
	drops := fam("ipipstack_tunnel_drops_total", counter, "Packets dropped by the tunnel, by reason (queue_full: by the full queue in front of it).")
	seen := fam("ipipstack_tunnel_last_seen_timestamp_seconds", gauge, "Unix time the last outer datagram arrived from the peer; 0 if none has.")
	coalesced := fam("ipipstack_tunnel_rx_coalesced_packets_total", counter, "Received inner packets that reached the stack merged into larger TCP segments.")
	pmtuLearned := fam("ipipstack_tunnel_path_mtu_learned_total", counter, "IPv6 path MTUs learned from Packet Too Big.")
	pmtuCut := fam("ipipstack_tunnel_path_mtu_cut_packets_total", counter, "IPv6 packets the stack sent that were cut to fit a learned path MTU.")
	outerPMTU := fam("ipipstack_tunnel_outer_path_mtu_bytes", gauge, "Outer path MTU learned from the kernel that holds the tunnel MTU down; 0 if none.")
	outerExpiry := fam("ipipstack_tunnel_outer_path_mtu_expiry_timestamp_seconds", gauge, "Unix time the learned outer path MTU expires and the tunnel MTU goes back up; 0 if none is learned.")
	filterFlows := fam("ipipstack_tunnel_filter_flows", gauge, "Flows in the flow table of the tunnel's filter (tunnels with a filter block only).")
	filterEvicted := fam("ipipstack_tunnel_filter_evicted_total", counter, "Flows dropped from the tunnel filter's full flow table to make room (max_flows).")
	outerFrag := fam("ipipstack_tunnel_outer_fragmentation", gauge, "1 while the outer path is narrower than IPv6's minimum MTU and outer packets above it leave without DF.")
	for _, t := range st.Tunnels {
		info.add("1", "tunnel", t.Name, "transport", t.Transport, "local", t.Local, "remote", t.Remote, "peer", t.Peer)
		mtu.add(u64(uint64(t.MTU)), "tunnel", t.Name)
		rxp.add(u64(t.RxPackets), "tunnel", t.Name)
		rxb.add(u64(t.RxBytes), "tunnel", t.Name)
		txp.add(u64(t.TxPackets), "tunnel", t.Name)
		txb.add(u64(t.TxBytes), "tunnel", t.Name)
		for _, r := range reasonNames() {
			drops.add(u64(t.Drops[r]), "tunnel", t.Name, "reason", r)
		}
		ls := "0"
		if t.LastSeen != nil {
			ls = f64(float64(t.LastSeen.UnixNano()) / 1e9)
		}
		seen.add(ls, "tunnel", t.Name)
		coalesced.add(u64(t.RxCoalesced), "tunnel", t.Name)
		pmtuLearned.add(u64(t.PathMTULearned), "tunnel", t.Name)
		pmtuCut.add(u64(t.PathMTUCut), "tunnel", t.Name)
		outerPMTU.add(i64(int64(t.OuterPathMTU)), "tunnel", t.Name)
		exp := "0"
		if t.OuterPathMTUExpires != nil {
			exp = f64(float64(t.OuterPathMTUExpires.UnixNano()) / 1e9)
		}
		outerExpiry.add(exp, "tunnel", t.Name)
		outerFrag.add(boolValue(t.OuterFragmentation), "tunnel", t.Name)
		if f := t.Filter; f != nil {
			filterFlows.add(i64(int64(f.Flows)), "tunnel", t.Name)
			filterEvicted.add(u64(f.Evicted), "tunnel", t.Name)
		}
	}

	active := fam("ipipstack_service_active_connections", gauge, "Connections (UDP: sessions) open now.")
	total := fam("ipipstack_service_connections_total", counter, "Connections accepted (UDP: sessions created).")
	rejected := fam("ipipstack_service_rejected_total", counter, "Connections (UDP: datagrams) refused because max_connections was reached.")
	dialFail := fam("ipipstack_service_dial_failures_total", counter, "Dials of the target that failed.")
	bytes := fam("ipipstack_service_bytes_total", counter, "Payload bytes relayed, by direction (to_target or from_target).")
	for _, s := range st.Services {
		l := []string{"service", s.Name, "kind", s.Kind}
		active.add(i64(s.Active), l...)
		total.add(u64(s.Total), l...)
		rejected.add(u64(s.Rejected), l...)
		dialFail.add(u64(s.DialFailures), l...)
		bytes.add(u64(s.BytesToTarget), append(l, "direction", "to_target")...)
		bytes.add(u64(s.BytesFromTarget), append(l, "direction", "from_target")...)
	}

	reasm := fam("ipipstack_reassembly_bytes", gauge, "Memory held by IP reassembly for incomplete datagrams, by family.")
	for _, f := range []string{"ipv4", "ipv6"} {
		if n, ok := st.ReassemblyBytes[f]; ok {
			reasm.add(i64(int64(n)), "family", f)
		}
	}

	limits := fam("ipipstack_reassembly_limits_applied", gauge, "1 if the stack block's IP reassembly limits are in force; 0 if this gVisor version hides the state they are set in, and gVisor's built-in limits apply.")
	limits.add(boolValue(st.ReassemblyLimitsApplied))

	out := []*family{build, start, draining, info, mtu, rxp, rxb, txp, txb, drops, seen,
		coalesced, pmtuLearned, pmtuCut, outerPMTU, outerExpiry, outerFrag, active, total, rejected, dialFail, bytes, reasm, limits}
	if len(filterFlows.samples) > 0 { // only tunnels with a filter block have them
		out = append(out, filterFlows, filterEvicted)
	}
	out = append(out, collectPeers(&st)...)   // keepalive.go
	out = append(out, collectSockets(&st)...) // sockets.go
	if f := st.Forwarding; f != nil {
		refrag := fam("ipipstack_forward_refragmented_total", counter, "IPv4 packets the router cut to fit the link they left by.")
		refrag.add(u64(f.Refragmented))
		frags := fam("ipipstack_forward_fragments_total", counter, "Fragments those packets were cut into.")
		frags.add(u64(f.Fragments))
		ttl := fam("ipipstack_forward_ttl_expired_total", counter, "IPv4 packets to forward that arrived with TTL 1 and were answered with Time Exceeded.")
		ttl.add(u64(f.TTLExpired))
		incomplete := fam("ipipstack_forward_incomplete_datagrams_total", counter, "UDP datagrams the router sent itself that lost a fragment before their checksum was complete.")
		incomplete.add(u64(f.IncompleteDatagrams))
		overflow := fam("ipipstack_forward_offset_overflow_total", counter, "IPv4 packets to cut whose data would end past byte 65535 of their datagram, dropped.")
		overflow.add(u64(f.OffsetOverflow))
		out = append(out, refrag, frags, ttl, incomplete, overflow)
	}
	if st.TUN != nil {
		up := fam("ipipstack_tun_up", gauge, "1 if the TUN device is up.")
		up.add(boolValue(st.TUN.Up), "device", st.TUN.Name)
		out = append(out, up)
	}
	return out
}

func boolValue(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

// collector is a prometheus.Collector over Daemon.collect. It is
// unchecked (Describe sends nothing) because its label sets depend on the
// configuration.
type collector struct{ d *Daemon }

// Describe implements prometheus.Collector.
func (collector) Describe(chan<- *prometheus.Desc) {}

// Collect implements prometheus.Collector.
func (c collector) Collect(ch chan<- prometheus.Metric) {
	for _, f := range append(c.d.collect(), c.d.collectListeners()...) {
		vt := prometheus.GaugeValue
		if f.typ == counter {
			vt = prometheus.CounterValue
		}
		for _, s := range f.samples {
			names := make([]string, 0, len(s.labels)/2)
			values := make([]string, 0, len(s.labels)/2)
			for i := 0; i+1 < len(s.labels); i += 2 {
				names = append(names, s.labels[i])
				values = append(values, s.labels[i+1])
			}
			v, err := strconv.ParseFloat(s.value, 64)
			if err != nil {
				continue
			}
			m, err := prometheus.NewConstMetric(prometheus.NewDesc(f.name, f.help, names, nil), vt, v, values...)
			if err != nil {
				continue
			}
			ch <- m
		}
	}
}

// metricsHandler serves the daemon's metrics in the Prometheus formats,
// with the client library's standard Go runtime (go_goroutines, go_memstats_*,
// ...) and process (process_open_fds, process_resident_memory_bytes, ...)
// series next to the daemon's own.
func (d *Daemon) metricsHandler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collector{d})
	reg.MustRegister(collectors.NewGoCollector())
	reg.MustRegister(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}
