package mesh

import (
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshd/meshd/proxy"
)

// BenchmarkRecordRequest is the metrics' cost of one request once its
// label combination was seen: the series lookup, the counters, the
// histogram and the dashboard's timeline.
func BenchmarkRecordRequest(b *testing.B) {
	m := newReqMetrics(prometheus.Labels{"role": RoleGateway, "region": "eu"})
	o := outcome{key: seriesKey{listener: "mesh", service: "web", route: "default", region: "eu", class: codeClass(200)},
		end: time.Now(), took: 3 * time.Millisecond, respBytes: 1200, attempts: 1}
	m.record(&o)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.record(&o)
		}
	})
}

// nopWriter is a ResponseWriter that costs nothing.
type nopWriter struct{ h http.Header }

func (w *nopWriter) Header() http.Header         { return w.h }
func (w *nopWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *nopWriter) WriteHeader(int)             {}

// BenchmarkObserveRequest is what the observer in front of a listener
// adds to a request: the pooled recorder, two clock reads, the labels
// read from the route and the upstream, and the record.
func BenchmarkObserveRequest(b *testing.B) {
	n := &Node{Config: Config{Role: RoleGateway, Region: "eu"}}
	n.snap.Store(&Snapshot{known: map[string]bool{"web": true}})
	n.reqs = newReqMetrics(prometheus.Labels{"role": RoleGateway, "region": "eu"})
	up := &proxy.Upstream{Key: "k", Addr: "127.0.0.1:1", Region: "eu"}
	rr := &reqRoute{service: "web"}
	body := []byte("hello\n")
	h := n.observe("mesh", nil, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		noteRoute(w, rr)
		w.Write(body)
		observed(w, r, up, 1, 0)
	}))
	r, _ := http.NewRequest("GET", "http://web.mesh/", nil)
	w := &nopWriter{h: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		h.ServeHTTP(w, r)
	}
}
