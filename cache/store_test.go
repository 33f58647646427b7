package cache

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestValidate(t *testing.T) {
	cases := []struct {
		name string
		s    *Store
		want string // error substring, "" = valid
	}{
		{"zero value", &Store{}, ""},
		{"explicit", &Store{MaxBytes: 1 << 20, MaxObject: 1 << 10, CollapseWait: time.Second, Name: "edge-1"}, ""},
		{"negative MaxBytes", &Store{MaxBytes: -1}, "MaxBytes"},
		{"negative MaxObject", &Store{MaxObject: -1}, "MaxObject"},
		{"MaxObject over MaxBytes", &Store{MaxBytes: 1 << 20, MaxObject: 2 << 20}, "exceeds"},
		{"default MaxObject over small MaxBytes", &Store{MaxBytes: 1 << 20}, "exceeds"},
		{"negative CollapseWait", &Store{CollapseWait: -1}, "CollapseWait"},
		{"negative KeepStale", &Store{KeepStale: -1}, "KeepStale"},
		{"negative MaxHeuristic", &Store{MaxHeuristic: -1}, "MaxHeuristic"},
		{"negative RefreshTimeout", &Store{RefreshTimeout: -1}, "RefreshTimeout"},
		{"bad Name", &Store{Name: "a b"}, "Name"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.s.Validate()
			if c.want == "" {
				if err != nil {
					t.Fatalf("unexpected error %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want one naming %q", err, c.want)
			}
			// Start refuses it too and leaves the store unstarted.
			if err := c.s.Start(context.Background()); err == nil {
				t.Fatal("Start accepted an invalid store")
			}
			if c.s.Collectors() != nil {
				t.Fatal("a failed Start left state behind")
			}
		})
	}
}

func TestLifecycle(t *testing.T) {
	o := &origin{clock: newClock(), header: hdr("Cache-Control", "max-age=60")}
	s := &Store{Now: o.clock.Now, MaxBytes: 1 << 20, MaxObject: 1 << 10}
	h := s.Middleware(o)
	// Before Start: pass-through.
	if w := do(h, "GET", "http://example.com/l"); w.Header().Get("Cache-Status") != "" {
		t.Fatal("cache active before Start")
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err == nil {
		t.Fatal("second Start accepted")
	}
	do(h, "GET", "http://example.com/l")
	if w := do(h, "GET", "http://example.com/l"); w.Header().Get("Cache-Status") != "meshd; hit" {
		t.Fatalf("no hit: %q", w.Header().Get("Cache-Status"))
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	before := o.calls.Load()
	if w := do(h, "GET", "http://example.com/l"); w.Header().Get("Cache-Status") != "" || o.calls.Load() != before+1 {
		t.Fatal("cache active after Close")
	}
	if n := s.PurgeURL("http://example.com/l"); n != 0 {
		t.Fatalf("purge after close removed %d", n)
	}
}

func TestPurge(t *testing.T) {
	s, o, _, h := newTestStore(t, nil)
	o.respond = func(o *origin, n int64, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=600")
		w.Header().Set("Vary", "Accept-Language")
		if tags := r.URL.Query().Get("tags"); tags != "" {
			w.Header().Set("Cache-Tag", tags)
		}
		if keys := r.URL.Query().Get("keys"); keys != "" {
			w.Header().Set("Surrogate-Key", keys)
		}
		o.write(n, w)
	}
	objects := []struct {
		url  string
		lang []string
	}{
		{"http://example.com/img/a.png?tags=img,a", []string{"en", "de"}},
		{"http://example.com/img/b.png?tags=img&keys=b+shared", []string{"en"}},
		{"http://example.com/css/c.css?keys=shared", []string{"en"}},
		{"https://example.com/img/a.png?tags=img,a", []string{"en"}},
		{"http://other.com/img/a.png?tags=img", []string{"en"}},
	}
	warm := func() {
		for _, ob := range objects {
			for _, l := range ob.lang {
				do(h, "GET", ob.url, "Accept-Language", l)
			}
		}
	}
	cached := func(url, lang string) bool {
		return do(h, "GET", url, "Accept-Language", lang, "Cache-Control", "only-if-cached").Code == 200
	}
	cases := []struct {
		name  string
		purge func() int
		want  int
		gone  []string // urls whose every variant is gone
	}{
		{"url with variants", func() int { return s.PurgeURL("http://EXAMPLE.com:80/img/a.png?tags=img,a") }, 2, []string{objects[0].url}},
		{"url fragment ignored", func() int { return s.PurgeURL("http://example.com/css/c.css?keys=shared#top") }, 1, []string{objects[2].url}},
		{"bad url", func() int { return s.PurgeURL("example.com/img") }, 0, nil},
		{"prefix with scheme", func() int { return s.PurgePrefix("http://example.com/img/") }, 3, []string{objects[0].url, objects[1].url}},
		{"prefix without scheme", func() int { return s.PurgePrefix("Example.com/img/") }, 4, []string{objects[0].url, objects[1].url, objects[3].url}},
		{"empty prefix", func() int { return s.PurgePrefix("") }, 0, nil},
		{"tag from Cache-Tag", func() int { return s.PurgeTag("img") }, 5, []string{objects[0].url, objects[1].url, objects[3].url, objects[4].url}},
		{"tag from Surrogate-Key", func() int { return s.PurgeTag("shared") }, 2, []string{objects[1].url, objects[2].url}},
		{"unknown tag", func() int { return s.PurgeTag("nope") }, 0, nil},
	}
	st := s.st.Load()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			warm()
			if got := counterValue(t, st.m.gauges[0]); got != 6 {
				t.Fatalf("objects gauge %v before purge, want 6", got)
			}
			if got := c.purge(); got != c.want {
				t.Fatalf("purge removed %d, want %d", got, c.want)
			}
			if got := counterValue(t, st.m.gauges[0]); got != float64(6-c.want) {
				t.Fatalf("objects gauge %v after purge, want %d", got, 6-c.want)
			}
			for _, ob := range objects {
				gone := false
				for _, g := range c.gone {
					gone = gone || g == ob.url
				}
				for _, l := range ob.lang {
					if cached(ob.url, l) == gone {
						t.Errorf("%s [%s]: cached=%v, want %v", ob.url, l, !gone, !gone)
					}
				}
			}
			// Purging again finds nothing.
			if got := c.purge(); got != 0 {
				t.Fatalf("second purge removed %d", got)
			}
		})
	}
	_ = o
}

// TestPurgeDuringFetch: a response fetched across a purge is not stored.
func TestPurgeDuringFetch(t *testing.T) {
	s, o, _, h := newTestStore(t, nil)
	o.respond = func(o *origin, n int64, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=60")
		w.WriteHeader(200)
		if n == 1 {
			s.PurgeURL("http://example.com/p")
		}
		_, _ = w.Write([]byte("x"))
	}
	do(h, "GET", "http://example.com/p")
	do(h, "GET", "http://example.com/p")
	if o.calls.Load() != 2 {
		t.Fatal("a response fetched across a purge was stored")
	}
}

// TestIndexFollowsEvictions fills a small store far beyond its size: the
// index, gauges and purge counts must agree with what ristretto holds.
func TestIndexFollowsEvictions(t *testing.T) {
	s, o, _, h := newTestStore(t, func(s *Store) { s.MaxBytes = 64 << 10; s.MaxObject = 4 << 10 })
	body := strings.Repeat("b", 2000)
	o.respond = func(o *origin, n int64, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=600")
		w.Header().Set("Cache-Tag", "all")
		_, _ = w.Write([]byte(body))
	}
	for i := range 300 {
		do(h, "GET", fmt.Sprintf("http://example.com/e/%d", i))
	}
	st := s.st.Load()
	st.settle()
	objects := int(counterValue(t, st.m.gauges[0]))
	bytes := counterValue(t, st.m.gauges[1])
	if objects <= 0 || objects >= 300 {
		t.Fatalf("objects gauge %d: want some, not all", objects)
	}
	if bytes > 64<<10 {
		t.Fatalf("bytes gauge %v over MaxBytes", bytes)
	}
	if ev := counterValue(t, st.m.evictions) + counterValue(t, st.m.rejections); ev == 0 {
		t.Fatal("no evictions or rejections counted")
	}
	// Every indexed entry is really in the store.
	st.idx.mu.Lock()
	var keys []string
	for k := range st.idx.byPrimary {
		keys = append(keys, k)
	}
	st.idx.mu.Unlock()
	if len(keys) != objects {
		t.Fatalf("index has %d URLs, gauge %d", len(keys), objects)
	}
	for _, k := range keys {
		if do(h, "GET", k, "Cache-Control", "only-if-cached").Code != 200 {
			t.Fatalf("%s indexed but not in the store", k)
		}
	}
	if n := s.PurgeTag("all"); n != objects {
		t.Fatalf("purge removed %d, gauge said %d", n, objects)
	}
	if got := counterValue(t, st.m.gauges[1]); got != 0 {
		t.Fatalf("bytes gauge %v after purging all", got)
	}
}

func TestMetrics(t *testing.T) {
	s, o, clock, h := newTestStore(t, nil)
	o.header = hdr("Cache-Control", "max-age=10", "Etag", `"v"`)
	o.respond = revalidating(`"v"`, nil)
	do(h, "GET", "http://example.com/m") // miss, store
	do(h, "GET", "http://example.com/m") // hit
	clock.Advance(20 * time.Second)
	do(h, "GET", "http://example.com/m") // revalidation 304
	st := s.st.Load()
	want := map[string]float64{"hits": 1, "misses": 1, "stores": 2, "revalidations": 1, "notModified": 1}
	got := map[string]float64{
		"hits":          counterValue(t, st.m.hits),
		"misses":        counterValue(t, st.m.misses),
		"stores":        counterValue(t, st.m.stores),
		"revalidations": counterValue(t, st.m.revalidations),
		"notModified":   counterValue(t, st.m.notModified),
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
	if n := len(s.Collectors()); n != 13 {
		t.Fatalf("%d collectors", n)
	}
}

func TestNormalizeURL(t *testing.T) {
	cases := []struct{ in, want string }{
		{"http://Example.COM/a?b=C", "http://example.com/a?b=C"},
		{"HTTPS://example.com:443/x", "https://example.com/x"},
		{"http://example.com:8080", "http://example.com:8080/"},
		{"http://example.com?q", "http://example.com/?q"},
		{"http://example.com/a#frag", "http://example.com/a"},
		{"ftp://example.com/", ""},
		{"/relative", ""},
		{"http:///nohost", ""},
		{"http://user@example.com/", ""},
	}
	for _, c := range cases {
		got, err := NormalizeURL(c.in)
		if c.want == "" {
			if err == nil {
				t.Errorf("%q: accepted as %q", c.in, got)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("%q: got %q, %v; want %q", c.in, got, err, c.want)
		}
	}
}

func TestSweep(t *testing.T) {
	s, o, clock, h := newTestStore(t, func(s *Store) { s.KeepStale = time.Minute })
	o.header = hdr("Cache-Control", "max-age=10, stale-if-error=20")
	do(h, "GET", "http://example.com/a")
	o.header = hdr("Cache-Control", "max-age=600")
	do(h, "GET", "http://example.com/b")
	st := s.st.Load()
	clock.Advance(80 * time.Second) // a: 10 + 20 + 60 = 90 s of use
	if n := st.sweep(); n != 0 {
		t.Fatalf("swept %d entries early", n)
	}
	clock.Advance(20 * time.Second)
	if n := st.sweep(); n != 1 {
		t.Fatalf("swept %d entries, want 1", n)
	}
	if got := counterValue(t, st.m.gauges[0]); got != 1 {
		t.Fatalf("objects gauge %v, want 1", got)
	}
	if do(h, "GET", "http://example.com/b", "Cache-Control", "only-if-cached").Code != 200 {
		t.Fatal("fresh entry swept")
	}
}

// TestConcurrentUseAndClose hammers the store from many goroutines while
// purging, then closes it under load: nothing may panic or race.
func TestConcurrentUseAndClose(t *testing.T) {
	clock := newClock()
	s := &Store{Now: clock.Now, MaxBytes: 1 << 20, MaxObject: 1 << 12}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	o := &origin{clock: clock, header: hdr("Cache-Control", "max-age=1, stale-while-revalidate=5", "Etag", `"e"`, "Vary", "X-V")}
	h := s.Middleware(o)
	stop := make(chan struct{})
	done := make(chan struct{})
	const workers = 8
	for w := range workers {
		go func() {
			defer func() { done <- struct{}{} }()
			for i := 0; i < 2000; i++ {
				select {
				case <-stop:
					return
				default:
				}
				u := fmt.Sprintf("http://example.com/%d", i%7)
				switch i % 11 {
				case 0:
					do(h, "POST", u)
				case 1:
					s.PurgePrefix("example.com/")
				case 2:
					clock.Advance(time.Second)
				default:
					do(h, "GET", u, "X-V", fmt.Sprint(w%2))
				}
			}
		}()
	}
	for range workers / 2 {
		<-done
	}
	close(stop)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for range workers - workers/2 {
		<-done
	}
}
