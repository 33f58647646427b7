package cache

import (
	"net/http"
	"testing"
	"time"
)

// failingWith answers the first request with the configured response and
// every later one with code and the given header, as a proxy between the
// cache and the origin does when the origin cannot be reached.
func failingWith(code int, kv ...string) func(o *origin, n int64, w http.ResponseWriter, r *http.Request) {
	return func(o *origin, n int64, w http.ResponseWriter, r *http.Request) {
		if n > 1 {
			for i := 0; i+1 < len(kv); i += 2 {
				w.Header().Add(kv[i], kv[i+1])
			}
			w.WriteHeader(code)
			_, _ = w.Write([]byte("upstream error"))
			return
		}
		o.write(n, w)
	}
}

// TestStaleWhenDisconnected: RFC 9111 §4.2.4 lets a cache serve a stale
// response when it is disconnected from the origin, which meshd knows from
// a Proxy-Status error member (RFC 9209), unless a directive forbids it.
func TestStaleWhenDisconnected(t *testing.T) {
	dropped := failingWith(502, "Proxy-Status", "meshd-sidecar; error=connection_terminated")
	const stale = "meshd; fwd=stale; fwd-status=502; detail=disconnected"
	runScenarios(t, []scenario{
		{name: "served stale", header: hdr("Cache-Control", "max-age=10"), respond: dropped, steps: []step{
			{upstream: true},
			{advance: 20 * time.Second, upstream: true, body: "body-1", cs: stale, age: "20"},
			// Not stored: the next request asks again.
			{advance: time.Hour - 30*time.Second, upstream: true, body: "body-1", cs: stale},
		}},
		{name: "timeout 504, quoted name with a comma, several members", header: hdr("Cache-Control", "max-age=10"),
			respond: failingWith(504, "Proxy-Status", `"edge, one"; received-status=504`, "Proxy-Status", `"gw, two"; error=http_response_timeout; details="a;b"`),
			steps: []step{
				{upstream: true},
				{advance: 20 * time.Second, upstream: true, body: "body-1", cs: "meshd; fwd=stale; fwd-status=504; detail=disconnected"},
			}},
		{name: "revalidation with validators", header: hdr("Cache-Control", "max-age=10", "Etag", `"v1"`), respond: dropped, steps: []step{
			{upstream: true},
			{advance: 20 * time.Second, upstream: true, body: "body-1", cs: stale},
		}},
		{name: "origin's own 502 is relayed", header: hdr("Cache-Control", "max-age=10"), respond: failingWith(502), steps: []step{
			{upstream: true},
			{advance: 20 * time.Second, upstream: true, status: 502, cs: "meshd; fwd=stale"},
		}},
		{name: "origin's own 502, stale-if-error", header: hdr("Cache-Control", "max-age=10, stale-if-error=60"), respond: failingWith(502), steps: []step{
			{upstream: true},
			{advance: 20 * time.Second, upstream: true, body: "body-1", cs: "meshd; fwd=stale; fwd-status=502; detail=stale-if-error"},
		}},
		{name: "Proxy-Status without error", header: hdr("Cache-Control", "max-age=10"),
			respond: failingWith(502, "Proxy-Status", "meshd-edge; received-status=502"), steps: []step{
				{upstream: true},
				{advance: 20 * time.Second, upstream: true, status: 502},
			}},
		{name: "must-revalidate", header: hdr("Cache-Control", "max-age=10, must-revalidate"), respond: dropped, steps: []step{
			{upstream: true},
			{advance: 20 * time.Second, upstream: true, status: 502},
		}},
		{name: "proxy-revalidate", header: hdr("Cache-Control", "max-age=10, proxy-revalidate"), respond: dropped, steps: []step{
			{upstream: true},
			{advance: 20 * time.Second, upstream: true, status: 502},
		}},
		{name: "s-maxage", header: hdr("Cache-Control", "s-maxage=10"), respond: dropped, steps: []step{
			{upstream: true},
			{advance: 20 * time.Second, upstream: true, status: 502},
		}},
		{name: "no-cache", header: hdr("Cache-Control", "max-age=600, no-cache", "Etag", `"v1"`), respond: dropped, steps: []step{
			{upstream: true},
			{upstream: true, status: 502},
		}},
		{name: "request no-cache", header: hdr("Cache-Control", "max-age=10"), respond: dropped, steps: []step{
			{upstream: true},
			{advance: 20 * time.Second, hdr: []string{"Cache-Control", "no-cache"}, upstream: true, status: 502},
		}},
	})
}

// TestDisconnectedErrorNotStored: an error a proxy answered for an
// unreachable origin is never stored, even if it says it may be.
func TestDisconnectedErrorNotStored(t *testing.T) {
	runScenarios(t, []scenario{
		{name: "cacheable-looking proxy error", status: 502,
			header: hdr("Cache-Control", "max-age=600", "Proxy-Status", "meshd; error=destination_unavailable"), steps: []step{
				{upstream: true, status: 502, cs: "meshd; fwd=uri-miss"},
				{upstream: true, status: 502},
			}},
		{name: "origin's cacheable 502 is stored", status: 502, header: hdr("Cache-Control", "max-age=600"), steps: []step{
			{upstream: true, status: 502, cs: "meshd; fwd=uri-miss; stored"},
			{status: 502},
		}},
	})
}

func TestOriginUnreached(t *testing.T) {
	cases := []struct {
		code  int
		lines []string
		want  bool
	}{
		{502, []string{"meshd; error=connection_terminated"}, true},
		{503, []string{"a; received-status=503, b;error=destination_unavailable"}, true},
		{502, []string{`"x,y;error=z"; received-status=502`}, false},
		{502, []string{`"a\"b"; details="error=1"`}, false},
		{502, []string{`p; details="a,b"; Error=dns_timeout`}, true},
		{502, []string{"meshd; error="}, false},
		{502, []string{"meshd; error"}, false},
		{502, nil, false},
		{404, []string{"meshd; error=http_request_error"}, false},
		{200, []string{"meshd; error=connection_terminated"}, false},
	}
	for _, c := range cases {
		if got := originUnreached(c.code, http.Header{"Proxy-Status": c.lines}); got != c.want {
			t.Errorf("%d %q: %v, want %v", c.code, c.lines, got, c.want)
		}
	}
}
