package cache

import (
	"net/http"
	"testing"
	"time"
)

// TestHeadFreshens: a 200 to a HEAD the cache forwarded updates the
// stored GET response when it describes the same representation, and
// invalidates it when not (RFC 9111 §4.3.5).
func TestHeadFreshens(t *testing.T) {
	// headAnswers answers GETs with the configured response and HEADs
	// with 200 and the given fields.
	headAnswers := func(kv ...string) func(o *origin, n int64, w http.ResponseWriter, r *http.Request) {
		return func(o *origin, n int64, w http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodHead {
				o.write(n, w)
				return
			}
			h := w.Header()
			h.Set("Date", httpDate(o.clock.Now()))
			for i := 0; i+1 < len(kv); i += 2 {
				h.Set(kv[i], kv[i+1])
			}
			w.WriteHeader(http.StatusOK)
		}
	}
	base := hdr("Cache-Control", "max-age=10", "Template-A", "1", "Etag", `"v1"`)
	runScenarios(t, []scenario{
		{name: "fresh again, other fields kept", header: base, respond: headAnswers("Cache-Control", "max-age=1000"), steps: []step{
			{upstream: true},
			{advance: 20 * time.Second, method: "HEAD", upstream: true, cs: "meshd; fwd=stale; fwd-status=200; stored", age: "0"},
			{advance: 5 * time.Second, body: "body-1", cs: "meshd; hit", age: "5"},
		}},
		{name: "matching validators and length", header: base,
			respond: headAnswers("Cache-Control", "max-age=1000", "Etag", `"v1"`, "Content-Length", "6"), steps: []step{
				{upstream: true},
				{advance: 20 * time.Second, method: "HEAD", upstream: true},
				{body: "body-1", cs: "meshd; hit"},
			}},
		{name: "other ETag invalidates", header: base, respond: headAnswers("Cache-Control", "max-age=1000", "Etag", `"v2"`), steps: []step{
			{upstream: true},
			{advance: 20 * time.Second, method: "HEAD", upstream: true, cs: "meshd; fwd=stale"},
			{upstream: true, body: "body-3"},
		}},
		{name: "other length invalidates", header: base, respond: headAnswers("Cache-Control", "max-age=1000", "Content-Length", "7"), steps: []step{
			{upstream: true},
			{advance: 20 * time.Second, method: "HEAD", upstream: true},
			{upstream: true},
		}},
		{name: "other Last-Modified invalidates", header: hdr("Cache-Control", "max-age=10", "Last-Modified", httpDate(t0.Add(-time.Hour))),
			respond: headAnswers("Cache-Control", "max-age=1000", "Last-Modified", httpDate(t0)), steps: []step{
				{upstream: true},
				{advance: 20 * time.Second, method: "HEAD", upstream: true},
				{upstream: true},
			}},
		{name: "no-store in the HEAD response removes it", header: base, respond: headAnswers("Cache-Control", "no-store"), steps: []step{
			{upstream: true},
			{advance: 20 * time.Second, method: "HEAD", upstream: true},
			{upstream: true},
		}},
	})

	// Updated fields reach later GETs, and the HEAD's client sees the
	// stored fields the HEAD response did not repeat.
	_, o, clock, h := newTestStore(t, nil)
	o.header = base
	o.respond = headAnswers("Cache-Control", "max-age=1000", "Template-B", "2")
	do(h, "GET", "http://example.com/h")
	clock.Advance(20 * time.Second)
	w := do(h, "HEAD", "http://example.com/h")
	if w.Code != 200 || w.Header().Get("Template-A") != "1" || w.Header().Get("Template-B") != "2" || w.Header().Get("Content-Length") != "6" || w.Body.Len() != 0 {
		t.Fatalf("HEAD: %d %v body %q", w.Code, w.Header(), w.Body.String())
	}
	w = do(h, "GET", "http://example.com/h")
	if w.Header().Get("Cache-Status") != "meshd; hit" || w.Header().Get("Template-B") != "2" || w.Header().Get("Cache-Control") != "max-age=1000" || w.Body.String() != "body-1" {
		t.Fatalf("GET after HEAD: %v %q", w.Header(), w.Body.String())
	}
	if o.calls.Load() != 2 {
		t.Fatalf("origin calls %d, want 2", o.calls.Load())
	}
}
