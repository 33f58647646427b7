package cache

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
)

// TestThroughRealServer runs the middleware inside net/http's server on
// 127.0.0.1 to check framing: Content-Length, HEAD, 206, 304 and 204.
func TestThroughRealServer(t *testing.T) {
	_, o, _, h := newTestStore(t, nil)
	o.respond = func(o *origin, n int64, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=60")
		w.Header().Set("Etag", `"x"`)
		if r.URL.Path == "/empty" {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		// Flush before the body: streamed, length unknown.
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
		_, _ = w.Write([]byte("hello, world"))
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	get := func(method, path string, hdr ...string) (*http.Response, string) {
		t.Helper()
		req, err := http.NewRequest(method, srv.URL+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		res, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, err := io.ReadAll(res.Body)
		if err != nil {
			t.Fatal(err)
		}
		return res, string(b)
	}
	cases := []struct {
		name, method, path string
		hdr                []string
		status             int
		body, cs           string
		contentLength      int64
	}{
		{"miss streams", "GET", "/a", nil, 200, "hello, world", "meshd; fwd=uri-miss; stored", -1},
		{"hit has length", "GET", "/a", nil, 200, "hello, world", "meshd; hit", 12},
		{"head hit", "HEAD", "/a", nil, 200, "", "meshd; hit", 12},
		{"range hit", "GET", "/a", []string{"Range", "bytes=7-"}, 206, "world", "meshd; hit", 5},
		{"conditional hit", "GET", "/a", []string{"If-None-Match", `"x"`}, 304, "", "meshd; hit", -1},
		{"204 miss", "GET", "/empty", nil, 204, "", "meshd; fwd=uri-miss; stored", -1},
		{"204 hit", "GET", "/empty", nil, 204, "", "meshd; hit", -1},
	}
	for _, c := range cases {
		res, body := get(c.method, c.path, c.hdr...)
		if res.StatusCode != c.status || body != c.body || res.Header.Get("Cache-Status") != c.cs {
			t.Errorf("%s: %d %q %q", c.name, res.StatusCode, body, res.Header.Get("Cache-Status"))
		}
		if c.contentLength >= 0 && res.ContentLength != c.contentLength {
			t.Errorf("%s: Content-Length %d, want %d", c.name, res.ContentLength, c.contentLength)
		}
	}
	if n := o.calls.Load(); n != 2 {
		t.Fatalf("origin calls %d, want 2", n)
	}
}
