package cache

import (
	"context"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeClock is a goroutine-safe clock the tests move by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *fakeClock {
	return &fakeClock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// origin is a test upstream: it counts calls, records the last request,
// and answers with respond (default: 200, the configured header, body
// "body-N" where N counts calls).
type origin struct {
	clock   *fakeClock
	calls   atomic.Int64
	mu      sync.Mutex
	last    *http.Request
	header  http.Header
	status  int
	respond func(o *origin, n int64, w http.ResponseWriter, r *http.Request)
}

func (o *origin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := o.calls.Add(1)
	o.mu.Lock()
	o.last = r
	respond := o.respond
	o.mu.Unlock()
	if respond != nil {
		respond(o, n, w, r)
		return
	}
	o.write(n, w)
}

// write sends the configured response with Date from the fake clock.
func (o *origin) write(n int64, w http.ResponseWriter) {
	h := w.Header()
	for k, v := range o.header {
		h[k] = v
	}
	if _, ok := h["Date"]; !ok {
		h.Set("Date", o.clock.Now().UTC().Format(http.TimeFormat))
	}
	body := "body-" + strconv.FormatInt(n, 10)
	h.Set("Content-Length", strconv.Itoa(len(body)))
	status := o.status
	if status == 0 {
		status = http.StatusOK
	}
	w.WriteHeader(status)
	_, _ = w.Write([]byte(body))
}

func (o *origin) lastRequest() *http.Request {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.last
}

// newTestStore starts a Store on a fake clock in front of a fresh origin.
func newTestStore(t testing.TB, mod func(*Store)) (*Store, *origin, *fakeClock, http.Handler) {
	t.Helper()
	clock := newClock()
	s := &Store{Now: clock.Now, MaxBytes: 64 << 20, MaxObject: 1 << 20}
	if mod != nil {
		mod(s)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	o := &origin{clock: clock, header: http.Header{}}
	return s, o, clock, s.Middleware(o)
}

// do sends one request through h. hdr alternates names and values.
func do(h http.Handler, method, target string, hdr ...string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, target, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Add(hdr[i], hdr[i+1])
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

func hdr(kv ...string) http.Header {
	h := http.Header{}
	for i := 0; i+1 < len(kv); i += 2 {
		h.Add(kv[i], kv[i+1])
	}
	return h
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func httpDate(t time.Time) string { return t.UTC().Format(http.TimeFormat) }

func hasPrefix(s, p string) bool { return strings.HasPrefix(s, p) }

func counterValue(t testing.TB, c prometheus.Collector) float64 {
	t.Helper()
	ch := make(chan prometheus.Metric, 1)
	c.Collect(ch)
	var m dto.Metric
	if err := (<-ch).Write(&m); err != nil {
		t.Fatal(err)
	}
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	}
	t.Fatal("not a counter or gauge")
	return 0
}
