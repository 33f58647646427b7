package cache

import "testing"

// TestQualifiedNoCache: no-cache="field" (RFC 9111 §5.2.2.4) lets the
// response be reused without validation, but never the named fields.
func TestQualifiedNoCache(t *testing.T) {
	runScenarios(t, []scenario{
		{name: "one field", header: hdr("Cache-Control", `no-cache="X-Secret", max-age=60`, "X-Secret", "s", "X-Other", "o"), steps: []step{
			{upstream: true, cs: "meshd; fwd=uri-miss; stored"},
			{body: "body-1", cs: "meshd; hit", noHeader: "X-Secret"},
		}},
		{name: "unqualified still revalidates", header: hdr("Cache-Control", `no-cache, max-age=60`, "Etag", `"a"`), steps: []step{
			{upstream: true},
			{upstream: true},
		}},
		{name: "Set-Cookie named: stored without it", store: storeSetCookie, header: hdr("Cache-Control", `no-cache="Set-Cookie", max-age=60`, "Set-Cookie", "a=1"), steps: []step{
			{upstream: true},
			{body: "body-1", noHeader: "Set-Cookie"},
		}},
		{name: "Set-Cookie named private: stored without it", store: storeSetCookie, header: hdr("Cache-Control", `private="Set-Cookie", max-age=60`, "Set-Cookie", "a=1"), steps: []step{
			{upstream: true},
			{body: "body-1", noHeader: "Set-Cookie"},
		}},
		{name: "another field named: Set-Cookie still keeps it out", store: storeSetCookie, header: hdr("Cache-Control", `no-cache="X-A", max-age=60`, "Set-Cookie", "a=1"), steps: []step{
			{upstream: true},
			{upstream: true},
		}},
	})
	// The fetching client gets the whole response, and later clients the
	// other fields.
	_, o, _, h := newTestStore(t, storeSetCookie)
	o.header = hdr("Cache-Control", `no-cache="X-Secret, Set-Cookie", max-age=60`, "X-Secret", "s", "Set-Cookie", "a=1", "X-Other", "o")
	if w := do(h, "GET", "http://example.com/q"); w.Header().Get("X-Secret") != "s" || w.Header().Get("Set-Cookie") != "a=1" {
		t.Fatalf("miss lost the named fields: %v", w.Header())
	}
	w := do(h, "GET", "http://example.com/q")
	if w.Header().Get("Cache-Status") != "meshd; hit" || w.Header().Get("X-Other") != "o" || w.Header().Get("X-Secret") != "" || w.Header().Get("Set-Cookie") != "" {
		t.Fatalf("hit: %v", w.Header())
	}
}
