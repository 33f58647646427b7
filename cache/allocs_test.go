// The race detector makes sync.Pool drop buffers on purpose, so
// allocation counts only mean something without it.

//go:build !race

package cache

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

// TestHitAllocs keeps the hit path allocation-free, for plain and Vary
// responses and for HEAD.
func TestHitAllocs(t *testing.T) {
	_, o, _, h := newTestStore(t, nil)
	o.header = hdr("Cache-Control", "max-age=600", "Vary", "Accept-Encoding", "Content-Type", "text/plain")
	cases := []*http.Request{
		httptest.NewRequest("GET", "http://example.com/a", nil),
		httptest.NewRequest("HEAD", "http://example.com/a", nil),
		httptest.NewRequest("GET", "http://example.com/b", nil),
	}
	cases[2].Header.Set("Accept-Encoding", "gzip, br")
	for _, r := range cases {
		w := &benchWriter{h: make(http.Header)}
		h.ServeHTTP(w, httptest.NewRequest("GET", r.URL.String(), nil)) // fill (GET)
		h.ServeHTTP(w, r)
		w.reset()
		h.ServeHTTP(w, r)
		if w.h.Get("Cache-Status") != "meshd; hit" {
			t.Fatalf("%s %s: not a hit: %q", r.Method, r.URL, w.h.Get("Cache-Status"))
		}
		if n := testing.AllocsPerRun(200, func() { w.reset(); h.ServeHTTP(w, r) }); n != 0 {
			t.Errorf("%s %s: %v allocations per hit", r.Method, r.URL, n)
		}
	}
}
