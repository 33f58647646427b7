package mesh

import (
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/meshd/meshd/proxy"
)

// TestBalancerSpreadsSequentialRequests: two equal instances share
// sequential requests. With one request at a time nothing is ever in
// flight, so only the latency estimates decide; the instance passed over
// must be measured again soon, or a single slow first answer (a new
// connection, a GC pause) would starve it.
func TestBalancerSpreadsSequentialRequests(t *testing.T) {
	var hits [2]atomic.Int64
	var ups []*proxy.Upstream
	for i := range hits {
		app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits[i].Add(1) }))
		defer app.Close()
		addr := app.Listener.Addr().String()
		ups = append(ups, &proxy.Upstream{Key: addr, Addr: addr, Name: addr})
	}
	set := newUpstreamSet(ups, nil)
	pool := &proxy.Pool{}
	defer pool.CloseIdle()
	h := &proxy.Handler{Via: "test", Pool: pool, Route: func(*http.Request) ([]*proxy.Upstream, error) { return set.pick(), nil }}
	const n = 100
	for i := 0; i < n; i++ {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest("GET", "http://web.mesh/", nil))
		if w.Code != 200 {
			t.Fatalf("request %d: %d", i, w.Code)
		}
	}
	// Starving looked like 92/8; on a busy machine (CI, -race) the
	// latency estimates themselves are noisy and a fair split can land
	// near 16/84: at least a tenth each.
	a, b := hits[0].Load(), hits[1].Load()
	if a < n/10 || b < n/10 {
		t.Fatalf("%d sequential requests to two equal instances split %d/%d, want each at least %d", n, a, b, n/10)
	}
	t.Logf("%d sequential requests split %d/%d", n, a, b)
}
