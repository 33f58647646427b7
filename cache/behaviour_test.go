package cache

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestAge checks RFC 9111 §4.2.3: corrected_initial_age is the larger of
// apparent_age and Age plus response delay, and resident time adds on.
func TestAge(t *testing.T) {
	_, o, clock, h := newTestStore(t, nil)
	o.respond = func(o *origin, n int64, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Date", httpDate(o.clock.Now().Add(-5*time.Second))) // apparent age 5+2
		w.Header().Set("Age", "10")
		w.Header().Set("Cache-Control", "max-age=600")
		o.clock.Advance(2 * time.Second) // response delay
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte("x"))
	}
	if w := do(h, "GET", "http://example.com/a"); w.Header().Get("Age") != "10" {
		t.Fatalf("miss: Age %q, want the origin's 10", w.Header().Get("Age"))
	}
	clock.Advance(20 * time.Second)
	// corrected_age_value = 10 + 2 > apparent_age 7, plus 20 resident.
	w := do(h, "GET", "http://example.com/a")
	if got := w.Header().Get("Age"); got != "32" {
		t.Fatalf("hit: Age %q, want 32", got)
	}
	if o.calls.Load() != 1 {
		t.Fatalf("origin calls %d, want 1", o.calls.Load())
	}
}

func TestAgeApparentWins(t *testing.T) {
	_, o, clock, h := newTestStore(t, nil)
	o.header = hdr("Cache-Control", "max-age=600", "Date", httpDate(t0.Add(-100*time.Second)), "Age", "3")
	do(h, "GET", "http://example.com/a")
	clock.Advance(time.Second)
	if got := do(h, "GET", "http://example.com/a").Header().Get("Age"); got != "101" {
		t.Fatalf("Age %q, want 101 (apparent age 100 + 1 resident)", got)
	}
}

func TestHeadFromGet(t *testing.T) {
	_, o, _, h := newTestStore(t, nil)
	o.header = hdr("Cache-Control", "max-age=60", "Content-Type", "text/plain")
	do(h, "GET", "http://example.com/a")
	w := do(h, "HEAD", "http://example.com/a")
	if w.Code != 200 || w.Body.Len() != 0 || w.Header().Get("Content-Length") != "6" || w.Header().Get("Cache-Status") != "meshd; hit" {
		t.Fatalf("HEAD: %d body %q CL %q CS %q", w.Code, w.Body.String(), w.Header().Get("Content-Length"), w.Header().Get("Cache-Status"))
	}
	if o.calls.Load() != 1 {
		t.Fatalf("origin calls %d, want 1", o.calls.Load())
	}
	// A HEAD miss goes upstream as HEAD and stores nothing.
	do(h, "HEAD", "http://example.com/b")
	if m := o.lastRequest().Method; m != "HEAD" {
		t.Fatalf("upstream method %s", m)
	}
	do(h, "GET", "http://example.com/b")
	if o.calls.Load() != 3 {
		t.Fatalf("origin calls %d, want 3", o.calls.Load())
	}
}

func TestRangeFromCache(t *testing.T) {
	lm := httpDate(t0.Add(-time.Hour))
	cases := []struct {
		name, rng, ifRange string
		status             int
		body, contentRange string
	}{
		{"first bytes", "bytes=0-1", "", 206, "bo", "bytes 0-1/6"},
		{"open ended", "bytes=2-", "", 206, "dy-1", "bytes 2-5/6"},
		{"suffix", "bytes=-2", "", 206, "-1", "bytes 4-5/6"},
		{"end clamped", "bytes=4-100", "", 206, "-1", "bytes 4-5/6"},
		{"unsatisfiable", "bytes=6-", "", 416, "", "bytes */6"},
		{"several ranges ignored", "bytes=0-1,3-4", "", 200, "body-1", ""},
		{"other unit ignored", "items=0-1", "", 200, "body-1", ""},
		{"bad syntax ignored", "bytes=3-1", "", 200, "body-1", ""},
		{"If-Range etag match", "bytes=0-1", `"v1"`, 206, "bo", "bytes 0-1/6"},
		{"If-Range etag mismatch", "bytes=0-1", `"v2"`, 200, "body-1", ""},
		{"If-Range weak never matches", "bytes=0-1", `W/"v1"`, 200, "body-1", ""},
		{"If-Range date match", "bytes=0-1", lm, 206, "bo", "bytes 0-1/6"},
	}
	_, o, _, h := newTestStore(t, nil)
	o.header = hdr("Cache-Control", "max-age=60", "Etag", `"v1"`, "Last-Modified", lm)
	do(h, "GET", "http://example.com/r")
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			args := []string{"Range", c.rng}
			if c.ifRange != "" {
				args = append(args, "If-Range", c.ifRange)
			}
			w := do(h, "GET", "http://example.com/r", args...)
			if w.Code != c.status || w.Body.String() != c.body || w.Header().Get("Content-Range") != c.contentRange {
				t.Fatalf("got %d %q %q, want %d %q %q", w.Code, w.Body.String(), w.Header().Get("Content-Range"), c.status, c.body, c.contentRange)
			}
		})
	}
	if o.calls.Load() != 1 {
		t.Fatalf("origin calls %d, want 1", o.calls.Load())
	}
}

func TestClientConditionals(t *testing.T) {
	lm := httpDate(t0.Add(-time.Hour))
	runScenarios(t, []scenario{
		{name: "If-None-Match answered 304 from a fresh entry", header: hdr("Cache-Control", "max-age=60", "Etag", `"v1"`, "Content-Type", "text/plain"), steps: []step{
			{upstream: true},
			{hdr: []string{"If-None-Match", `"x", W/"v1"`}, status: 304, body: "", cs: "meshd; hit", noHeader: "Content-Type"},
			{hdr: []string{"If-None-Match", `"v2"`}, body: "body-1"},
			{hdr: []string{"If-None-Match", `*`}, status: 304},
		}},
		{name: "If-Modified-Since", header: hdr("Cache-Control", "max-age=60", "Last-Modified", lm), steps: []step{
			{upstream: true},
			{hdr: []string{"If-Modified-Since", lm}, status: 304},
			{hdr: []string{"If-Modified-Since", httpDate(t0.Add(-2 * time.Hour))}, body: "body-1"},
			{hdr: []string{"If-Modified-Since", "garbage"}, body: "body-1"},
		}},
		{name: "If-None-Match wins over If-Modified-Since", header: hdr("Cache-Control", "max-age=60", "Etag", `"v1"`, "Last-Modified", lm), steps: []step{
			{upstream: true},
			{hdr: []string{"If-None-Match", `"v2"`, "If-Modified-Since", lm}, body: "body-1"},
		}},
		{name: "conditional miss fills the store and answers 304", header: hdr("Cache-Control", "max-age=60", "Etag", `"v1"`, "Content-Type", "text/plain"), steps: []step{
			{hdr: []string{"If-None-Match", `"v1"`}, upstream: true, status: 304, cs: "meshd; fwd=uri-miss; stored; fwd-status=200", noHeader: "Content-Type"},
			{body: "body-1", cs: "meshd; hit"},
		}},
		{name: "If-Match goes to the origin", header: hdr("Cache-Control", "max-age=60", "Etag", `"v1"`), steps: []step{
			{upstream: true},
			{hdr: []string{"If-Match", `"v1"`}, upstream: true},
		}},
	})
}

func TestRevalidation(t *testing.T) {
	runScenarios(t, []scenario{
		{name: "304 refreshes stored header fields", header: hdr("Cache-Control", "max-age=10", "Etag", `"v1"`, "X-Version", "old"),
			respond: revalidating(`"v1"`, hdr("Cache-Control", "max-age=100", "X-Version", "new", "Content-Length", "999")),
			steps: []step{
				{upstream: true},
				{advance: 20 * time.Second, upstream: true, body: "body-1", cs: "meshd; fwd=stale; fwd-status=304; stored", age: "0"},
				{advance: 50 * time.Second, body: "body-1", cs: "meshd; hit", age: "50"},
				{advance: 51 * time.Second, upstream: true, body: "body-1"},
			}},
		{name: "Last-Modified validator", header: hdr("Cache-Control", "max-age=10", "Last-Modified", httpDate(t0.Add(-time.Hour))),
			respond: func(o *origin, n int64, w http.ResponseWriter, r *http.Request) {
				if r.Header.Get("If-Modified-Since") != "" {
					w.WriteHeader(http.StatusNotModified)
					return
				}
				o.write(n, w)
			},
			steps: []step{
				{upstream: true},
				{advance: 20 * time.Second, upstream: true, body: "body-1", cs: "meshd; fwd=stale; fwd-status=304; stored"},
				{body: "body-1", cs: "meshd; hit"},
			}},
		{name: "new 200 replaces", header: hdr("Cache-Control", "max-age=10", "Etag", `"v1"`), steps: []step{
			{upstream: true},
			{advance: 20 * time.Second, upstream: true, body: "body-2", cs: "meshd; fwd=stale; stored"},
			{body: "body-2"},
		}},
		{name: "304 for another etag refetches", header: hdr("Cache-Control", "max-age=10", "Etag", `"v1"`),
			respond: func(o *origin, n int64, w http.ResponseWriter, r *http.Request) {
				if r.Header.Get("If-None-Match") != "" {
					w.Header().Set("Etag", `"v9"`)
					w.WriteHeader(http.StatusNotModified)
					return
				}
				o.write(n, w)
			},
			steps: []step{
				{upstream: true},
				{advance: 20 * time.Second, upstream: true, body: "body-3"},
			}},
	})
}

func TestRevalidationSendsValidators(t *testing.T) {
	_, o, clock, h := newTestStore(t, nil)
	lm := httpDate(t0.Add(-time.Hour))
	o.header = hdr("Cache-Control", "max-age=10", "Etag", `"v1"`, "Last-Modified", lm)
	do(h, "GET", "http://example.com/r")
	clock.Advance(20 * time.Second)
	do(h, "GET", "http://example.com/r", "If-None-Match", `"client"`)
	r := o.lastRequest()
	if r.Header.Get("If-None-Match") != `"v1"` || r.Header.Get("If-Modified-Since") != lm {
		t.Fatalf("upstream conditionals %q %q", r.Header.Get("If-None-Match"), r.Header.Get("If-Modified-Since"))
	}
}

func TestStaleWhileRevalidate(t *testing.T) {
	_, o, clock, h := newTestStore(t, nil)
	o.header = hdr("Cache-Control", "max-age=10, stale-while-revalidate=30")
	do(h, "GET", "http://example.com/r")
	clock.Advance(20 * time.Second)
	w := do(h, "GET", "http://example.com/r")
	if w.Body.String() != "body-1" || w.Header().Get("Cache-Status") != "meshd; hit; ttl=-10; detail=stale-while-revalidate" {
		t.Fatalf("stale: %q %q", w.Body.String(), w.Header().Get("Cache-Status"))
	}
	eventually(t, "background refresh", func() bool {
		return do(h, "GET", "http://example.com/r").Body.String() == "body-2"
	})
	if n := o.calls.Load(); n != 2 {
		t.Fatalf("origin calls %d, want 2 (one refresh)", n)
	}
	// Past the window: forwarded synchronously.
	clock.Advance(45 * time.Second)
	w = do(h, "GET", "http://example.com/r")
	if w.Body.String() != "body-3" || !hasPrefix(w.Header().Get("Cache-Status"), "meshd; fwd=stale") {
		t.Fatalf("past window: %q %q", w.Body.String(), w.Header().Get("Cache-Status"))
	}
}

func TestStaleWhileRevalidateRefreshesOnce(t *testing.T) {
	_, o, clock, h := newTestStore(t, nil)
	gate := make(chan struct{})
	o.respond = func(o *origin, n int64, w http.ResponseWriter, r *http.Request) {
		if n > 1 {
			<-gate
		}
		w.Header().Set("Cache-Control", "max-age=10, stale-while-revalidate=30")
		o.write(n, w)
	}
	do(h, "GET", "http://example.com/r")
	clock.Advance(15 * time.Second)
	for range 10 {
		if w := do(h, "GET", "http://example.com/r"); w.Body.String() != "body-1" {
			t.Fatalf("stale body %q", w.Body.String())
		}
	}
	close(gate)
	eventually(t, "refresh", func() bool { return do(h, "GET", "http://example.com/r").Body.String() == "body-2" })
	if n := o.calls.Load(); n != 2 {
		t.Fatalf("origin calls %d, want 2", n)
	}
}

func TestStaleIfError(t *testing.T) {
	failing := func(code int) func(o *origin, n int64, w http.ResponseWriter, r *http.Request) {
		return func(o *origin, n int64, w http.ResponseWriter, r *http.Request) {
			if n > 1 {
				w.WriteHeader(code)
				return
			}
			o.write(n, w)
		}
	}
	runScenarios(t, []scenario{
		{name: "response stale-if-error", header: hdr("Cache-Control", "max-age=10, stale-if-error=60"), respond: failing(503), steps: []step{
			{upstream: true},
			{advance: 20 * time.Second, upstream: true, body: "body-1", cs: "meshd; fwd=stale; fwd-status=503; detail=stale-if-error"},
			{advance: 60 * time.Second, upstream: true, status: 503},
		}},
		{name: "unreachable origin (502)", header: hdr("Cache-Control", "max-age=10, stale-if-error=60"), respond: failing(502), steps: []step{
			{upstream: true},
			{advance: 20 * time.Second, upstream: true, body: "body-1"},
		}},
		{name: "404 is not an error", header: hdr("Cache-Control", "max-age=10, stale-if-error=60"), respond: failing(404), steps: []step{
			{upstream: true},
			{advance: 20 * time.Second, upstream: true, status: 404},
		}},
		{name: "request stale-if-error", header: hdr("Cache-Control", "max-age=10"), respond: failing(500), steps: []step{
			{upstream: true},
			{advance: 20 * time.Second, upstream: true, status: 500},
			{hdr: []string{"Cache-Control", "stale-if-error=30"}, upstream: true, body: "body-1"},
		}},
		{name: "must-revalidate wins", header: hdr("Cache-Control", "max-age=10, stale-if-error=60, must-revalidate"), respond: failing(503), steps: []step{
			{upstream: true},
			{advance: 20 * time.Second, upstream: true, status: 503},
		}},
	})
}

func TestVary(t *testing.T) {
	enc := func(v string) []string { return []string{"Accept-Encoding", v} }
	runScenarios(t, []scenario{
		{name: "variants side by side", header: hdr("Cache-Control", "max-age=60", "Vary", "Accept-Encoding"), steps: []step{
			{hdr: enc("gzip"), upstream: true, body: "body-1"},
			{hdr: enc("br"), upstream: true, body: "body-2", cs: "meshd; fwd=vary-miss; stored"},
			{hdr: enc("gzip"), body: "body-1"},
			{hdr: enc("br"), body: "body-2"},
			{upstream: true, body: "body-3"}, // absent differs from every value
			{hdr: enc(""), upstream: true, body: "body-4"},
			{body: "body-3"},
		}},
		{name: "whitespace normalized", header: hdr("Cache-Control", "max-age=60", "Vary", "accept-encoding"), steps: []step{
			{hdr: enc("gzip,  br"), upstream: true},
			{hdr: enc(" gzip ,br "), body: "body-1"},
			{hdr: []string{"Accept-Encoding", "gzip", "Accept-Encoding", "br"}, body: "body-1"},
			{hdr: enc("gzip, b r"), upstream: true},
		}},
		{name: "several fields", header: hdr("Cache-Control", "max-age=60", "Vary", "Accept-Language, Accept-Encoding"), steps: []step{
			{hdr: []string{"Accept-Language", "en", "Accept-Encoding", "gzip"}, upstream: true},
			{hdr: []string{"Accept-Language", "en", "Accept-Encoding", "gzip"}, body: "body-1"},
			{hdr: []string{"Accept-Language", "de", "Accept-Encoding", "gzip"}, upstream: true},
		}},
		{name: "Accept-Language: case and spaces folded, order kept", header: hdr("Cache-Control", "max-age=60", "Vary", "Accept-Language"), steps: []step{
			{hdr: []string{"Accept-Language", "en-US, de;q=0.5"}, upstream: true, body: "body-1"},
			{hdr: []string{"Accept-Language", "EN-us , De ; Q=0.5"}, body: "body-1"},
			{hdr: []string{"Accept-Language", "de;q=0.5, en-US"}, upstream: true, body: "body-2"},
			{hdr: []string{"Accept-Language", "e n-US, de;q=0.5"}, upstream: true, body: "body-3"}, // not a language range: its own variant
		}},
		{name: "other fields keep case", header: hdr("Cache-Control", "max-age=60", "Vary", "X-Variant"), steps: []step{
			{hdr: []string{"X-Variant", "a"}, upstream: true},
			{hdr: []string{"X-Variant", "A"}, upstream: true},
		}},
		{name: "Vary star never served", header: hdr("Cache-Control", "max-age=60", "Vary", "*"), steps: []step{
			{upstream: true, cs: "meshd; fwd=uri-miss"},
			{upstream: true},
		}},
		{name: "invalid Vary member acts as star", header: hdr("Cache-Control", "max-age=60", "Vary", "Accept-Encoding, a b"), steps: []step{
			{upstream: true},
			{upstream: true},
		}},
	})
}

func TestInvalidation(t *testing.T) {
	_, o, _, h := newTestStore(t, nil)
	o.respond = func(o *origin, n int64, w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == "GET":
			w.Header().Set("Cache-Control", "max-age=600")
			o.write(n, w)
		case r.URL.Path == "/fail":
			w.WriteHeader(500)
		default:
			w.Header().Set("Location", r.Header.Get("X-Location"))
			w.Header().Set("Content-Location", r.Header.Get("X-Content-Location"))
			w.WriteHeader(201)
		}
	}
	urls := []string{"http://example.com/a", "http://example.com/b", "http://example.com/c?q=1", "http://other.com/d", "http://example.com/fail"}
	warm := func() {
		for _, u := range urls {
			do(h, "GET", u)
		}
	}
	cached := func(u string) bool {
		return do(h, "GET", u, "Cache-Control", "only-if-cached").Code == 200
	}
	warm()
	cases := []struct {
		name, method, target string
		hdr                  []string
		gone                 []string
	}{
		{"POST target", "POST", "http://example.com/a", nil, []string{"http://example.com/a"}},
		{"PUT with Location", "PUT", "http://example.com/x", []string{"X-Location", "/b"}, []string{"http://example.com/b"}},
		{"DELETE with Content-Location", "DELETE", "http://example.com/x", []string{"X-Content-Location", "http://EXAMPLE.com/c?q=1"}, []string{"http://example.com/c?q=1"}},
		{"other host untouched", "PATCH", "http://example.com/x", []string{"X-Location", "http://other.com/d"}, nil},
		{"unknown method invalidates", "FROB", "http://example.com/a", nil, []string{"http://example.com/a"}},
		{"error status does not", "POST", "http://example.com/fail", nil, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			warm()
			for _, u := range urls {
				if !cached(u) {
					t.Fatalf("%s not cached before", u)
				}
			}
			w := do(h, c.method, c.target, c.hdr...)
			if w.Header().Get("Cache-Status") != "meshd; fwd=method" {
				t.Fatalf("Cache-Status %q", w.Header().Get("Cache-Status"))
			}
			for _, u := range urls {
				want := true
				for _, g := range c.gone {
					if g == u {
						want = false
					}
				}
				if got := cached(u); got != want {
					t.Errorf("%s cached=%v, want %v", u, got, want)
				}
			}
		})
	}
}

// TestCollapse100 sends 100 concurrent requests for one cold URL: exactly
// one reaches the origin, all get its response.
func TestCollapse100(t *testing.T) {
	s, o, _, h := newTestStore(t, nil)
	gate := make(chan struct{})
	o.respond = func(o *origin, n int64, w http.ResponseWriter, r *http.Request) {
		<-gate
		w.Header().Set("Cache-Control", "max-age=60")
		o.write(n, w)
	}
	const n = 100
	var wg sync.WaitGroup
	results := make([]*httptest.ResponseRecorder, n)
	for i := range n {
		wg.Go(func() { results[i] = do(h, "GET", "http://example.com/cold") })
	}
	st := s.st.Load()
	eventually(t, "99 waiters", func() bool { return st.waiting.Load() == n-1 && o.calls.Load() == 1 })
	close(gate)
	wg.Wait()
	if c := o.calls.Load(); c != 1 {
		t.Fatalf("origin calls %d, want 1", c)
	}
	collapsed := 0
	for i, w := range results {
		if w.Code != 200 || w.Body.String() != "body-1" {
			t.Fatalf("response %d: %d %q", i, w.Code, w.Body.String())
		}
		if w.Header().Get("Cache-Status") == "meshd; fwd=uri-miss; collapsed" {
			collapsed++
		}
	}
	if collapsed != n-1 {
		t.Fatalf("%d collapsed responses, want %d", collapsed, n-1)
	}
	if got := counterValue(t, st.m.collapsed); got != n-1 {
		t.Fatalf("collapsed metric %v", got)
	}
}

// TestCollapseUncacheable releases the waiters to go upstream themselves.
func TestCollapseUncacheable(t *testing.T) {
	s, o, _, h := newTestStore(t, nil)
	gate := make(chan struct{})
	o.respond = func(o *origin, n int64, w http.ResponseWriter, r *http.Request) {
		if n == 1 {
			<-gate
		}
		w.Header().Set("Cache-Control", "no-store")
		o.write(n, w)
	}
	const n = 10
	var wg sync.WaitGroup
	results := make([]*httptest.ResponseRecorder, n)
	for i := range n {
		wg.Go(func() { results[i] = do(h, "GET", "http://example.com/u") })
	}
	st := s.st.Load()
	eventually(t, "waiters", func() bool { return st.waiting.Load() == n-1 })
	close(gate)
	wg.Wait()
	if c := o.calls.Load(); c != n {
		t.Fatalf("origin calls %d, want %d", c, n)
	}
	for _, w := range results {
		if w.Code != 200 {
			t.Fatalf("status %d", w.Code)
		}
		if cs := w.Header().Get("Cache-Status"); cs != "meshd; fwd=uri-miss" && cs != "meshd; fwd=uri-miss; collapsed=?0" {
			t.Fatalf("Cache-Status %q", cs)
		}
	}
}

// TestCollapseWaitBounded: waiters give up after CollapseWait.
func TestCollapseWaitBounded(t *testing.T) {
	_, o, _, h := newTestStore(t, func(s *Store) { s.CollapseWait = 10 * time.Millisecond })
	gate := make(chan struct{})
	defer close(gate)
	o.respond = func(o *origin, n int64, w http.ResponseWriter, r *http.Request) {
		if n == 1 {
			<-gate
		}
		o.write(n, w)
	}
	go do(h, "GET", "http://example.com/slow")
	eventually(t, "leader upstream", func() bool { return o.calls.Load() == 1 })
	w := do(h, "GET", "http://example.com/slow")
	if w.Body.String() != "body-2" || w.Header().Get("Cache-Status") != "meshd; fwd=uri-miss; collapsed=?0; stored" {
		t.Fatalf("%q %q", w.Body.String(), w.Header().Get("Cache-Status"))
	}
}

func TestMaxObject(t *testing.T) {
	big := strings.Repeat("x", 2000)
	cases := []struct {
		name      string
		body      string
		withLen   bool
		wantStore bool
	}{
		{"small with length", "small", true, true},
		{"small chunked", "small", false, true},
		{"large with length", big, true, false},
		{"large chunked", big, false, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, o, _, h := newTestStore(t, func(s *Store) { s.MaxObject = 1000 })
			o.respond = func(o *origin, n int64, w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Cache-Control", "max-age=60")
				if c.withLen {
					w.Header().Set("Content-Length", "2000")
					if len(c.body) != 2000 {
						w.Header().Set("Content-Length", "5")
					}
				}
				w.WriteHeader(200)
				for i := 0; i < len(c.body); i += 100 {
					_, _ = w.Write([]byte(c.body[i:min(i+100, len(c.body))]))
				}
			}
			w := do(h, "GET", "http://example.com/o")
			if w.Body.String() != c.body {
				t.Fatalf("streamed body length %d, want %d", w.Body.Len(), len(c.body))
			}
			do(h, "GET", "http://example.com/o")
			if stored := o.calls.Load() == 1; stored != c.wantStore {
				t.Fatalf("stored=%v, want %v", stored, c.wantStore)
			}
		})
	}
}

func TestTruncatedNotStored(t *testing.T) {
	_, o, _, h := newTestStore(t, nil)
	o.respond = func(o *origin, n int64, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=60")
		w.Header().Set("Content-Length", "100")
		_, _ = w.Write([]byte("short"))
	}
	do(h, "GET", "http://example.com/t")
	do(h, "GET", "http://example.com/t")
	if o.calls.Load() != 2 {
		t.Fatal("a truncated body was stored")
	}
}

func TestTagsRemovedFromResponses(t *testing.T) {
	_, o, _, h := newTestStore(t, nil)
	o.header = hdr("Cache-Control", "max-age=60", "Cache-Tag", "a,b", "Surrogate-Key", "c d")
	for i := range 2 {
		w := do(h, "GET", "http://example.com/t")
		if w.Header().Get("Cache-Tag") != "" || w.Header().Get("Surrogate-Key") != "" {
			t.Fatalf("request %d leaked tags: %v", i, w.Header())
		}
	}
	o.header = hdr("Cache-Tag", "a")
	if w := do(h, "POST", "http://example.com/t"); w.Header().Get("Cache-Tag") != "" {
		t.Fatal("pass-through leaked Cache-Tag")
	}
}

func TestOriginCacheStatusKept(t *testing.T) {
	_, o, _, h := newTestStore(t, nil)
	o.header = hdr("Cache-Control", "max-age=60", "Cache-Status", "origin-cache; hit")
	w := do(h, "GET", "http://example.com/s")
	if got := w.Header().Values("Cache-Status"); len(got) != 2 || got[0] != "origin-cache; hit" || got[1] != "meshd; fwd=uri-miss; stored" {
		t.Fatalf("Cache-Status %q", got)
	}
	if got := do(h, "GET", "http://example.com/s").Header().Values("Cache-Status"); len(got) != 1 || got[0] != "meshd; hit" {
		t.Fatalf("hit Cache-Status %q", got)
	}
}

func TestSchemeInKey(t *testing.T) {
	_, o, _, h := newTestStore(t, func(s *Store) {
		s.Scheme = func(r *http.Request) string {
			if r.Header.Get("X-Forwarded-Proto") == "https" {
				return "https"
			}
			return "http"
		}
	})
	o.header = hdr("Cache-Control", "max-age=60")
	do(h, "GET", "http://example.com/k")
	do(h, "GET", "http://example.com:80/k")
	do(h, "GET", "http://EXAMPLE.com/k")
	if o.calls.Load() != 1 {
		t.Fatalf("host normalization: %d calls", o.calls.Load())
	}
	do(h, "GET", "http://example.com/k", "X-Forwarded-Proto", "https")
	do(h, "GET", "http://example.com/k?")
	do(h, "GET", "http://example.com/K")
	if o.calls.Load() != 4 {
		t.Fatalf("scheme, query and path case must be distinct keys: %d calls", o.calls.Load())
	}
}

// TestPartialContent: a 206 to a single-range GET is stored as partial
// content (RFC 9111 §3.3) and answers later ranges that lie inside it;
// anything else goes to the origin, and a full response still wins.
func TestPartialContent(t *testing.T) {
	const whole = "0123456789"
	_, o, clock, h := newTestStore(t, nil)
	partial := func(cc, contentRange, body string, extra ...string) {
		o.mu.Lock()
		o.respond = func(o *origin, n int64, w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Cache-Control", cc)
			w.Header().Set("Content-Range", contentRange)
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
			for i := 0; i+1 < len(extra); i += 2 {
				w.Header().Set(extra[i], extra[i+1])
			}
			w.WriteHeader(http.StatusPartialContent)
			_, _ = io.WriteString(w, body)
		}
		o.mu.Unlock()
	}
	get := func(path, rng string, extra ...string) *httptest.ResponseRecorder {
		return do(h, "GET", "http://example.com"+path, append([]string{"Range", rng}, extra...)...)
	}
	expect := func(w *httptest.ResponseRecorder, calls int64, status int, body, contentRange string) {
		t.Helper()
		if w.Code != status || w.Body.String() != body || w.Header().Get("Content-Range") != contentRange || o.calls.Load() != calls {
			t.Fatalf("got %d %q %q after %d origin calls, want %d %q %q after %d",
				w.Code, w.Body.String(), w.Header().Get("Content-Range"), o.calls.Load(), status, body, contentRange, calls)
		}
	}

	partial("max-age=60", "bytes 4-9/10", whole[4:])
	expect(get("/p", "bytes=-6"), 1, 206, "456789", "bytes 4-9/10")
	w := get("/p", "bytes=-6")
	expect(w, 1, 206, "456789", "bytes 4-9/10")
	if cs := w.Header().Get("Cache-Status"); cs != "meshd; hit" || w.Header().Get("Content-Length") != "6" || w.Header().Get("Age") == "" {
		t.Fatalf("hit from partial content: Cache-Status %q, Content-Length %q, Age %q", cs, w.Header().Get("Content-Length"), w.Header().Get("Age"))
	}
	expect(get("/p", "bytes=6-8"), 1, 206, "678", "bytes 6-8/10")
	expect(get("/p", "bytes=6-"), 1, 206, "6789", "bytes 6-9/10")
	expect(get("/p", "bytes=-1"), 1, 206, "9", "bytes 9-9/10")
	// Outside the stored bytes, or not a plain range GET: the origin.
	partial("max-age=60", "bytes 0-3/10", whole[:4])
	expect(get("/p", "bytes=0-3"), 2, 206, "0123", "bytes 0-3/10") // replaces the stored part
	expect(get("/p", "bytes=1-2"), 2, 206, "12", "bytes 1-2/10")
	partial("max-age=60", "bytes 5-6/10", whole[5:7])
	expect(get("/p", "bytes=5-6", "If-None-Match", `"x"`), 3, 206, "56", "bytes 5-6/10")
	expect(get("/p", "bytes=1-2", "Cache-Control", "no-cache"), 4, 206, "56", "bytes 5-6/10") // (the origin's answer, whatever it is)
	if w := do(h, "HEAD", "http://example.com/p", "Range", "bytes=1-2"); o.calls.Load() != 5 {
		t.Fatalf("HEAD answered from partial content: %d", w.Code)
	}
	// Stale partial content is not served.
	partial("max-age=60", "bytes 0-4/10", whole[:5])
	expect(get("/s", "bytes=0-4"), 6, 206, "01234", "bytes 0-4/10")
	clock.Advance(61 * time.Second)
	expect(get("/s", "bytes=0-4"), 7, 206, "01234", "bytes 0-4/10")
	// Not stored: no explicit or heuristic freshness, Vary, an unknown
	// complete length, several ranges, a length that does not match.
	for i, c := range [][]string{
		{"no-store", "bytes 0-4/10", whole[:5]},
		{"max-age=60", "bytes 0-4/*", whole[:5]},
		{"max-age=60", "bytes 0-4/10", whole[:4]},
		{"max-age=60", "bytes 4-0/10", whole[:5]},
	} {
		path := "/n" + strconv.Itoa(i)
		partial(c[0], c[1], c[2])
		before := o.calls.Load()
		get(path, "bytes=0-4")
		get(path, "bytes=0-4")
		if o.calls.Load()-before != 2 {
			t.Fatalf("%v: stored", c)
		}
	}
	partial("max-age=60", "bytes 0-4/10", whole[:5], "Vary", "Accept")
	before := o.calls.Load()
	get("/v", "bytes=0-4")
	get("/v", "bytes=0-4")
	if o.calls.Load()-before != 2 {
		t.Fatal("partial content with Vary stored")
	}
	// A full response is stored beside partial content and wins; a POST
	// invalidates both.
	partial("max-age=60", "bytes 0-4/10", whole[:5])
	get("/f", "bytes=0-4")
	o.mu.Lock()
	o.respond = nil
	o.header = hdr("Cache-Control", "max-age=60")
	o.mu.Unlock()
	before = o.calls.Load()
	full := do(h, "GET", "http://example.com/f")
	expect(get("/f", "bytes=0-1"), before+1, 206, full.Body.String()[:2], "bytes 0-1/"+strconv.Itoa(full.Body.Len()))
	do(h, "POST", "http://example.com/f")
	before = o.calls.Load()
	partial("max-age=60", "bytes 0-4/10", whole[:5])
	get("/f", "bytes=0-4")
	if o.calls.Load() != before+1 {
		t.Fatal("partial content survived a POST to its URL")
	}
}
