package daemon

import (
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ipipstack/ipipstack/config"
	"github.com/ipipstack/ipipstack/endpoint"
	"github.com/ipipstack/ipipstack/endpoint/endpointtest"
	"github.com/ipipstack/ipipstack/stack"
)

// stuckTransport is a transport whose writes block until it is closed.
type stuckTransport struct {
	endpoint.Transport
	once    sync.Once
	release chan struct{}
}

func (s *stuckTransport) WriteBatch([]endpoint.Message) (int, error) {
	<-s.release
	return 0, endpoint.ErrClosed
}

func (s *stuckTransport) Close() error {
	s.once.Do(func() { close(s.release) })
	return s.Transport.Close()
}

// TestQueueDropsReported overflows the queue in front of a tunnel whose
// link never drains and checks that /status (JSON) and /metrics report
// the queue's drops, as many as the stack counted.
func TestQueueDropsReported(t *testing.T) {
	oa, ob := netip.MustParseAddrPort("198.51.100.1:4700"), netip.MustParseAddrPort("198.51.100.2:4701")
	ta, _ := endpointtest.Pipe(oa, ob, 0)
	stuck := &stuckTransport{Transport: ta, release: make(chan struct{})}
	s, err := stack.New(stack.Config{Tunnels: []stack.Tunnel{{Name: "b", Local: oa, Remote: ob,
		Addresses: []netip.Prefix{netip.MustParsePrefix("10.86.0.1/24")}, Conn: stuck}}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	defer stuck.Close() // before s.Close

	// 8 sockets of 1000 datagrams for a queue of 4096.
	var wg sync.WaitGroup
	for i := range 8 {
		c, err := s.Dial("udp4", fmt.Sprintf("10.86.0.2:%d", 9000+i))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetWriteDeadline(time.Now().Add(2 * time.Second))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 1000 {
				if _, err := c.Write(make([]byte, 64)); err != nil {
					return
				}
			}
		}()
	}
	wg.Wait()
	want := s.Stats()[0].QueueDrops
	if want == 0 {
		t.Fatal("the queue dropped nothing: the test is blind")
	}

	d := &Daemon{cfg: &config.Config{}, st: s}
	rec := httptest.NewRecorder()
	d.serveStatus(rec, httptest.NewRequest("GET", "/status", nil))
	var st Status
	if err := json.Unmarshal(rec.Body.Bytes(), &st); err != nil {
		t.Fatalf("/status: %v", err)
	}
	if len(st.Tunnels) != 1 {
		t.Fatalf("/status tunnels = %+v", st.Tunnels)
	}
	if got := st.Tunnels[0]; got.Drops[QueueFull] < want || got.DropsTotal < got.Drops[QueueFull] {
		t.Errorf("/status drops = %v, total %d; want %s >= %d, in the total", got.Drops, got.DropsTotal, QueueFull, want)
	}
	rec = httptest.NewRecorder()
	d.metricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	line := fmt.Sprintf(`ipipstack_tunnel_drops_total{reason="queue_full",tunnel="b"} %d`, want)
	if !strings.Contains(rec.Body.String(), line) {
		t.Errorf("/metrics lacks %q:\n%s", line, rec.Body.String())
	}
}
