package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strconv"
	"time"

	"github.com/ipipstack/ipipstack/stack"
)

// The diagnostics of the status server, POST /v1/ping and POST
// /v1/traceroute, run the stack's Ping and Traceroute for `ipipstack ping`
// and `ipipstack traceroute`. Their answers are streamed as JSON lines, one
// PingReply or TraceHop per line, as they come. Every parameter is
// bounded, and at most maxDiagnostics run at once (more get 429), so that
// the status server cannot be made to flood the tunnels.
const (
	maxDiagnostics = 2
	// Ping parameters: count (default 4), interval between requests
	// (default 1s) and timeout of each (default 1s).
	defaultPingCount    = 4
	maxPingCount        = 100
	defaultPingInterval = time.Second
	minPingInterval     = 100 * time.Millisecond
	maxPingWait         = 10 * time.Second
	defaultPingTimeout  = time.Second
	// maxTraceWait bounds traceroute's wait per hop.
	maxTraceWait = 10 * time.Second
)

// PingReply is one echo request of POST /v1/ping and its answer.
type PingReply struct {
	Seq  int    `json:"seq"`
	Addr string `json:"addr"`
	// RTTSeconds is the round-trip time; 0 with Error set.
	RTTSeconds float64 `json:"rtt_seconds,omitempty"`
	// Error is why no reply came ("timeout", "no route to host", …).
	Error string `json:"error,omitempty"`
}

// TraceHop is one hop of POST /v1/traceroute (stack.Hop).
type TraceHop struct {
	TTL int `json:"ttl"`
	// Addr is who answered; "" if nothing did within the wait.
	Addr        string  `json:"addr,omitempty"`
	RTTSeconds  float64 `json:"rtt_seconds,omitempty"`
	Reached     bool    `json:"reached,omitempty"`
	Unreachable bool    `json:"unreachable,omitempty"`
	// Error ends the trace early (the stack closed, the request ended).
	Error string `json:"error,omitempty"`
}

// slots returns the semaphore of running diagnostics.
func (d *Daemon) slots() chan struct{} {
	d.diagOnce.Do(func() { d.diagSlots = make(chan struct{}, maxDiagnostics) })
	return d.diagSlots
}

// diagRoutes adds the diagnostics to the status server's mux.
func (d *Daemon) diagRoutes(mux *http.ServeMux) {
	mux.HandleFunc("/v1/ping", func(w http.ResponseWriter, r *http.Request) { d.serveDiag(w, r, d.ping) })
	mux.HandleFunc("/v1/traceroute", func(w http.ResponseWriter, r *http.Request) { d.serveDiag(w, r, d.traceroute) })
}

// diagFunc checks its parameters (returning an error for a 400) and
// returns the function that runs it, writing lines with emit.
type diagFunc func(q map[string][]string, dst netip.Addr) (func(ctx context.Context, emit func(any)), error)

func (d *Daemon) serveDiag(w http.ResponseWriter, r *http.Request, f diagFunc) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		http.Error(w, "method not allowed: use POST", http.StatusMethodNotAllowed)
		return
	}
	q := r.URL.Query()
	dst, err := netip.ParseAddr(q.Get("addr"))
	if err != nil {
		http.Error(w, fmt.Sprintf("addr: want an IP address inside the tunnels, not %q", q.Get("addr")), http.StatusBadRequest)
		return
	}
	run, err := f(q, dst.Unmap())
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if d.st == nil || d.draining.Load() {
		http.Error(w, "the daemon is shutting down", http.StatusServiceUnavailable)
		return
	}
	select {
	case d.slots() <- struct{}{}:
		defer func() { <-d.slots() }()
	default:
		http.Error(w, fmt.Sprintf("%d diagnostics are already running; try again when one is done", maxDiagnostics), http.StatusTooManyRequests)
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-store")
	enc := json.NewEncoder(w)
	flusher, _ := w.(http.Flusher)
	run(r.Context(), func(v any) {
		enc.Encode(v)
		if flusher != nil {
			flusher.Flush()
		}
	})
}

// durationParam parses q[name] within [lo, hi], or returns def if unset.
func durationParam(q map[string][]string, name string, def, lo, hi time.Duration) (time.Duration, error) {
	v := first(q[name])
	if v == "" {
		return def, nil
	}
	dur, err := time.ParseDuration(v)
	if err != nil || dur < lo || dur > hi {
		return 0, fmt.Errorf("%s: want a duration from %v to %v, not %q", name, lo, hi, v)
	}
	return dur, nil
}

// intParam parses q[name] within [lo, hi], or returns def if unset.
func intParam(q map[string][]string, name string, def, lo, hi int) (int, error) {
	v := first(q[name])
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		return 0, fmt.Errorf("%s: want a number from %d to %d, not %q", name, lo, hi, v)
	}
	return n, nil
}

func first(v []string) string {
	if len(v) == 0 {
		return ""
	}
	return v[0]
}

func (d *Daemon) ping(q map[string][]string, dst netip.Addr) (func(context.Context, func(any)), error) {
	count, err := intParam(q, "count", defaultPingCount, 1, maxPingCount)
	if err != nil {
		return nil, err
	}
	interval, err := durationParam(q, "interval", defaultPingInterval, minPingInterval, maxPingWait)
	if err != nil {
		return nil, err
	}
	timeout, err := durationParam(q, "timeout", defaultPingTimeout, minPingInterval, maxPingWait)
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context, emit func(any)) {
		for seq := 1; seq <= count; seq++ {
			start := time.Now()
			pctx, cancel := context.WithTimeout(ctx, timeout)
			rtt, err := d.st.Ping(pctx, dst)
			cancel()
			if ctx.Err() != nil {
				return // the client went away
			}
			r := PingReply{Seq: seq, Addr: dst.String()}
			if err != nil {
				r.Error = pingError(err)
			} else {
				r.RTTSeconds = rtt.Seconds()
			}
			emit(r)
			if seq == count {
				return
			}
			t := time.NewTimer(interval - time.Since(start))
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
	}, nil
}

// pingError shortens a Ping error to what ping prints.
func pingError(err error) string {
	var te interface{ Timeout() bool }
	if errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &te) && te.Timeout()) {
		return "timeout"
	}
	if u := errors.Unwrap(err); u != nil {
		return u.Error()
	}
	return err.Error()
}

func (d *Daemon) traceroute(q map[string][]string, dst netip.Addr) (func(context.Context, func(any)), error) {
	maxHops, err := intParam(q, "max_hops", stack.DefaultTraceMaxHops, 1, stack.MaxTraceHops)
	if err != nil {
		return nil, err
	}
	wait, err := durationParam(q, "wait", stack.DefaultTraceWait, minPingInterval, maxTraceWait)
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context, emit func(any)) {
		_, err := d.st.Traceroute(ctx, dst, stack.TraceOptions{MaxHops: maxHops, Wait: wait}, func(h stack.Hop) {
			th := TraceHop{TTL: h.TTL, Reached: h.Reached, Unreachable: h.Unreachable}
			if h.Addr.IsValid() {
				th.Addr, th.RTTSeconds = h.Addr.String(), h.RTT.Seconds()
			}
			emit(th)
		})
		if err != nil && ctx.Err() == nil {
			emit(TraceHop{Error: pingError(err)})
		}
	}, nil
}
