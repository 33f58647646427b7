package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestServe(t *testing.T) {
	o := newOrigin()
	etag1k := o.objects["/1k"].etag[0]
	tests := []struct {
		name         string
		method       string
		target       string
		header       map[string]string
		status       int
		cacheControl string
		bodyLen      int
		counted      bool
	}{
		{"1k cacheable", "GET", "/1k", nil, 200, "public, max-age=3600", 1024, true},
		{"100k cacheable", "GET", "/100k", nil, 200, "public, max-age=3600", 100 << 10, true},
		{"1k no-store", "GET", "/nostore/1k", nil, 200, "no-store", 1024, true},
		{"100k no-store", "GET", "/nostore/100k", nil, 200, "no-store", 100 << 10, true},
		{"query ignored", "GET", "/nostore/1k?r=42", nil, 200, "no-store", 1024, true},
		{"head has no body", "HEAD", "/1k", nil, 200, "public, max-age=3600", 0, true},
		{"matching etag", "GET", "/1k", map[string]string{"If-None-Match": etag1k}, 304, "public, max-age=3600", 0, true},
		{"other etag", "GET", "/1k", map[string]string{"If-None-Match": `"x"`}, 200, "public, max-age=3600", 1024, true},
		{"unknown path", "GET", "/2k", nil, 404, "", -1, false},
		{"post refused", "POST", "/1k", nil, 405, "", -1, false},
		{"health", "GET", "/healthz", nil, 200, "", 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := o.served.Load()
			req := httptest.NewRequest(tc.method, tc.target, nil)
			for k, v := range tc.header {
				req.Header.Set(k, v)
			}
			rec := httptest.NewRecorder()
			o.ServeHTTP(rec, req)
			if rec.Code != tc.status {
				t.Fatalf("status %d, want %d", rec.Code, tc.status)
			}
			if got := rec.Header().Get("Cache-Control"); got != tc.cacheControl {
				t.Errorf("Cache-Control %q, want %q", got, tc.cacheControl)
			}
			if tc.bodyLen >= 0 && rec.Body.Len() != tc.bodyLen {
				t.Errorf("body %d bytes, want %d", rec.Body.Len(), tc.bodyLen)
			}
			if tc.status == 200 && tc.bodyLen > 0 {
				if got := rec.Header().Get("Content-Length"); got != strconv.Itoa(tc.bodyLen) {
					t.Errorf("Content-Length %q, want %d", got, tc.bodyLen)
				}
			}
			if got, want := o.served.Load()-before, map[bool]int64{true: 1}[tc.counted]; got != want {
				t.Errorf("served count grew by %d, want %d", got, want)
			}
		})
	}
}

// TestSameBody: the cacheable and the no-store variant of a size carry
// the same bytes, so the proxy and the cache benchmark move equal bodies.
func TestSameBody(t *testing.T) {
	o := newOrigin()
	for name := range sizes {
		a, b := o.objects["/"+name], o.objects["/nostore/"+name]
		if !bytes.Equal(a.body, b.body) || a.etag[0] != b.etag[0] {
			t.Errorf("%s: variants differ", name)
		}
	}
	if o.objects["/1k"].etag[0] == o.objects["/100k"].etag[0] {
		t.Error("1k and 100k share an ETag")
	}
}

func TestCount(t *testing.T) {
	o := newOrigin()
	for range 3 {
		o.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/1k", nil))
	}
	rec := httptest.NewRecorder()
	o.ServeHTTP(rec, httptest.NewRequest("GET", "/_count", nil))
	if got := strings.TrimSpace(rec.Body.String()); got != "3" {
		t.Fatalf("/_count = %q, want 3", got)
	}
	if cc := rec.Header().Get("Cache-Control"); cc != "no-store" {
		t.Errorf("/_count Cache-Control %q: a cache must never answer it", cc)
	}
}

func TestFreePorts(t *testing.T) {
	ports, err := freePorts(5)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[int]bool{}
	for _, p := range ports {
		if seen[p] {
			t.Fatalf("port %d returned twice", p)
		}
		seen[p] = true
		// The port must really be free again for both protocols.
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			t.Fatalf("tcp %d: %v", p, err)
		}
		pc, err := net.ListenPacket("udp", ln.Addr().String())
		if err != nil {
			t.Fatalf("udp %d: %v", p, err)
		}
		ln.Close()
		pc.Close()
	}
	for _, n := range []int{0, -1, 101} {
		if _, err := freePorts(n); err == nil {
			t.Errorf("freePorts(%d): no error", n)
		}
	}
}

// syncBuffer lets the test read what run writes from another goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestRun starts the command on port 0, fetches an object over real
// loopback and stops it through its context.
func TestRun(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out syncBuffer
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"-listen", "127.0.0.1:0"}, &out, io.Discard) }()
	var addr string
	for deadline := time.Now().Add(10 * time.Second); addr == "" && time.Now().Before(deadline); {
		if s := out.String(); strings.HasSuffix(s, "\n") {
			addr = strings.TrimSpace(strings.TrimPrefix(s, "origin listening on "))
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if addr == "" {
		t.Fatal("origin did not report its address")
	}
	resp, err := http.Get("http://" + addr + "/100k")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 || len(body) != 100<<10 {
		t.Fatalf("GET /100k: %v, status %d, %d bytes", err, resp.StatusCode, len(body))
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not return after cancel")
	}
}

func TestRunArgs(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantErr string
		wantOut int // lines
	}{
		{"free ports", []string{"-free-ports", "3"}, "", 3},
		{"too many ports", []string{"-free-ports", "1000"}, "out of range", 0},
		{"stray argument", []string{"extra"}, "unexpected argument", 0},
		{"bad flag", []string{"-nope"}, "not defined", 0},
		{"bad listen", []string{"-listen", "256.0.0.1:0"}, "listen:", 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			err := run(context.Background(), tc.args, &out, io.Discard)
			if tc.wantErr == "" && err != nil {
				t.Fatalf("run: %v", err)
			}
			if tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("run: %v, want error containing %q", err, tc.wantErr)
			}
			if lines := strings.Count(out.String(), "\n"); lines != tc.wantOut {
				t.Errorf("printed %d lines, want %d", lines, tc.wantOut)
			}
		})
	}
}

// FuzzServe feeds arbitrary targets and validators to the origin: it never
// panics, answers only 200, 304 or 404, and a 200 carries a whole object.
func FuzzServe(f *testing.F) {
	f.Add("/1k", "")
	f.Add("/nostore/100k?a=b", `"x"`)
	f.Add("/../1k", "*")
	f.Add("/_count", "")
	f.Add("//1k", "")
	o := newOrigin()
	f.Fuzz(func(t *testing.T, path, inm string) {
		req := httptest.NewRequest("GET", "/", nil)
		req.URL.Path = path
		req.Header.Set("If-None-Match", inm)
		rec := httptest.NewRecorder()
		o.ServeHTTP(rec, req)
		switch rec.Code {
		case 200:
			if obj := o.lookup(path); obj != nil && !bytes.Equal(rec.Body.Bytes(), obj.body) {
				t.Fatalf("%q: body differs from the object", path)
			}
		case 304, 404:
		default:
			t.Fatalf("%q: status %d", path, rec.Code)
		}
	})
}
