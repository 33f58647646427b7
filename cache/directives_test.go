package cache

import (
	"net/http"
	"testing"
	"time"
)

var t0 = newClock().Now()

// step is one request of a scenario and what must come of it.
type step struct {
	advance  time.Duration
	method   string   // default GET
	target   string   // default http://example.com/r
	hdr      []string // request header, name/value pairs
	status   int      // default 200
	upstream bool     // the request must reach the origin (false: must not)
	body     string   // "" = not checked
	cs       string   // Cache-Status, "" = not checked
	age      string   // Age, "" = not checked
	noHeader string   // a response field that must be absent
}

type scenario struct {
	name    string
	header  http.Header // origin response header
	status  int
	respond func(o *origin, n int64, w http.ResponseWriter, r *http.Request)
	store   func(*Store) // sets Store options; nil: the defaults
	steps   []step
}

func runScenarios(t *testing.T, scenarios []scenario) {
	t.Helper()
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			_, o, clock, h := newTestStore(t, sc.store)
			o.header, o.status, o.respond = sc.header, sc.status, sc.respond
			for i, st := range sc.steps {
				clock.Advance(st.advance)
				before := o.calls.Load()
				method, target := st.method, st.target
				if method == "" {
					method = http.MethodGet
				}
				if target == "" {
					target = "http://example.com/r"
				}
				w := do(h, method, target, st.hdr...)
				want := st.status
				if want == 0 {
					want = http.StatusOK
				}
				if w.Code != want {
					t.Errorf("step %d: status %d, want %d (Cache-Status %q)", i, w.Code, want, w.Header().Get("Cache-Status"))
				}
				if got := o.calls.Load() > before; got != st.upstream {
					t.Errorf("step %d: reached origin = %v, want %v (Cache-Status %q)", i, got, st.upstream, w.Header().Get("Cache-Status"))
				}
				if st.body != "" && w.Body.String() != st.body {
					t.Errorf("step %d: body %q, want %q", i, w.Body.String(), st.body)
				}
				if st.cs != "" && w.Header().Get("Cache-Status") != st.cs {
					t.Errorf("step %d: Cache-Status %q, want %q", i, w.Header().Get("Cache-Status"), st.cs)
				}
				if st.age != "" && w.Header().Get("Age") != st.age {
					t.Errorf("step %d: Age %q, want %q", i, w.Header().Get("Age"), st.age)
				}
				if st.noHeader != "" && len(w.Header().Values(st.noHeader)) > 0 {
					t.Errorf("step %d: %s present: %q", i, st.noHeader, w.Header().Values(st.noHeader))
				}
			}
		})
	}
}

// revalidating answers 304 to a request whose If-None-Match carries etag,
// with the extra header; otherwise the configured 200.
func revalidating(etag string, extra http.Header) func(o *origin, n int64, w http.ResponseWriter, r *http.Request) {
	return func(o *origin, n int64, w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("If-None-Match") == etag {
			h := w.Header()
			h.Set("Date", httpDate(o.clock.Now()))
			h.Set("Etag", etag)
			for k, v := range extra {
				h[k] = v
			}
			w.WriteHeader(http.StatusNotModified)
			return
		}
		o.write(n, w)
	}
}

func TestResponseDirectives(t *testing.T) {
	lastMod := httpDate(t0.Add(-10 * 24 * time.Hour))
	runScenarios(t, []scenario{
		{name: "max-age fresh then stale", header: hdr("Cache-Control", "max-age=60"), steps: []step{
			{upstream: true, body: "body-1", cs: "meshd; fwd=uri-miss; stored"},
			{advance: 30 * time.Second, body: "body-1", cs: "meshd; hit", age: "30"},
			{advance: 31 * time.Second, upstream: true, body: "body-2", cs: "meshd; fwd=stale; stored"},
		}},
		{name: "s-maxage over max-age", header: hdr("Cache-Control", "max-age=10, s-maxage=60"), steps: []step{
			{upstream: true},
			{advance: 30 * time.Second, body: "body-1"},
			{advance: 31 * time.Second, upstream: true},
		}},
		{name: "max-age over Expires", header: hdr("Cache-Control", "max-age=60", "Expires", httpDate(t0.Add(-time.Hour))), steps: []step{
			{upstream: true},
			{advance: 30 * time.Second, body: "body-1"},
		}},
		{name: "Expires", header: hdr("Expires", httpDate(t0.Add(60*time.Second))), steps: []step{
			{upstream: true},
			{advance: 59 * time.Second, body: "body-1"},
			{advance: 2 * time.Second, upstream: true},
		}},
		{name: "invalid Expires is in the past", header: hdr("Expires", "0"), steps: []step{
			{upstream: true},
			{upstream: true},
		}},
		{name: "heuristic freshness from Last-Modified, capped", header: hdr("Last-Modified", lastMod), steps: []step{
			{upstream: true},
			{advance: 23 * time.Hour, body: "body-1"},
			{advance: 2 * time.Hour, upstream: true},
		}},
		{name: "no heuristic for 302", status: http.StatusFound, header: hdr("Last-Modified", lastMod, "Location", "/x"), steps: []step{
			{status: 302, upstream: true, cs: "meshd; fwd=uri-miss"},
			{status: 302, upstream: true},
		}},
		{name: "404 heuristically cacheable", status: http.StatusNotFound, header: hdr("Cache-Control", "max-age=60"), steps: []step{
			{status: 404, upstream: true},
			{status: 404},
		}},
		{name: "500 without freshness not stored", status: 500, steps: []step{
			{status: 500, upstream: true},
			{status: 500, upstream: true},
		}},
		{name: "500 with max-age stored", status: 500, header: hdr("Cache-Control", "max-age=60"), steps: []step{
			{status: 500, upstream: true},
			{status: 500},
		}},
		{name: "no-store", header: hdr("Cache-Control", "no-store, max-age=60"), steps: []step{
			{upstream: true, cs: "meshd; fwd=uri-miss"},
			{upstream: true},
		}},
		{name: "must-understand overrides no-store for a known status", header: hdr("Cache-Control", "no-store, must-understand, max-age=60"), steps: []step{
			{upstream: true},
			{body: "body-1"},
		}},
		{name: "private", header: hdr("Cache-Control", "private, max-age=60"), steps: []step{
			{upstream: true},
			{upstream: true},
		}},
		{name: "private with field names stores without them", header: hdr("Cache-Control", `private="X-Secret", max-age=60`, "X-Secret", "s3"), steps: []step{
			{upstream: true},
			{body: "body-1", noHeader: "X-Secret"},
		}},
		{name: "no-cache revalidates every time", header: hdr("Cache-Control", "no-cache, max-age=60", "Etag", `"v1"`), respond: revalidating(`"v1"`, nil), steps: []step{
			{upstream: true},
			{upstream: true, body: "body-1", cs: "meshd; fwd=stale; fwd-status=304; stored"},
		}},
		{name: "must-revalidate forbids max-stale", header: hdr("Cache-Control", "max-age=10, must-revalidate"), steps: []step{
			{upstream: true},
			{advance: 20 * time.Second, hdr: []string{"Cache-Control", "max-stale=100"}, upstream: true},
		}},
		{name: "proxy-revalidate forbids max-stale", header: hdr("Cache-Control", "max-age=10, proxy-revalidate"), steps: []step{
			{upstream: true},
			{advance: 20 * time.Second, hdr: []string{"Cache-Control", "max-stale"}, upstream: true},
		}},
		{name: "s-maxage forbids max-stale", header: hdr("Cache-Control", "s-maxage=10"), steps: []step{
			{upstream: true},
			{advance: 20 * time.Second, hdr: []string{"Cache-Control", "max-stale"}, upstream: true},
		}},
		{name: "conflicting max-age is stale", header: hdr("Cache-Control", "max-age=60, max-age=120"), steps: []step{
			{upstream: true},
			{upstream: true},
		}},
		{name: "invalid max-age is stale", header: hdr("Cache-Control", "max-age=soon"), steps: []step{
			{upstream: true},
			{upstream: true},
		}},
		{name: "quoted max-age accepted", header: hdr("Cache-Control", `max-age="60"`), steps: []step{
			{upstream: true},
			{body: "body-1"},
		}},
		{name: "public makes a 302 storable heuristically? no: explicit freshness needed", status: 307, header: hdr("Cache-Control", "max-age=60", "Location", "/y"), steps: []step{
			{status: 307, upstream: true},
			{status: 307},
		}},
	})
}

func TestRequestDirectives(t *testing.T) {
	runScenarios(t, []scenario{
		{name: "max-age", header: hdr("Cache-Control", "max-age=60"), steps: []step{
			{upstream: true},
			{advance: 30 * time.Second, hdr: []string{"Cache-Control", "max-age=40"}, body: "body-1"},
			{hdr: []string{"Cache-Control", "max-age=10"}, upstream: true, cs: "meshd; fwd=request; stored"},
		}},
		{name: "max-stale with value", header: hdr("Cache-Control", "max-age=60"), steps: []step{
			{upstream: true},
			{advance: 90 * time.Second, hdr: []string{"Cache-Control", "max-stale=40"}, body: "body-1", cs: "meshd; hit; ttl=-30"},
			{hdr: []string{"Cache-Control", "max-stale=20"}, upstream: true},
		}},
		{name: "max-stale without value", header: hdr("Cache-Control", "max-age=60"), steps: []step{
			{upstream: true},
			{advance: time.Hour, hdr: []string{"Cache-Control", "max-stale"}, body: "body-1"},
		}},
		{name: "min-fresh", header: hdr("Cache-Control", "max-age=60"), steps: []step{
			{upstream: true},
			{advance: 30 * time.Second, hdr: []string{"Cache-Control", "min-fresh=20"}, body: "body-1"},
			{hdr: []string{"Cache-Control", "min-fresh=40"}, upstream: true},
		}},
		{name: "no-cache", header: hdr("Cache-Control", "max-age=60"), steps: []step{
			{upstream: true},
			{hdr: []string{"Cache-Control", "no-cache"}, upstream: true, cs: "meshd; fwd=request; stored"},
			{body: "body-2"},
		}},
		{name: "Pragma no-cache", header: hdr("Cache-Control", "max-age=60"), steps: []step{
			{upstream: true},
			{hdr: []string{"Pragma", "no-cache"}, upstream: true},
		}},
		{name: "Pragma ignored beside Cache-Control", header: hdr("Cache-Control", "max-age=60"), steps: []step{
			{upstream: true},
			{hdr: []string{"Pragma", "no-cache", "Cache-Control", "max-stale"}, body: "body-1"},
		}},
		{name: "no-store", header: hdr("Cache-Control", "max-age=60"), steps: []step{
			{hdr: []string{"Cache-Control", "no-store"}, upstream: true, cs: "meshd; fwd=uri-miss"},
			{upstream: true},
			{hdr: []string{"Cache-Control", "no-store"}, body: "body-2"},
		}},
		{name: "only-if-cached", header: hdr("Cache-Control", "max-age=60"), steps: []step{
			{hdr: []string{"Cache-Control", "only-if-cached"}, status: 504, cs: "meshd; detail=only-if-cached"},
			{upstream: true},
			{hdr: []string{"Cache-Control", "only-if-cached"}, body: "body-1"},
			{advance: time.Minute, hdr: []string{"Cache-Control", "only-if-cached"}, status: 504},
		}},
	})
}
