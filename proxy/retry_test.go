package proxy

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// statusUpstream answers every request with code (and the header fields
// in hdr) after reading the whole request body, and counts its requests.
func statusUpstream(t *testing.T, code int, hdr ...string) (*Upstream, *atomic.Int64) {
	t.Helper()
	var n atomic.Int64
	_, u := plainUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		io.Copy(io.Discard, r.Body)
		for i := 0; i+1 < len(hdr); i += 2 {
			w.Header().Set(hdr[i], hdr[i+1])
		}
		w.WriteHeader(code)
		io.WriteString(w, "status "+strconv.Itoa(code))
	}))
	return u, &n
}

// bodyUpstream answers 200 with the length of the body it received.
func bodyUpstream(t *testing.T) (*Upstream, *atomic.Int64) {
	t.Helper()
	var n atomic.Int64
	_, u := plainUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		b, _ := io.ReadAll(r.Body)
		io.WriteString(w, strconv.Itoa(len(b)))
	}))
	return u, &n
}

// slowUpstream answers only when the request is cancelled or the test
// ends, and counts its requests.
func slowUpstream(t *testing.T) (*Upstream, *atomic.Int64) {
	t.Helper()
	var n atomic.Int64
	done := make(chan struct{})
	_, u := plainUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		select {
		case <-r.Context().Done():
		case <-done:
		}
	}))
	t.Cleanup(func() { close(done) }) // runs before the server's Close
	return u, &n
}

// rotatingRoute returns ups rotated by one more place per request, as a
// balancer spreads requests, so each upstream is first for 1/len of them.
func rotatingRoute(ups ...*Upstream) func(*http.Request) ([]*Upstream, error) {
	var next atomic.Int64
	return func(*http.Request) ([]*Upstream, error) {
		i := int(next.Add(1)) % len(ups)
		return append(append([]*Upstream(nil), ups[i:]...), ups[:i]...), nil
	}
}

func policyOf(p *CallPolicy) func(*http.Request) *CallPolicy {
	return func(*http.Request) *CallPolicy { return p }
}

var noEjection = &OutlierPolicy{ConsecutiveFailures: -1}

// TestPolicyRetries503: with one upstream of three answering 503, a
// policy that retries on 503 turns every answer into a 200, while without
// a policy the 503s reach the client.
func TestPolicyRetries503(t *testing.T) {
	bad, badHits := statusUpstream(t, 503)
	good1, _ := okUpstream(t)
	good2, _ := okUpstream(t)

	plain := startProxy(t, &Handler{Route: rotatingRoute(bad, good1, good2)})
	failed := 0
	for range 30 {
		if resp, _ := do(t, plain, "GET", ""); resp.StatusCode == 503 {
			failed++
		}
	}
	if failed == 0 {
		t.Fatal("without a policy no 503 reached the client: the test shows nothing")
	}

	bad, badHits = statusUpstream(t, 503) // no latency samples of its own yet
	h := &Handler{Route: rotatingRoute(bad, good1, good2),
		Policy: policyOf(&CallPolicy{Attempts: 3, RetryOn: Retry503, Outlier: noEjection})}
	addr := startProxy(t, h)
	for i := range 30 {
		resp, body := do(t, addr, "GET", "")
		if resp.StatusCode != 200 || body != "ok" {
			t.Fatalf("request %d: %d %q, want 200 from a good upstream", i, resp.StatusCode, body)
		}
	}
	if badHits.Load() != 10 || h.Stats().Retries != 10 {
		t.Fatalf("the 503 upstream got %d requests, %d retries; want 10 and 10", badHits.Load(), h.Stats().Retries)
	}
	if bad.Latency() != 0 {
		t.Errorf("the 503s were taken as latency samples (%v)", bad.Latency())
	}
}

// TestPolicyRetryBudget: a budget of 20% with no floor keeps the attempts
// within 1.2 times the requests while a third of first attempts fail;
// the retries it refused are counted and their 503s forwarded.
func TestPolicyRetryBudget(t *testing.T) {
	bad, badHits := statusUpstream(t, 503)
	good1, goodHits1 := okUpstream(t)
	good2, goodHits2 := okUpstream(t)
	h := &Handler{Route: rotatingRoute(bad, good1, good2), Policy: policyOf(&CallPolicy{
		Attempts: 3, RetryOn: Retry503, Budget: NewRetryBudget(0.2, 0), Outlier: noEjection})}
	addr := startProxy(t, h)
	const n = 300
	var got503 int
	for range n {
		if resp, _ := do(t, addr, "GET", ""); resp.StatusCode == 503 {
			got503++
		}
	}
	attempts := badHits.Load() + goodHits1.Load() + goodHits2.Load()
	if attempts > n*12/10+2 {
		t.Errorf("%d upstream attempts for %d requests, want at most %d", attempts, n, n*12/10+2)
	}
	st := h.Stats()
	if badHits.Load() < n/3 || st.Retries < n/5-2 || st.RetriesBudgeted == 0 || int64(got503) != st.RetriesBudgeted {
		t.Errorf("503 upstream hits %d, retries %d, refused by the budget %d, 503s forwarded %d: want ≥ %d, ≈ %d, > 0, equal to the refused",
			badHits.Load(), st.Retries, st.RetriesBudgeted, got503, n/3, n/5)
	}
}

// TestPolicyRetryAfter: a 503 whose Retry-After asks for more than the
// request has left is the client's answer, not retried; a short one is
// waited for and retried.
func TestPolicyRetryAfter(t *testing.T) {
	long, _ := statusUpstream(t, 503, "Retry-After", "120")
	short, _ := statusUpstream(t, 503, "Retry-After", "0")
	good, goodHits := okUpstream(t)
	p := &CallPolicy{Attempts: 3, RetryOn: Retry503, TotalTimeout: 2 * time.Second}
	addr := startProxy(t, &Handler{Route: fixedRoute(long, good), Policy: policyOf(p)})
	resp, body := do(t, addr, "GET", "")
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") != "120" || body != "status 503" || goodHits.Load() != 0 {
		t.Fatalf("Retry-After 120 with 2 s left: %d %q Retry-After %q, next candidate hits %d; want the 503 forwarded as it is",
			resp.StatusCode, body, resp.Header.Get("Retry-After"), goodHits.Load())
	}
	addr = startProxy(t, &Handler{Route: fixedRoute(short, good), Policy: policyOf(p)})
	if resp, body := do(t, addr, "GET", ""); resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("Retry-After 0: %d %q, want the next candidate's 200", resp.StatusCode, body)
	}
	// Without a total timeout the limit is the back-off's maximum.
	p2 := &CallPolicy{Attempts: 3, RetryOn: Retry503, BackoffBase: time.Millisecond, BackoffMax: time.Minute}
	addr = startProxy(t, &Handler{Route: fixedRoute(long, good), Policy: policyOf(p2)})
	if resp, _ := do(t, addr, "GET", ""); resp.StatusCode != 503 {
		t.Fatalf("Retry-After 120 over BackoffMax 1m: %d, want 503", resp.StatusCode)
	}
}

// TestPolicyReplayBody: a POST whose body fits ReplayBody is sent whole
// to the next candidate after a 503, of declared or unknown length; a
// larger one is not retried once the upstream read it.
func TestPolicyReplayBody(t *testing.T) {
	bad, badHits := statusUpstream(t, 503)
	good, goodHits := bodyUpstream(t)
	p := &CallPolicy{Attempts: 2, RetryOn: Retry503, ReplayBody: 2 << 10}
	addr := startProxy(t, &Handler{Route: fixedRoute(bad, good), Policy: policyOf(p)})
	body := strings.Repeat("x", 1<<10)
	for _, chunked := range []bool{false, true} {
		var rd io.Reader = strings.NewReader(body)
		if chunked {
			rd = io.MultiReader(rd) // no length known to the client
		}
		req, _ := http.NewRequest("POST", "http://"+addr+"/", rd)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(got) != "1024" {
			t.Fatalf("chunked %v: %d %q, want 200 and the whole 1024 bytes at the second upstream", chunked, resp.StatusCode, got)
		}
	}
	if badHits.Load() != 2 || goodHits.Load() != 2 {
		t.Fatalf("hits %d and %d, want 2 and 2", badHits.Load(), goodHits.Load())
	}

	for _, chunked := range []bool{false, true} {
		small := &CallPolicy{Attempts: 2, RetryOn: Retry503, ReplayBody: 512}
		addr := startProxy(t, &Handler{Route: fixedRoute(bad, good), Policy: policyOf(small)})
		var rd io.Reader = strings.NewReader(body)
		if chunked {
			rd = io.MultiReader(rd)
		}
		req, _ := http.NewRequest("POST", "http://"+addr+"/", rd)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 503 || goodHits.Load() != 2 {
			t.Fatalf("body over ReplayBody (chunked %v): %d, next candidate hits %d; want the 503, no retry", chunked, resp.StatusCode, goodHits.Load())
		}
	}
}

// TestPolicyFirstByteTimeout: no header within FirstByteTimeout is a 504;
// with RetryTimeout a GET goes on to the next candidate, a POST does not.
func TestPolicyFirstByteTimeout(t *testing.T) {
	slow, slowHits := slowUpstream(t)
	good, goodHits := okUpstream(t)
	p := &CallPolicy{Attempts: 2, FirstByteTimeout: 100 * time.Millisecond}
	addr := startProxy(t, &Handler{Via: "gw", Route: fixedRoute(slow, good), Policy: policyOf(p)})
	resp, _ := do(t, addr, "GET", "")
	if resp.StatusCode != 504 || !strings.Contains(resp.Header.Get("Proxy-Status"), "error=http_response_timeout") || goodHits.Load() != 0 {
		t.Fatalf("slow upstream: %d Proxy-Status %q, next candidate hits %d; want 504 http_response_timeout, no retry",
			resp.StatusCode, resp.Header.Get("Proxy-Status"), goodHits.Load())
	}

	p = &CallPolicy{Attempts: 2, RetryOn: RetryTimeout, FirstByteTimeout: 100 * time.Millisecond}
	addr = startProxy(t, &Handler{Route: fixedRoute(slow, good), Policy: policyOf(p)})
	if resp, body := do(t, addr, "GET", ""); resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("GET with RetryTimeout: %d %q, want the next candidate's 200", resp.StatusCode, body)
	}
	if resp, _ := do(t, addr, "POST", ""); resp.StatusCode != 504 {
		t.Fatalf("POST with RetryTimeout: %d, want 504 (not idempotent)", resp.StatusCode)
	}
	if slowHits.Load() != 3 || goodHits.Load() != 1 {
		t.Fatalf("slow upstream hits %d, good %d; want 3 and 1", slowHits.Load(), goodHits.Load())
	}
}

// TestPolicyTotalTimeout: the total timeout ends the exchange whatever
// attempts remain: the second attempt is cut by it and the third never
// made.
func TestPolicyTotalTimeout(t *testing.T) {
	s1, h1 := slowUpstream(t)
	s2, h2 := slowUpstream(t)
	s3, h3 := slowUpstream(t)
	p := &CallPolicy{Attempts: 3, RetryOn: RetryTimeout, FirstByteTimeout: 200 * time.Millisecond, TotalTimeout: 300 * time.Millisecond}
	addr := startProxy(t, &Handler{Route: fixedRoute(s1, s2, s3), Policy: policyOf(p)})
	start := time.Now()
	resp, _ := do(t, addr, "GET", "")
	if resp.StatusCode != 504 {
		t.Fatalf("status %d, want 504", resp.StatusCode)
	}
	if h1.Load() != 1 || h2.Load() != 1 || h3.Load() != 0 {
		t.Fatalf("attempts %d, %d, %d; want 1, 1, 0", h1.Load(), h2.Load(), h3.Load())
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("took %v: the total timeout did not end it", d)
	}
	// A back-off that cannot fit in what is left is not waited for.
	bad, _ := statusUpstream(t, 503)
	good, goodHits := okUpstream(t)
	p = &CallPolicy{Attempts: 2, RetryOn: Retry503, BackoffBase: 24 * time.Hour, BackoffMax: 24 * time.Hour, TotalTimeout: time.Second}
	addr = startProxy(t, &Handler{Route: fixedRoute(bad, good), Policy: policyOf(p)})
	// The wait is uniform in [0, 24h): it fits in 1 s with a chance of
	// 1 in 86400 per request.
	for range 5 {
		if resp, _ := do(t, addr, "GET", ""); resp.StatusCode != 503 {
			t.Fatalf("status %d, want the 503: the back-off does not fit in the total timeout", resp.StatusCode)
		}
	}
	if goodHits.Load() != 0 {
		t.Fatalf("next candidate hits %d, want 0", goodHits.Load())
	}
}

// TestPolicyConnectFailure: a connect failure is retried by default, not
// when RetryOn leaves it out, and with a policy a streak of them ejects by
// the policy's threshold, not by EjectAfter.
func TestPolicyConnectFailure(t *testing.T) {
	a := refusedAddr(t)
	dead := &Upstream{Key: a, Addr: a, Name: "dead"}
	good, _ := okUpstream(t)
	other, _ := okUpstream(t)
	set := []*Upstream{dead, good, other}
	addr := startProxy(t, &Handler{Route: fixedRoute(set...), Policy: policyOf(&CallPolicy{})})
	for i := 1; i <= 5; i++ {
		if resp, _ := do(t, addr, "GET", ""); resp.StatusCode != 200 {
			t.Fatalf("request %d: %d, want 200 from the next candidate", i, resp.StatusCode)
		}
		if ej := dead.Ejected(time.Now()); ej != (i == 5) {
			t.Fatalf("after %d connect failures ejected = %v, want %v (5 by default)", i, ej, i == 5)
		}
	}
	addr = startProxy(t, &Handler{Route: fixedRoute(set...), Policy: policyOf(&CallPolicy{RetryOn: Retry503})})
	if resp, _ := do(t, addr, "GET", ""); resp.StatusCode != 502 {
		t.Fatalf("RetryOn without connect-failure: %d, want 502", resp.StatusCode)
	}
}

// TestOutlierEjection: five failures in a row eject; the ejection grows
// with each ejection that probation did not end; a success after an
// ejection ends it; at most MaxEjected of a set is ejected.
func TestOutlierEjection(t *testing.T) {
	o := &OutlierPolicy{}
	u, v, w := &Upstream{}, &Upstream{}, &Upstream{}
	set := []*Upstream{u, v, w}
	now := time.Unix(1000, 0)
	for i := 1; i <= 5; i++ {
		u.outlierResult(false, o, set, now)
		if u.Ejected(now) != (i == 5) {
			t.Fatalf("after %d failures ejected = %v", i, u.Ejected(now))
		}
	}
	if !u.Ejected(now.Add(29*time.Second)) || u.Ejected(now.Add(30*time.Second)) {
		t.Fatal("first ejection is not 30 s")
	}
	// Probation: the first failure after the ejection ejects for 60 s.
	now = now.Add(30 * time.Second)
	u.outlierResult(false, o, set, now)
	if u.Ejections() != 2 || !u.Ejected(now.Add(59*time.Second)) || u.Ejected(now.Add(60*time.Second)) {
		t.Fatalf("second ejection: %d times, not 60 s", u.Ejections())
	}
	// Capped at MaxEjectionTime.
	for range 20 {
		now = now.Add(MaxEjectionTime)
		u.outlierResult(false, o, set, now)
	}
	if !u.Ejected(now.Add(MaxEjectionTime-time.Second)) || u.Ejected(now.Add(MaxEjectionTime)) {
		t.Fatal("ejection time not capped at MaxEjectionTime")
	}
	// A success after the ejection passes probation.
	now = now.Add(MaxEjectionTime)
	u.outlierResult(true, o, set, now)
	if u.Ejections() != 0 {
		t.Fatalf("ejections %d after a success on probation, want 0", u.Ejections())
	}
	for i := 1; i < 5; i++ {
		u.outlierResult(false, o, set, now)
	}
	if u.Ejected(now) {
		t.Fatal("ejected on the 4th failure after probation passed")
	}
	u.outlierResult(false, o, set, now)
	if !u.Ejected(now) || u.Ejected(now.Add(30*time.Second)) {
		t.Fatal("not ejected for 30 s after probation passed and 5 failures")
	}

	// u is ejected: of three, v may not be too.
	for range 10 {
		v.outlierResult(false, o, set, now)
	}
	if v.Ejected(now) {
		t.Fatal("a second of three ejected with MaxEjected 10%")
	}
	// A set of two ejects none; MaxEjected 1 ejects all.
	x, y := &Upstream{}, &Upstream{}
	for range 10 {
		x.outlierResult(false, o, []*Upstream{x, y}, now)
	}
	if x.Ejected(now) {
		t.Fatal("one of two ejected")
	}
	all := &OutlierPolicy{MaxEjected: 1}
	v.outlierResult(false, all, set, now)
	if !v.Ejected(now) {
		t.Fatal("MaxEjected 1 did not eject a second of three")
	}
	for _, tt := range []struct {
		frac float64
		n    int
		want int
	}{{0, 1, 0}, {0, 2, 0}, {0, 3, 1}, {0, 19, 1}, {0, 20, 2}, {0.5, 4, 2}, {1, 7, 7}} {
		if got := (&OutlierPolicy{MaxEjected: tt.frac}).MaxEjectedOf(tt.n); got != tt.want {
			t.Errorf("MaxEjectedOf(%d) with %v = %d, want %d", tt.n, tt.frac, got, tt.want)
		}
	}
}

// TestPolicyEjects503: through the handler, five 503s in a row eject an
// upstream under the default outlier policy, and never as a fast answer.
func TestPolicyEjects503(t *testing.T) {
	bad, _ := statusUpstream(t, 503)
	g1, _ := okUpstream(t)
	g2, _ := okUpstream(t)
	addr := startProxy(t, &Handler{Route: fixedRoute(bad, g1, g2), Policy: policyOf(&CallPolicy{RetryOn: Retry503})})
	for i := 1; i <= 5; i++ {
		if resp, _ := do(t, addr, "GET", ""); resp.StatusCode != 200 {
			t.Fatalf("request %d: %d", i, resp.StatusCode)
		}
		if bad.Ejected(time.Now()) != (i == 5) {
			t.Fatalf("after %d 503s ejected = %v", i, bad.Ejected(time.Now()))
		}
	}
	if bad.Ejections() != 1 || bad.Latency() != 0 || g1.Latency() == 0 {
		t.Fatalf("ejections %d, latency of the 503 upstream %v, of the good %v", bad.Ejections(), bad.Latency(), g1.Latency())
	}
}

// TestRetryBudgetBound: whatever the ratio, floor, timing and order,
// retries taken never exceed ratio × requests + floor × seconds with
// traffic (+1 for rounding), and deposits older than the window fund
// nothing.
func TestRetryBudgetBound(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for trial := range 200 {
		ratio := float64(rng.IntN(50)) / 100
		floor := float64(rng.IntN(4))
		b := NewRetryBudget(ratio, floor)
		now := b.start
		n, retries := 0, 0
		seconds := map[int64]bool{}
		for range 2000 {
			now = now.Add(time.Duration(rng.IntN(20)) * time.Millisecond)
			b.record(now)
			n++
			seconds[b.second(now)] = true
			for range 2 { // every attempt fails: up to two retries
				if b.withdraw(now) {
					retries++
				}
			}
		}
		limit := ratio*float64(n) + floor*float64(len(seconds)) + 1
		if float64(retries) > limit {
			t.Fatalf("trial %d: ratio %v floor %v: %d retries for %d requests over %d s, limit %.0f", trial, ratio, floor, retries, n, len(seconds), limit)
		}
		if ratio >= 0.1 && float64(retries) < ratio*float64(n)*0.9 {
			t.Fatalf("trial %d: ratio %v: only %d retries for %d requests", trial, ratio, retries, n)
		}
	}

	b := NewRetryBudget(0.5, 0)
	for range 100 {
		b.record(b.start)
	}
	if !b.withdraw(b.start.Add(9 * time.Second)) {
		t.Fatal("a deposit 9 s old funds nothing")
	}
	if b.withdraw(b.start.Add(10 * time.Second)) {
		t.Fatal("a deposit 10 s old still funds retries")
	}
}

// TestRetryBudgetConcurrent: shared by many goroutines the budget keeps
// its bound (run with -race).
func TestRetryBudgetConcurrent(t *testing.T) {
	b := NewRetryBudget(0.2, 0)
	var retries atomic.Int64
	var wg sync.WaitGroup
	const workers, each = 8, 2000
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				now := time.Now()
				b.record(now)
				if b.withdraw(now) {
					retries.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if r := retries.Load(); r > workers*each/5+1 || r < workers*each/5-workers {
		t.Fatalf("%d retries for %d requests at 20%%", r, workers*each)
	}
}

// TestRetryErrorClassification: which failures each RetryOn bit retries.
func TestRetryErrorClassification(t *testing.T) {
	get, _ := http.NewRequest("GET", "http://x/", nil)
	post, _ := http.NewRequest("POST", "http://x/", nil)
	replay := &outgoing{replayable: true}
	dial := &dialError{err: errors.New("refused")}
	refused := errors.New("proxy: round trip to x: stream error: stream ID 3; REFUSED_STREAM")
	for _, tt := range []struct {
		r    *http.Request
		on   RetryOn
		err  error
		want bool
	}{
		{get, DefaultRetryOn, dial, true},
		{post, DefaultRetryOn, dial, true},
		{get, Retry503, dial, false},
		{post, DefaultRetryOn, refused, true},
		{post, Retry503, refused, false},
		{get, RetryTimeout, errFirstByteTimeout, true},
		{post, RetryTimeout, errFirstByteTimeout, false},
		{get, DefaultRetryOn, errFirstByteTimeout, false},
	} {
		if got := retryError(tt.r, replay, tt.on, tt.err); got != tt.want {
			t.Errorf("%s on %v after %v: %v, want %v", tt.r.Method, tt.on, tt.err, got, tt.want)
		}
	}
}

// TestConnectTimeoutContext: a request's ConnectTimeout shortens the
// pool's dial bound, never lengthens it.
func TestConnectTimeoutContext(t *testing.T) {
	short, long := 50*time.Millisecond, time.Hour
	for _, tt := range []struct {
		v    *time.Duration
		want time.Duration
	}{{nil, 5 * time.Second}, {&short, short}, {&long, 5 * time.Second}} {
		ctx := t.Context()
		if tt.v != nil {
			ctx = context.WithValue(ctx, connectTimeoutKey{}, tt.v)
		}
		start := time.Now()
		dctx, cancel := connectContext(ctx, 5*time.Second)
		end := time.Now()
		dl, ok := dctx.Deadline()
		cancel()
		if !ok || dl.Before(start.Add(tt.want)) || dl.After(end.Add(tt.want)) {
			t.Errorf("value %v: deadline in %v, want %v", tt.v, dl.Sub(start), tt.want)
		}
	}
}

// TestPolicyAllocs: a CallPolicy without timeouts adds no allocation to a
// forwarded GET that succeeds at once.
func TestPolicyAllocs(t *testing.T) {
	if raceDetector {
		t.Skip("the race detector allocates")
	}
	_, up := plainUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	p := &CallPolicy{Attempts: 3, RetryOn: DefaultRetryOn | Retry503, Budget: NewRetryBudget(0.2, 10), BackoffBase: time.Millisecond}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	pool := &Pool{}
	t.Cleanup(pool.CloseIdle)
	plain := &Handler{Route: fixedRoute(up), Pool: pool, Via: "t", Logger: logger}
	withPolicy := &Handler{Route: fixedRoute(up), Pool: pool, Via: "t", Logger: logger, Policy: policyOf(p)}
	req := httptest.NewRequest("GET", "http://web.test/", nil)
	w := &discardWriter{h: http.Header{}}
	measure := func(h *Handler) float64 {
		return testing.AllocsPerRun(200, func() {
			clear(w.h)
			h.ServeHTTP(w, req)
			if w.code != 200 {
				t.Fatalf("status %d", w.code)
			}
		})
	}
	measure(plain) // connections and timers warm
	a, b := measure(plain), measure(withPolicy)
	if b > a {
		t.Fatalf("%.1f allocations per request with a policy, %.1f without", b, a)
	}
}

// TestPolicyIdleTimeout: a response whose body stalls longer than the
// idle timeout is cut after what it sent; one that keeps sending, slower
// than the timeout in all but never idle for it, completes.
func TestPolicyIdleTimeout(t *testing.T) {
	stream := func(gap time.Duration, chunks int) *Upstream {
		_, u := plainUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			rc := http.NewResponseController(w)
			for i := 0; i < chunks; i++ {
				io.WriteString(w, "chunk\n")
				rc.Flush()
				select {
				case <-time.After(gap):
				case <-r.Context().Done():
					return
				}
			}
		}))
		return u
	}
	p := &CallPolicy{IdleTimeout: 300 * time.Millisecond}
	stalls := startProxy(t, &Handler{Route: fixedRoute(stream(5*time.Second, 2)), Policy: policyOf(p)})
	start := time.Now()
	resp, err := http.Get("http://" + stalls + "/")
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err == nil || string(b) != "chunk\n" || time.Since(start) > 3*time.Second {
		t.Errorf("stalled stream: %q, %v after %v; want the first chunk, then the response cut at about 300ms", b, err, time.Since(start))
	}
	// 8 chunks 100 ms apart: 800 ms in all, never 300 ms idle.
	slow := startProxy(t, &Handler{Route: fixedRoute(stream(100*time.Millisecond, 8)), Policy: policyOf(p)})
	resp, err = http.Get("http://" + slow + "/")
	if err != nil {
		t.Fatal(err)
	}
	b, err = io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || strings.Count(string(b), "chunk") != 8 {
		t.Errorf("slow but moving stream: %d chunks, %v; want all 8", strings.Count(string(b), "chunk"), err)
	}
}
