package mesh

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
)

// TestCacheSetCookie: cache-set-cookie (YAML, and the flag bound to the
// same field) reaches the edge's cache. By default a response with
// Set-Cookie is never stored; with the option a public one is, without
// the cookie.
func TestCacheSetCookie(t *testing.T) {
	for _, c := range []struct {
		name, yaml string
		stored     bool
	}{
		{"default", "", false},
		{"cache-set-cookie: true", "cache-set-cookie: true\n", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			var cfg Config
			if _, err := LoadFile(writeFile(t, "role: edge\nname: edge-1\nregion: eu\n"+c.yaml), &cfg); err != nil {
				t.Fatal(err)
			}
			cfg.SetDefaults()
			if cfg.CacheSetCookie != c.stored {
				t.Fatalf("CacheSetCookie = %v, want %v", cfg.CacheSetCookie, c.stored)
			}
			s := edgeCacheStore(&cfg, cfg.CacheBytes(), slog.New(slog.NewTextHandler(io.Discard, nil)))
			if err := s.Start(context.Background()); err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			calls := 0
			h := s.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				calls++
				w.Header().Set("Cache-Control", "public, max-age=60")
				w.Header().Set("Set-Cookie", "session=alice")
				io.WriteString(w, "page")
			}))
			for range 2 {
				h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "http://web.localhost/", nil))
			}
			want := 2
			if c.stored {
				want = 1
			}
			if calls != want {
				t.Fatalf("origin calls %d, want %d", calls, want)
			}
		})
	}
}
