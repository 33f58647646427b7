package cache

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"
)

// benchWriter is a reusable ResponseWriter: the benchmarks measure the
// middleware, not a recorder's allocations.
type benchWriter struct {
	h      http.Header
	status int
	n      int
}

func (b *benchWriter) Header() http.Header { return b.h }
func (b *benchWriter) WriteHeader(c int)   { b.status = c }
func (b *benchWriter) Write(p []byte) (int, error) {
	if b.status == 0 {
		b.status = 200
	}
	b.n += len(p)
	return len(p), nil
}
func (b *benchWriter) reset() { clear(b.h); b.status, b.n = 0, 0 }

// staticOrigin answers every request with the same body and header.
type staticOrigin struct {
	body []byte
	cc   string
}

func (o *staticOrigin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Cache-Control", o.cc)
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Etag", `"bench"`)
	h.Set("Date", time.Now().UTC().Format(http.TimeFormat))
	h.Set("Content-Length", strconv.Itoa(len(o.body)))
	w.WriteHeader(200)
	_, _ = w.Write(o.body)
}

func benchStore(b *testing.B, size int, cc string) (http.Handler, *Store) {
	b.Helper()
	s := &Store{}
	if err := s.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = s.Close() })
	return s.Middleware(&staticOrigin{body: []byte(strings.Repeat("x", size)), cc: cc}), s
}

func benchHit(b *testing.B, size int) {
	h, _ := benchStore(b, size, "max-age=3600")
	r := httptest.NewRequest("GET", "http://example.com/object", nil)
	w := &benchWriter{h: make(http.Header)}
	h.ServeHTTP(w, r)
	w.reset()
	h.ServeHTTP(w, r)
	if w.h.Get("Cache-Status") != "meshd; hit" {
		b.Fatalf("not a hit: %q", w.h.Get("Cache-Status"))
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		w.reset()
		h.ServeHTTP(w, r)
		if w.n != size {
			b.Fatalf("wrote %d bytes", w.n)
		}
	}
}

func BenchmarkHit1KiB(b *testing.B)   { benchHit(b, 1<<10) }
func BenchmarkHit100KiB(b *testing.B) { benchHit(b, 100<<10) }

// BenchmarkHit1KiBParallel shows hits do not contend with each other.
func BenchmarkHit1KiBParallel(b *testing.B) {
	h, _ := benchStore(b, 1<<10, "max-age=3600")
	r := httptest.NewRequest("GET", "http://example.com/object", nil)
	h.ServeHTTP(&benchWriter{h: make(http.Header)}, r)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		w := &benchWriter{h: make(http.Header)}
		for pb.Next() {
			w.reset()
			h.ServeHTTP(w, r)
		}
	})
}

// BenchmarkMiss forwards every request (no-store): the cost of the miss
// path around an origin that costs nearly nothing.
func BenchmarkMiss(b *testing.B) {
	h, _ := benchStore(b, 1<<10, "no-store")
	r := httptest.NewRequest("GET", "http://example.com/object", nil)
	w := &benchWriter{h: make(http.Header)}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		w.reset()
		h.ServeHTTP(w, r)
		if w.n != 1<<10 {
			b.Fatalf("wrote %d bytes", w.n)
		}
	}
}

// BenchmarkMissStore fetches and stores a new URL every time.
func BenchmarkMissStore(b *testing.B) {
	h, _ := benchStore(b, 1<<10, "max-age=3600")
	w := &benchWriter{h: make(http.Header)}
	reqs := make([]*http.Request, 4096)
	for i := range reqs {
		reqs[i] = httptest.NewRequest("GET", "http://example.com/object/"+strconv.Itoa(i), nil)
	}
	b.ReportAllocs()
	b.ResetTimer()
	i := 0
	for b.Loop() {
		w.reset()
		r := reqs[i%len(reqs)]
		i++
		r.RequestURI = "/object/" + strconv.Itoa(i)
		h.ServeHTTP(w, r)
	}
}
