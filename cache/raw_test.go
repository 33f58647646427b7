package cache

import (
	"bufio"
	"net/http"
	"net/http/httptest"
	"net/textproto"
	"strings"
	"testing"
)

// rawRecorder is a response writer that takes the stored fields as bytes,
// as meshd's HTTP/1.1 server does, and parses them back into its header
// when the status is written.
type rawRecorder struct {
	*httptest.ResponseRecorder
	raw   []byte
	calls int
}

func (r *rawRecorder) AddRawHeader(b []byte) { r.raw, r.calls = b, r.calls+1 }

func (r *rawRecorder) WriteHeader(code int) {
	if len(r.raw) > 0 {
		tp := textproto.NewReader(bufio.NewReader(strings.NewReader(string(r.raw) + "\r\n")))
		m, err := tp.ReadMIMEHeader()
		if err != nil {
			panic("stored fields do not parse: " + err.Error())
		}
		for k, v := range m {
			r.Header()[k] = append(r.Header()[k], v...)
		}
	}
	r.ResponseRecorder.WriteHeader(code)
}

// wrapped stands for the middlewares between the cache and the server.
type wrapped struct{ http.ResponseWriter }

func (w wrapped) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// TestRawHeaderHit: a hit served through a writer that takes the stored
// fields as bytes gets the same header as one served through a map, and a
// field an outer handler already set keeps the map path (the stored value
// must replace it).
func TestRawHeaderHit(t *testing.T) {
	_, o, _, h := newTestStore(t, nil)
	o.header = hdr("Cache-Control", "max-age=60", "Content-Type", "text/plain", "Etag", `"v1"`, "X-Two", "a", "X-Two", "b")
	do(h, "GET", "/r")
	plain := do(h, "GET", "/r")
	if !hasPrefix(plain.Header().Get("Cache-Status"), "meshd; hit") {
		t.Fatalf("not a hit: %v", plain.Header())
	}

	rr := &rawRecorder{ResponseRecorder: httptest.NewRecorder()}
	req := httptest.NewRequest("GET", "/r", nil)
	h.ServeHTTP(wrapped{rr}, req)
	if rr.calls != 1 {
		t.Fatalf("AddRawHeader called %d times, want 1", rr.calls)
	}
	for k, v := range plain.Header() {
		if got := rr.Header()[k]; strings.Join(got, "|") != strings.Join(v, "|") {
			t.Errorf("%s: raw path %q, map path %q", k, got, v)
		}
	}
	if len(rr.Header()) != len(plain.Header()) || rr.Body.String() != plain.Body.String() {
		t.Errorf("raw path header %v body %q; map path %v %q", rr.Header(), rr.Body, plain.Header(), plain.Body)
	}

	rr = &rawRecorder{ResponseRecorder: httptest.NewRecorder()}
	rr.Header().Set("Content-Type", "set/by-outer")
	h.ServeHTTP(rr, httptest.NewRequest("GET", "/r", nil))
	if rr.calls != 0 || rr.Header().Get("Content-Type") != "text/plain" {
		t.Errorf("with an outer field: %d raw calls, Content-Type %q", rr.calls, rr.Header().Get("Content-Type"))
	}
}

func TestAppendRawFieldsSanitizes(t *testing.T) {
	got := string(appendRawFields(nil, []field{{name: "X-A", values: []string{"a\r\nInjected: 1", "b"}}}))
	if got != "X-A: a  Injected: 1\r\nX-A: b\r\n" {
		t.Errorf("got %q", got)
	}
}
