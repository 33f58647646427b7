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

// TestTargetedFields: a CDN obeys CDN-Cache-Control (RFC 9213 §2.1), then
// Surrogate-Control (W3C Edge Architecture §3), over Cache-Control and
// Expires; an invalid or empty targeted field is ignored as if absent.
func TestTargetedFields(t *testing.T) {
	past, future := httpDate(t0.Add(-time.Hour)), httpDate(t0.Add(time.Hour))
	cases := []struct {
		name   string
		header http.Header
		stored bool // the second request, 10 s later, is a hit
	}{
		{"cdn max-age", hdr("Cdn-Cache-Control", "max-age=3600"), true},
		{"cdn max-age over past Expires", hdr("Cdn-Cache-Control", "max-age=3600", "Expires", past), true},
		{"cdn max-age over Cache-Control no-store", hdr("Cache-Control", "no-store", "Cdn-Cache-Control", "max-age=3600"), true},
		{"cdn short max-age over long Cache-Control", hdr("Cache-Control", "max-age=3600", "Cdn-Cache-Control", "max-age=1"), false},
		{"cdn max-age=0 over future Expires", hdr("Cdn-Cache-Control", "max-age=0", "Expires", future), false},
		{"cdn no-store", hdr("Cache-Control", "max-age=3600", "Cdn-Cache-Control", "no-store"), false},
		{"cdn private", hdr("Cache-Control", "max-age=3600", "Cdn-Cache-Control", "private"), false},
		{"cdn no-cache", hdr("Cache-Control", "max-age=3600", "Cdn-Cache-Control", "no-cache"), false},
		{"cdn extension", hdr("Cdn-Cache-Control", "foobar, max-age=3600"), true},
		{"cdn invalid dictionary ignored", hdr("Cache-Control", "no-store", "Cdn-Cache-Control", "max-age=3600, &&&&&"), false},
		{"cdn string max-age ignored", hdr("Cache-Control", "no-store", "Cdn-Cache-Control", `max-age="3600"`), false},
		{"cdn upper case key ignored", hdr("Cache-Control", "max-age=1", "Cdn-Cache-Control", "MaX-aGe=3600"), false},
		{"surrogate max-age", hdr("Cache-Control", "max-age=1", "Surrogate-Control", "max-age=3600"), true},
		{"surrogate no-store", hdr("Cache-Control", "max-age=3600", "Surrogate-Control", "no-store"), false},
		{"surrogate for this device", hdr("Cache-Control", "no-store", "Surrogate-Control", "max-age=3600;meshd"), true},
		{"surrogate for another device", hdr("Cache-Control", "max-age=1", "Surrogate-Control", "max-age=3600;other"), false},
		{"cdn before surrogate", hdr("Cdn-Cache-Control", "no-store", "Surrogate-Control", "max-age=3600"), false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, o, clock, h := newTestStore(t, nil)
			o.header = c.header
			do(h, "GET", "http://example.com/t")
			if got := o.lastRequest().Header.Get("Surrogate-Capability"); got != `meshd="Surrogate/1.0"` {
				t.Fatalf("Surrogate-Capability sent upstream %q", got)
			}
			clock.Advance(10 * time.Second)
			w := do(h, "GET", "http://example.com/t")
			if got := o.calls.Load() == 1; got != c.stored {
				t.Fatalf("hit = %v, want %v (Cache-Status %q)", got, c.stored, w.Header().Get("Cache-Status"))
			}
		})
	}
}

// FuzzTargetedFields: the CDN-Cache-Control and Surrogate-Control parsers
// never panic and never yield a negative lifetime input.
func FuzzTargetedFields(f *testing.F) {
	for _, s := range []string{"max-age=3600", "foobar, max-age=3600", `max-age="1"`, "no-cache=\"a, b\", private", "max-age=1;x=?1, a=:Zm9v:", "max-age=10+20;meshd, no-store-remote", "&&&", "a=1.5, b=-2"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if c, ok := parseTargetedCC([]string{s}); ok && (c.maxAge < absent || c.sMaxAge < absent || !c.targeted) {
			t.Fatalf("parseTargetedCC(%q) = %+v", s, c)
		}
		if c, ok := parseSurrogateControl([]string{s}, "meshd"); ok && (c.maxAge < absent || !c.targeted) {
			t.Fatalf("parseSurrogateControl(%q) = %+v", s, c)
		}
	})
}

// TestUnknownStatus: RFC 9111 §3 lets a cache store a final response
// whose status code it does not know, given explicit freshness;
// must-understand withholds it from caches that do not know the code
// (§5.2.2.3) and lets those that do ignore no-store.
func TestUnknownStatus(t *testing.T) {
	cases := []struct {
		name   string
		status int
		header http.Header
		stored bool
	}{
		{"599 with max-age", 599, hdr("Cache-Control", "max-age=3600"), true},
		{"299 with max-age", 299, hdr("Cache-Control", "max-age=3600"), true},
		{"599 without freshness", 599, hdr("Last-Modified", httpDate(t0.Add(-24*time.Hour))), false},
		{"599 must-understand", 599, hdr("Cache-Control", "max-age=3600, no-store, must-understand"), false},
		{"200 must-understand", 200, hdr("Cache-Control", "max-age=3600, no-store, must-understand"), true},
		{"206 never", 206, hdr("Cache-Control", "max-age=3600", "Content-Range", "bytes 0-5/10"), false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, o, _, h := newTestStore(t, nil)
			o.header, o.status = c.header, c.status
			do(h, "GET", "http://example.com/s")
			w := do(h, "GET", "http://example.com/s")
			if got := o.calls.Load() == 1; got != c.stored {
				t.Fatalf("stored = %v, want %v (Cache-Status %q)", got, c.stored, w.Header().Get("Cache-Status"))
			}
			if c.stored && w.Code != c.status {
				t.Fatalf("hit status %d, want %d", w.Code, c.status)
			}
		})
	}
}
