package cache

import (
	"net/http"
	"testing"
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
