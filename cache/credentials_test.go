package cache

import (
	"net/http"
	"sync"
	"testing"
	"time"
)

// A user found main's edge serving one user's page to another: a 200 to a
// request with Cookie, with Last-Modified and no Cache-Control, was stored
// on heuristic freshness and served to the next visitor, and again, stale,
// once the origin was down. These tests pin the rules that replaced it
// (doc.go: Authorization, Cookie, Set-Cookie).

// tenDaysAgo is a Last-Modified that gives a response cacheable by
// default 24 h of heuristic freshness (10%, capped by MaxHeuristic).
var tenDaysAgo = httpDate(t0.Add(-10 * 24 * time.Hour))

func storeSetCookie(s *Store) { s.StoreSetCookie = true }

var (
	cookieAlice = []string{"Cookie", "session=alice"}
	authAlice   = []string{"Authorization", "Bearer alice"}
)

// onlyWithAuth answers 200 with the configured header to a request with
// Authorization and 401 to one without, as an origin that serves a
// user's own page does.
func onlyWithAuth(o *origin, n int64, w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") == "" {
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	o.write(n, w)
}

func TestCookieRequest(t *testing.T) {
	runScenarios(t, []scenario{
		{name: "heuristic only: not stored, the next request goes to the origin", header: hdr("Last-Modified", tenDaysAgo), steps: []step{
			{hdr: cookieAlice, upstream: true, body: "body-1", cs: "meshd; fwd=uri-miss"},
			{upstream: true, body: "body-2", cs: "meshd; fwd=uri-miss; stored"},
			// A response to a request without Cookie is shared as before.
			{body: "body-2", cs: "meshd; hit"},
		}},
		{name: "Expires only: not stored", header: hdr("Expires", httpDate(t0.Add(time.Hour))), steps: []step{
			{hdr: cookieAlice, upstream: true, cs: "meshd; fwd=uri-miss"},
			{upstream: true, body: "body-2"},
		}},
		{name: "must-revalidate is no permission for Cookie", header: hdr("Cache-Control", "must-revalidate", "Last-Modified", tenDaysAgo), steps: []step{
			{hdr: cookieAlice, upstream: true, cs: "meshd; fwd=uri-miss"},
			{upstream: true, body: "body-2"},
		}},
		{name: "public, max-age=60: stored and shared", header: hdr("Cache-Control", "public, max-age=60"), steps: []step{
			{hdr: cookieAlice, upstream: true, cs: "meshd; fwd=uri-miss; stored"},
			{body: "body-1", cs: "meshd; hit"},
		}},
		{name: "max-age=60: stored", header: hdr("Cache-Control", "max-age=60"), steps: []step{
			{hdr: cookieAlice, upstream: true, cs: "meshd; fwd=uri-miss; stored"},
			{body: "body-1", cs: "meshd; hit"},
		}},
		{name: "s-maxage=60: stored", header: hdr("Cache-Control", "s-maxage=60"), steps: []step{
			{hdr: cookieAlice, upstream: true, cs: "meshd; fwd=uri-miss; stored"},
			{body: "body-1", cs: "meshd; hit"},
		}},
		{name: "public, heuristic: stored", header: hdr("Cache-Control", "public", "Last-Modified", tenDaysAgo), steps: []step{
			{hdr: cookieAlice, upstream: true, cs: "meshd; fwd=uri-miss; stored"},
			{advance: time.Hour, body: "body-1", cs: "meshd; hit"},
		}},
		{name: "private, max-age=60: not stored", header: hdr("Cache-Control", "private, max-age=60"), steps: []step{
			{hdr: cookieAlice, upstream: true, cs: "meshd; fwd=uri-miss"},
			{upstream: true, body: "body-2"},
		}},
		{name: "a shared response answers a request with Cookie", header: hdr("Last-Modified", tenDaysAgo), steps: []step{
			{upstream: true, cs: "meshd; fwd=uri-miss; stored"},
			{hdr: cookieAlice, body: "body-1", cs: "meshd; hit"},
		}},
		{name: "a newer response to a request with Cookie removes the stale shared one", header: hdr("Last-Modified", tenDaysAgo), steps: []step{
			{upstream: true, cs: "meshd; fwd=uri-miss; stored"},
			{advance: 25 * time.Hour, hdr: cookieAlice, upstream: true, body: "body-2", cs: "meshd; fwd=stale"},
			{upstream: true, body: "body-3", cs: "meshd; fwd=uri-miss; stored"},
		}},
	})
}

// TestAuthorization: RFC 9111 §3.5 lets a shared cache store a response
// to a request with Authorization only with public, s-maxage or
// must-revalidate; meshd gives such a response no heuristic freshness
// unless it is public.
func TestAuthorization(t *testing.T) {
	runScenarios(t, []scenario{
		{name: "max-age alone: not stored", header: hdr("Cache-Control", "max-age=60"), steps: []step{
			{hdr: authAlice, upstream: true, cs: "meshd; fwd=uri-miss"},
			{hdr: authAlice, upstream: true},
			{upstream: true},
		}},
		{name: "heuristic only: not stored", header: hdr("Last-Modified", tenDaysAgo), steps: []step{
			{hdr: authAlice, upstream: true, cs: "meshd; fwd=uri-miss"},
			{upstream: true, body: "body-2"},
		}},
		{name: "public", header: hdr("Cache-Control", "public, max-age=60"), steps: []step{
			{hdr: authAlice, upstream: true, cs: "meshd; fwd=uri-miss; stored"},
			{hdr: authAlice, body: "body-1", cs: "meshd; hit"},
			{body: "body-1", cs: "meshd; hit"},
		}},
		{name: "public, heuristic", header: hdr("Cache-Control", "public", "Last-Modified", tenDaysAgo), steps: []step{
			{hdr: authAlice, upstream: true, cs: "meshd; fwd=uri-miss; stored"},
			{body: "body-1", cs: "meshd; hit"},
		}},
		{name: "s-maxage", header: hdr("Cache-Control", "s-maxage=60"), steps: []step{
			{hdr: authAlice, upstream: true, cs: "meshd; fwd=uri-miss; stored"},
			{body: "body-1", cs: "meshd; hit"},
		}},
		{name: "must-revalidate, max-age", header: hdr("Cache-Control", "max-age=60, must-revalidate"), steps: []step{
			{hdr: authAlice, upstream: true, cs: "meshd; fwd=uri-miss; stored"},
			{body: "body-1", cs: "meshd; hit"},
		}},
		// Stored (§3.5), but the origin never said how long it is fresh:
		// every reuse asks the origin, which refuses the request without
		// credentials, and the stored page is not shown.
		{name: "must-revalidate, heuristic only: every reuse revalidates", respond: onlyWithAuth,
			header: hdr("Cache-Control", "must-revalidate", "Last-Modified", tenDaysAgo), steps: []step{
				{hdr: authAlice, upstream: true, cs: "meshd; fwd=uri-miss; stored"},
				{upstream: true, status: http.StatusUnauthorized},
				{upstream: true, status: http.StatusUnauthorized},
			}},
		{name: "with Cookie too, must-revalidate is not enough", header: hdr("Cache-Control", "must-revalidate", "Last-Modified", tenDaysAgo), steps: []step{
			{hdr: append(append([]string{}, authAlice...), cookieAlice...), upstream: true, cs: "meshd; fwd=uri-miss"},
			{upstream: true, body: "body-2"},
		}},
	})
}

func TestSetCookie(t *testing.T) {
	publicCookie := hdr("Cache-Control", "public, max-age=60", "Set-Cookie", "a=1")
	runScenarios(t, []scenario{
		{name: "public: not stored by default", header: publicCookie, steps: []step{
			{upstream: true, cs: "meshd; fwd=uri-miss"},
			{upstream: true, body: "body-2"},
		}},
		{name: `private="Set-Cookie": not stored by default`, header: hdr("Cache-Control", `private="Set-Cookie", max-age=60`, "Set-Cookie", "a=1"), steps: []step{
			{upstream: true, cs: "meshd; fwd=uri-miss"},
			{upstream: true},
		}},
		{name: "heuristic: not stored by default", header: hdr("Last-Modified", tenDaysAgo, "Set-Cookie", "a=1"), steps: []step{
			{upstream: true, cs: "meshd; fwd=uri-miss"},
			{upstream: true},
		}},
		{name: "option: public stored without the cookie", store: storeSetCookie, header: publicCookie, steps: []step{
			{upstream: true, cs: "meshd; fwd=uri-miss; stored"},
			{body: "body-1", cs: "meshd; hit", noHeader: "Set-Cookie"},
		}},
		{name: `option: private="Set-Cookie" stored without it`, store: storeSetCookie, header: hdr("Cache-Control", `private="Set-Cookie", max-age=60`, "Set-Cookie", "a=1"), steps: []step{
			{upstream: true, cs: "meshd; fwd=uri-miss; stored"},
			{body: "body-1", cs: "meshd; hit", noHeader: "Set-Cookie"},
		}},
		{name: "option: max-age alone still not stored", store: storeSetCookie, header: hdr("Cache-Control", "max-age=60", "Set-Cookie", "a=1"), steps: []step{
			{upstream: true, cs: "meshd; fwd=uri-miss"},
			{upstream: true},
		}},
	})
	// With the option, the client that caused the fetch still gets its
	// cookie; the hit after it does not.
	_, o, _, h := newTestStore(t, storeSetCookie)
	o.header = publicCookie
	if w := do(h, "GET", "http://example.com/c"); w.Header().Get("Set-Cookie") != "a=1" {
		t.Fatalf("first response lost Set-Cookie: %v", w.Header())
	}
}

// TestCredentialedNotStaleWhenDisconnected: what may not be stored is
// never served when the origin cannot be reached (RFC 9111 §4.2.4's
// disconnected path), neither fresh nor stale; what the origin allowed to
// be shared is.
func TestCredentialedNotStaleWhenDisconnected(t *testing.T) {
	dropped := failingWith(502, "Proxy-Status", "meshd-sidecar; error=connection_terminated")
	const stale = "meshd; fwd=stale; fwd-status=502; detail=disconnected"
	runScenarios(t, []scenario{
		{name: "Cookie, heuristic only: origin down at once", header: hdr("Last-Modified", tenDaysAgo), respond: dropped, steps: []step{
			{hdr: cookieAlice, upstream: true, body: "body-1"},
			{upstream: true, status: http.StatusBadGateway},
		}},
		{name: "Cookie, heuristic only: origin down after a day", header: hdr("Last-Modified", tenDaysAgo), respond: dropped, steps: []step{
			{hdr: cookieAlice, upstream: true, body: "body-1"},
			{advance: 25 * time.Hour, upstream: true, status: http.StatusBadGateway},
		}},
		{name: "Set-Cookie, public", header: hdr("Cache-Control", "public, max-age=10", "Set-Cookie", "a=1"), respond: dropped, steps: []step{
			{upstream: true, body: "body-1"},
			{advance: 20 * time.Second, upstream: true, status: http.StatusBadGateway},
		}},
		{name: "Authorization, must-revalidate, heuristic only", header: hdr("Cache-Control", "must-revalidate", "Last-Modified", tenDaysAgo), respond: dropped, steps: []step{
			{hdr: authAlice, upstream: true, body: "body-1"},
			{upstream: true, status: http.StatusBadGateway},
		}},
		// The origin said it may be shared: stale is shared too.
		{name: "Cookie, max-age: served stale", header: hdr("Cache-Control", "max-age=10"), respond: dropped, steps: []step{
			{hdr: cookieAlice, upstream: true, body: "body-1"},
			{advance: 20 * time.Second, upstream: true, body: "body-1", cs: stale},
		}},
	})
}

// TestCookieRequestCollapse: a request without Cookie that waits for a
// concurrent fetch made for a request with Cookie does not get that
// response, which may not be shared: it goes to the origin itself.
func TestCookieRequestCollapse(t *testing.T) {
	s, o, _, h := newTestStore(t, nil)
	gate := make(chan struct{})
	o.respond = func(o *origin, n int64, w http.ResponseWriter, r *http.Request) {
		if n == 1 {
			<-gate
		}
		w.Header().Set("Last-Modified", tenDaysAgo)
		w.Header().Set("X-Cookie", r.Header.Get("Cookie"))
		o.write(n, w)
	}
	var wg sync.WaitGroup
	var alice, bob *http.Response
	wg.Go(func() { alice = do(h, "GET", "http://example.com/me", cookieAlice...).Result() })
	st := s.st.Load()
	eventually(t, "alice's fetch", func() bool { return o.calls.Load() == 1 })
	wg.Go(func() { bob = do(h, "GET", "http://example.com/me").Result() })
	eventually(t, "bob waiting", func() bool { return st.waiting.Load() == 1 })
	close(gate)
	wg.Wait()
	if alice.Header.Get("X-Cookie") != "session=alice" {
		t.Fatalf("alice got %v", alice.Header)
	}
	if got := bob.Header.Get("X-Cookie"); got != "" {
		t.Fatalf("bob got the response made for cookie %q (Cache-Status %q)", got, bob.Header.Get("Cache-Status"))
	}
	if c := o.calls.Load(); c != 2 {
		t.Fatalf("origin calls %d, want 2", c)
	}
}
