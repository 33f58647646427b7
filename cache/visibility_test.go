package cache

import (
	"net/http"
	"strconv"
	"sync"
	"testing"
)

// TestStoredDespiteUnrelatedInvalidation: an unsafe request to another
// URL while a response is being fetched must not keep that response out
// of the store, whatever the two URLs hash to.
func TestStoredDespiteUnrelatedInvalidation(t *testing.T) {
	s, o, _, h := newTestStore(t, nil)
	st := s.st.Load()
	const a = "http://example.com/a"
	const buckets = 1 << 16
	slot := st.hashString(a) % buckets
	// Find another URL that shares the low bits of a's hash, the worst
	// case for any scheme that tracks invalidations by hash buckets.
	other := ""
	for i := range 1 << 22 {
		u := "http://example.com/b" + strconv.Itoa(i)
		if st.hashString(u)%buckets == slot {
			other = u
			break
		}
	}
	if other == "" {
		t.Fatal("no URL sharing a's slot")
	}
	started, release := make(chan struct{}), make(chan struct{})
	o.respond = func(o *origin, n int64, w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && r.URL.Path == "/a" && n == 1 {
			close(started)
			<-release
		}
		w.Header().Set("Cache-Control", "max-age=600")
		o.write(n, w)
	}
	done := make(chan struct{})
	go func() { defer close(done); do(h, "GET", a) }()
	<-started
	if w := do(h, "POST", other); w.Code != 200 {
		t.Fatalf("POST: %d", w.Code)
	}
	close(release)
	<-done
	if w := do(h, "GET", a); w.Header().Get("Cache-Status") != "meshd; hit" {
		t.Fatalf("second GET: Cache-Status %q, want a hit", w.Header().Get("Cache-Status"))
	}
}

// TestSecondRequestHitsUnderLoad: many clients each fetch their own URL
// twice in sequence while others send unsafe requests; every second
// request must be a hit.
func TestSecondRequestHitsUnderLoad(t *testing.T) {
	_, o, _, h := newTestStore(t, nil)
	o.header = hdr("Cache-Control", "max-age=600")
	const clients, rounds = 32, 40
	var wg sync.WaitGroup
	errs := make(chan string, clients*rounds)
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range rounds {
				u := "http://example.com/c" + strconv.Itoa(c) + "/" + strconv.Itoa(i)
				if c%4 == 0 {
					// Unsafe requests to URLs nobody reads.
					do(h, "POST", u+"/post")
					continue
				}
				do(h, "GET", u)
				if w := do(h, "GET", u); w.Header().Get("Cache-Status") != "meshd; hit" {
					errs <- u + ": " + w.Header().Get("Cache-Status")
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	n := 0
	for e := range errs {
		if n < 5 {
			t.Errorf("second request not a hit: %s", e)
		}
		n++
	}
	if n > 0 {
		t.Errorf("%d of %d second requests were not hits", n, clients*rounds*3/4)
	}
}

// TestInvalLog: the log names exactly the URLs invalidated since a mark,
// and answers "invalidated" when it has forgotten too much to tell.
func TestInvalLog(t *testing.T) {
	var l invalLog
	start := l.seq.Load()
	l.add(1)
	l.add(2)
	if !l.since(start, 1) || !l.since(start, 2) || l.since(start, 3) {
		t.Fatal("since does not name exactly the invalidated hashes")
	}
	if l.since(l.seq.Load(), 1) {
		t.Fatal("an invalidation before the mark counted")
	}
	for i := range invalRing {
		l.add(uint64(100 + i))
	}
	if !l.since(start, 3) {
		t.Fatal("overflowed log did not answer conservatively")
	}
}
