package cache

import (
	"net/http"
	"testing"
	"time"
)

// TestInvalidationDuringFetch: RFC 9111 §4.4 invalidates the target URI
// of an unsafe request. A fetch of that URI in flight across the
// invalidation must not store what may be the old representation, but a
// fetch of any other URI is unaffected: before this, every POST anywhere
// kept all concurrent misses from being stored.
func TestInvalidationDuringFetch(t *testing.T) {
	cases := []struct {
		name, unsafe string
		stored       bool
	}{
		{"other URL", "http://example.com/other", true},
		{"same URL", "http://example.com/p", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, o, _, h := newTestStore(t, nil)
			var self http.Handler
			o.respond = func(o *origin, n int64, w http.ResponseWriter, r *http.Request) {
				if r.Method != http.MethodGet {
					w.WriteHeader(http.StatusNoContent)
					return
				}
				w.Header().Set("Cache-Control", "max-age=60")
				if n == 1 {
					// A concurrent unsafe request, answered while
					// this response is on its way.
					do(self, http.MethodPost, c.unsafe)
				}
				o.write(n, w)
			}
			self = h
			do(h, "GET", "http://example.com/p")
			before := o.calls.Load()
			w := do(h, "GET", "http://example.com/p")
			if got := o.calls.Load() == before; got != c.stored {
				t.Fatalf("stored = %v, want %v (Cache-Status %q)", got, c.stored, w.Header().Get("Cache-Status"))
			}
		})
	}
}

// TestParseHTTPDate: RFC 9110 §5.6.7 fixes the three HTTP-date forms
// down to their widths; anything else is invalid, and an invalid Expires
// means "already expired" (RFC 9111 §5.3).
func TestParseHTTPDate(t *testing.T) {
	want := time.Date(2050, 8, 18, 2, 1, 18, 0, time.UTC)
	cases := []struct {
		in string
		ok bool
	}{
		{"Thu, 18 Aug 2050 02:01:18 GMT", true},
		{"THU, 18 AUG 2050 02:01:18 gmt", true}, // names without regard to case
		{"Thursday, 18-Aug-50 02:01:18 GMT", true},
		{"Thu Aug 18 02:01:18 2050", true},
		{"Thu, 18 Aug 2050 2:01:18 GMT", false},    // one-digit hour
		{"Thu, 18  Aug  2050 02:01:18 GMT", false}, // runs of spaces
		{"Thu, 18-Aug-2050 02:01:18 GMT", false},
		{"Thu, 18 Aug 2050 02.01.18 GMT", false},
		{"Thu, 18 Aug 50 02:01:18 GMT", false},
		{"Thu 18 Aug 2050 02:01:18 GMT", false},
		{"Thu, 18 Aug 2050 02:01:18 UTC", false},
		{"Thu, 18 Aug 2050 02:01:18 AEST", false},
		{"0", false},
		{"", false},
	}
	for _, c := range cases {
		got, err := parseHTTPDate(c.in)
		if (err == nil) != c.ok || (c.ok && !got.Equal(want)) {
			t.Errorf("parseHTTPDate(%q) = %v, %v; want ok=%v", c.in, got, err, c.ok)
		}
	}
	// Asctime pads a one-digit day with a space.
	if got, err := parseHTTPDate("Sun Nov  6 08:49:37 1994"); err != nil || got.Day() != 6 {
		t.Errorf("asctime with a padded day: %v, %v", got, err)
	}
}

// TestMalformedExpiresIsStale: a response whose only freshness is a
// malformed Expires is stored stale and never served without going to
// the origin (RFC 9111 §5.3, §4.2.1).
func TestMalformedExpiresIsStale(t *testing.T) {
	for _, exp := range []string{"Thu, 18 Aug 2050 2:01:18 GMT", "Thu, 18  Aug  2050 02:01:18 GMT"} {
		_, o, _, h := newTestStore(t, nil)
		o.header = hdr("Expires", exp)
		do(h, "GET", "http://example.com/e")
		do(h, "GET", "http://example.com/e")
		if n := o.calls.Load(); n != 2 {
			t.Errorf("Expires %q: origin calls %d, want 2 (served fresh from an invalid date)", exp, n)
		}
	}
}
