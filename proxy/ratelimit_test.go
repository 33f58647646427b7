package proxy

import (
	"math"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"
	"unsafe"
)

// rlBase is the clock of these tests: every now is rlBase plus a simulated
// offset, so nothing depends on how fast the machine runs.
var rlBase = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

func rlAt(d time.Duration) time.Time { return rlBase.Add(d) }

// A caller sending 200 requests a second against a 50/s limit with a burst
// of 50 gets its burst plus 50 a second, and not one more.
func TestRateLimitRate(t *testing.T) {
	l := NewRateLimiter(50, 50, 0)
	const attempts = 1000 // 200/s for 5 s, at 0, 5 ms, ..., 4.995 s
	allowed := 0
	for i := range attempts + 1 { // and one at 5 s
		if ok, _ := l.Allow("spiffe://mesh.example/ns/a/sa/client", rlAt(time.Duration(i)*5*time.Millisecond)); ok {
			allowed++
		}
	}
	const want = 50*5 + 50
	if allowed < want-1 || allowed > want+1 {
		t.Errorf("allowed %d of %d attempts, want %d ± 1", allowed, attempts+1, want)
	}
	st := l.Stats()
	if st.Allowed != uint64(allowed) || st.Limited != uint64(attempts+1-allowed) || st.Keys != 1 {
		t.Errorf("Stats() = %+v, want Allowed %d Limited %d Keys 1", st, allowed, attempts+1-allowed)
	}
}

// One caller's flood does not spend another's tokens, nor the route total's.
func TestRateLimitKeysIndependent(t *testing.T) {
	l := NewRateLimiter(1, 3, 0)
	now := rlAt(0)
	for i := range 3 {
		if ok, _ := l.Allow("10.0.0.1", now); !ok {
			t.Fatalf("10.0.0.1: request %d of its burst of 3 refused", i+1)
		}
	}
	if ok, _ := l.Allow("10.0.0.1", now); ok {
		t.Fatal("10.0.0.1: a 4th request within its burst of 3 allowed")
	}
	for _, key := range []string{"10.0.0.2", "", "spiffe://mesh.example/ns/a/sa/b"} {
		for i := range 3 {
			if ok, _ := l.Allow(key, now); !ok {
				t.Errorf("%q: request %d refused after another key's flood", key, i+1)
			}
		}
	}
	if ok, _ := l.Allow("10.0.0.1", now); ok {
		t.Error("10.0.0.1 allowed again without time passing")
	}
}

// retryAfter is exactly the time until the key's next token: a retry a
// nanosecond earlier is refused, one on time is allowed.
func TestRateLimitRetryAfter(t *testing.T) {
	tests := []struct {
		rate  float64
		burst int
		spent time.Duration // when the burst was spent
		at    time.Duration // the refused request
		want  time.Duration
	}{
		{rate: 10, burst: 1, at: 30 * time.Millisecond, want: 70 * time.Millisecond},
		{rate: 10, burst: 1, want: 100 * time.Millisecond},
		{rate: 1, burst: 5, at: 250 * time.Millisecond, want: 750 * time.Millisecond},
		{rate: 0.5, burst: 2, spent: time.Second, at: time.Second, want: 2 * time.Second},
		{rate: 3, burst: 2, want: 333333333}, // 1/3 s, to the nanosecond
	}
	for _, tt := range tests {
		name := strconv.FormatFloat(tt.rate, 'g', -1, 64) + "/s burst " + strconv.Itoa(tt.burst)
		l := NewRateLimiter(tt.rate, tt.burst, 0)
		for i := range tt.burst {
			if ok, _ := l.Allow("k", rlAt(tt.spent)); !ok {
				t.Fatalf("%s: request %d of the burst refused", name, i+1)
			}
		}
		ok, got := l.Allow("k", rlAt(tt.at))
		if ok || got != tt.want {
			t.Errorf("%s: Allow at %v = %v, %v; want false, %v", name, tt.at, ok, got, tt.want)
			continue
		}
		// Refusals spend nothing: retrying early does not push the next
		// token away.
		for range 10 {
			l.Allow("k", rlAt(tt.at))
		}
		if ok, _ := l.Allow("k", rlAt(tt.at+got-1)); ok {
			t.Errorf("%s: allowed 1ns before retryAfter", name)
		}
		if ok, _ := l.Allow("k", rlAt(tt.at+got)); !ok {
			t.Errorf("%s: refused at retryAfter", name)
		}
	}
}

// burstOf counts what a fresh key may spend at one instant.
func burstOf(l *RateLimiter, limit int) int {
	for i := range limit {
		if ok, _ := l.Allow("k", rlBase); !ok {
			return i
		}
	}
	return limit
}

// Edge values of the configuration: none panics, none silently stops
// limiting, and a nil limiter is "no limit".
func TestRateLimitConfigEdges(t *testing.T) {
	const decades = 10 * 365 * 24 * time.Hour
	tests := []struct {
		name      string
		rate      float64
		burst     int
		wantBurst int           // spendable at once by a fresh key
		minRetry  time.Duration // the refusal after it waits at least this
		maxRetry  time.Duration // and at most this
	}{
		{name: "burst 0 is one second's worth", rate: 2.5, wantBurst: 3, minRetry: 400 * time.Millisecond, maxRetry: 400 * time.Millisecond},
		{name: "burst 0 below 1/s is 1", rate: 0.1, wantBurst: 1, minRetry: 10 * time.Second, maxRetry: 10 * time.Second},
		{name: "negative burst is the default", rate: 4, burst: -7, wantBurst: 4, minRetry: 250 * time.Millisecond, maxRetry: 250 * time.Millisecond},
		{name: "rate 0: the burst, then never", rate: 0, burst: 2, wantBurst: 2, minRetry: decades, maxRetry: math.MaxInt64},
		{name: "negative rate as 0", rate: -5, wantBurst: 1, minRetry: decades, maxRetry: math.MaxInt64},
		{name: "NaN rate as 0", rate: math.NaN(), wantBurst: 1, minRetry: decades, maxRetry: math.MaxInt64},
		{name: "tiny rate does not overflow", rate: 1e-300, burst: 3, wantBurst: 3, minRetry: decades, maxRetry: math.MaxInt64},
		{name: "huge burst does not overflow", rate: 1e-3, burst: math.MaxInt, wantBurst: 1000, minRetry: 0, maxRetry: 0},
		{name: "+Inf rate is 1/ns", rate: math.Inf(1), burst: 1, wantBurst: 1, minRetry: 1, maxRetry: 1},
		{name: "rate above 1e9 is 1/ns", rate: 1e12, burst: 10, wantBurst: 10, minRetry: 1, maxRetry: 1},
	}
	for _, tt := range tests {
		l := NewRateLimiter(tt.rate, tt.burst, 0)
		if l == nil {
			t.Errorf("%s: NewRateLimiter returned nil, which would allow everything", tt.name)
			continue
		}
		if got := burstOf(l, 1000); got != tt.wantBurst {
			t.Errorf("%s: burst %d, want %d", tt.name, got, tt.wantBurst)
		}
		if tt.wantBurst == 1000 {
			continue // not spent: no refusal to look at
		}
		ok, retry := l.Allow("k", rlBase)
		if ok || retry < tt.minRetry || retry > tt.maxRetry {
			t.Errorf("%s: after the burst Allow = %v, %v; want false, in [%v, %v]", tt.name, ok, retry, tt.minRetry, tt.maxRetry)
		}
	}

	for _, maxKeys := range []int{0, -1} {
		l := NewRateLimiter(1, 1, maxKeys)
		total := 0
		for i := range l.shards {
			total += l.shards[i].max
		}
		if total != DefaultRateLimitKeys || len(l.shards) != rateLimitShards {
			t.Errorf("maxKeys %d: %d shards holding %d keys, want %d holding %d", maxKeys, len(l.shards), total, rateLimitShards, DefaultRateLimitKeys)
		}
	}

	var none *RateLimiter
	for i := range 100 {
		if ok, retry := none.Allow("k", rlBase); !ok || retry != 0 {
			t.Fatalf("nil limiter: request %d: Allow = %v, %v; want true, 0", i, ok, retry)
		}
	}
	if st := none.Stats(); st != (RateLimitStats{}) {
		t.Errorf("nil limiter: Stats() = %+v, want zero", st)
	}
}

// An attacker cycling client IPs through an edge: ten times maxKeys
// distinct keys never hold more than maxKeys buckets, and buckets that have
// refilled go before buckets that still owe.
func TestRateLimitEvictionBound(t *testing.T) {
	for _, maxKeys := range []int{1, 10, 100, 1000} {
		l := NewRateLimiter(10, 2, maxKeys)
		for i := range 10 * maxKeys {
			if ok, _ := l.Allow("10.1."+strconv.Itoa(i), rlAt(time.Duration(i)*time.Millisecond)); !ok {
				t.Fatalf("maxKeys %d: new key %d refused", maxKeys, i)
			}
			if i%16 == 0 || i == 10*maxKeys-1 {
				if k := l.Stats().Keys; k > maxKeys {
					t.Fatalf("maxKeys %d: %d keys held after %d distinct", maxKeys, k, i+1)
				}
			}
		}
	}

	// Full buckets first: 8 keys owe (used at 1 s, full only at 1.2 s),
	// 8 are full (used at 0, full since 100 ms); new keys at 1 s must
	// push out only the full ones.
	l := NewRateLimiter(10, 2, 16)
	if len(l.shards) != 1 {
		t.Fatalf("maxKeys 16: %d shards, want 1", len(l.shards))
	}
	for i := range 8 {
		l.Allow("idle"+strconv.Itoa(i), rlAt(0))
		l.Allow("busy"+strconv.Itoa(i), rlAt(time.Second))
		l.Allow("busy"+strconv.Itoa(i), rlAt(time.Second))
	}
	for i := range 8 {
		l.Allow("new"+strconv.Itoa(i), rlAt(time.Second))
	}
	for i := range 8 {
		if ok, _ := l.Allow("busy"+strconv.Itoa(i), rlAt(time.Second)); ok {
			t.Errorf("busy%d forgotten while idle keys were full: allowed a 3rd request in its burst of 2", i)
		}
	}
	if k := l.Stats().Keys; k > 16 {
		t.Errorf("%d keys held, max 16", k)
	}
}

// A caller over its limit stays limited while an attacker cycles through
// twice maxKeys fresh client IPs between each of its requests. Condition
// (see ratelimit.go): burst >= 2, and the passing keys send one request
// each. An LRU limiter fails this test: the flood turns every shard over
// between the caller's requests, and each time it forgets the caller, the
// caller gets a fresh burst.
func TestRateLimitOverLimitSurvivesChurn(t *testing.T) {
	const (
		rate    = 10
		burst   = 5
		maxKeys = 256
		step    = 10 * time.Millisecond // the caller's requests: 100/s
		steps   = 200                   // 2 s
	)
	l := NewRateLimiter(rate, burst, maxKeys)
	const victim = "spiffe://mesh.example/ns/prod/sa/greedy"
	// Over its limit from the start: a key still within its burst owes
	// as little as the passing keys, and may go with them.
	for range burst {
		if ok, _ := l.Allow(victim, rlBase); !ok {
			t.Fatal("burst refused")
		}
	}
	allowed := 0
	churn := 0
	for i := range steps {
		now := rlAt(time.Duration(i) * step)
		if ok, _ := l.Allow(victim, now); ok {
			allowed++
		}
		for range 2 * maxKeys {
			l.Allow("198.51."+strconv.Itoa(churn>>8&0xff)+"."+strconv.Itoa(churn&0xff)+":"+strconv.Itoa(churn>>16), now)
			churn++
		}
		if k := l.Stats().Keys; k > maxKeys {
			t.Fatalf("step %d: %d keys held, max %d", i, k, maxKeys)
		}
	}
	// 10/s over the 1.99 s from the first request to the last.
	const want = int(rate * (steps - 1) * step / time.Second)
	if allowed < want-1 || allowed > want+1 {
		t.Errorf("over-limit caller allowed %d of %d requests during the churn, want %d ± 1", allowed, steps, want)
	}
}

// Many goroutines on one limiter: at one instant a shared key gets exactly
// its burst, however the requests interleave, and every call is counted
// once.
func TestRateLimitConcurrent(t *testing.T) {
	const (
		goroutines = 8
		iterations = 2000
		burst      = 100
		maxKeys    = 512
	)
	l := NewRateLimiter(1, burst, maxKeys)
	var wg sync.WaitGroup
	shared := make([]int, goroutines)
	for g := range goroutines {
		wg.Go(func() {
			for i := range iterations {
				if ok, _ := l.Allow("", rlBase); ok {
					shared[g]++
				}
				// Keys that come and go, some shared between goroutines.
				l.Allow("10.2."+strconv.Itoa(i%300)+"."+strconv.Itoa(g%2), rlAt(time.Duration(i)*time.Millisecond))
				if i%100 == 0 {
					if k := l.Stats().Keys; k > maxKeys {
						t.Errorf("%d keys held, max %d", k, maxKeys)
					}
				}
			}
		})
	}
	wg.Wait()
	total := 0
	for _, n := range shared {
		total += n
	}
	if total != burst {
		t.Errorf("the shared key was allowed %d times at one instant, want its burst %d", total, burst)
	}
	st := l.Stats()
	if st.Allowed+st.Limited != 2*goroutines*iterations {
		t.Errorf("Stats() = %+v: %d calls counted, want %d", st, st.Allowed+st.Limited, 2*goroutines*iterations)
	}
}

// A key already present costs no allocation: the limiter sits on every
// request of a limited route.
func TestRateLimitAllocs(t *testing.T) {
	l := NewRateLimiter(1e6, 10, 0)
	key := "spiffe://mesh.example/ns/a/sa/client"
	l.Allow(key, rlBase)
	i := 0
	allocs := testing.AllocsPerRun(1000, func() {
		i++
		l.Allow(key, rlAt(time.Duration(i)*time.Microsecond))
	})
	if allocs != 0 {
		t.Errorf("Allow of a present key: %v allocations, want 0", allocs)
	}
	if got := unsafe.Sizeof(rateLimitShard{}); got != 128 {
		t.Errorf("rateLimitShard is %d bytes, want 128 (two cache lines)", got)
	}
}

func TestWriteRateLimited(t *testing.T) {
	tests := []struct {
		retryAfter time.Duration
		details    string
		wantRetry  string
		wantStatus string
	}{
		{0, "", "1", `meshd; error=http_request_denied`},
		{-time.Second, "", "1", `meshd; error=http_request_denied`},
		{time.Nanosecond, "per caller", "1", `meshd; error=http_request_denied; details="per caller"`},
		{time.Second, "route /api", "1", `meshd; error=http_request_denied; details="route /api"`},
		{time.Second + time.Millisecond, "", "2", `meshd; error=http_request_denied`},
		{90 * time.Second, `say "hi"\` + "\n", "90", `meshd; error=http_request_denied; details="say \"hi\"\\?"`},
		{math.MaxInt64, "", "9223372037", `meshd; error=http_request_denied`},
	}
	for _, tt := range tests {
		w := httptest.NewRecorder()
		WriteRateLimited(w, tt.retryAfter, tt.details, "")
		res := w.Result()
		if res.StatusCode != http.StatusTooManyRequests {
			t.Errorf("%v: status %d, want 429", tt.retryAfter, res.StatusCode)
		}
		for k, want := range map[string]string{
			"Retry-After":            tt.wantRetry,
			"Proxy-Status":           tt.wantStatus,
			"Content-Type":           "text/plain; charset=utf-8",
			"Cache-Control":          "no-store",
			"X-Content-Type-Options": "nosniff",
		} {
			if got := res.Header.Values(k); len(got) != 1 || got[0] != want {
				t.Errorf("%v %q: %s = %q, want %q", tt.retryAfter, tt.details, k, got, want)
			}
		}
		if got := w.Body.String(); got != "meshd: rate limit exceeded\n" {
			t.Errorf("%v: body %q", tt.retryAfter, got)
		}
	}
}

// BenchmarkRateLimiterAllow is the cost on every request of a limited
// route: present keys, all cores.
func BenchmarkRateLimiterAllow(b *testing.B) {
	l := NewRateLimiter(1e6, 1000, 0)
	keys := make([]string, 1024)
	for i := range keys {
		keys[i] = "spiffe://mesh.example/ns/bench/sa/client-" + strconv.Itoa(i)
		l.Allow(keys[i], rlBase)
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			i++
			l.Allow(keys[i&1023], rlAt(time.Duration(i)*time.Microsecond))
		}
	})
}

// BenchmarkRateLimiterChurn is the cost of a new key in a full limiter at
// the default maxKeys: an attacker cycling client IPs, with the sweeps
// that make room amortised over the keys.
func BenchmarkRateLimiterChurn(b *testing.B) {
	l := NewRateLimiter(10, 10, 0)
	keys := make([]string, 4*DefaultRateLimitKeys)
	for i := range keys {
		keys[i] = "203.0." + strconv.Itoa(i>>8) + "." + strconv.Itoa(i&0xff)
	}
	for i := range DefaultRateLimitKeys {
		l.Allow(keys[i], rlBase)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		l.Allow(keys[(DefaultRateLimitKeys+i)%len(keys)], rlAt(time.Duration(i)*time.Microsecond))
	}
	if k := l.Stats().Keys; k > DefaultRateLimitKeys {
		b.Fatalf("%d keys held", k)
	}
}

// nthSmallest against a sort, on the shapes a shard's TATs take: random,
// sorted (keys that arrived in order), reversed, all equal, few values.
func TestRateLimitNthSmallest(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	shapes := map[string]func(i, n int) int64{
		"random":   func(i, n int) int64 { return r.Int64N(1 << 40) },
		"sorted":   func(i, n int) int64 { return int64(i) },
		"reversed": func(i, n int) int64 { return int64(n - i) },
		"equal":    func(i, n int) int64 { return 7 },
		"few":      func(i, n int) int64 { return r.Int64N(3) },
	}
	for name, gen := range shapes {
		for _, n := range []int{1, 2, 3, 10, 100, 1000} {
			v := make([]int64, n)
			for i := range v {
				v[i] = gen(i, n)
			}
			sorted := slices.Clone(v)
			slices.Sort(sorted)
			for _, k := range []int{0, n / 16, n / 2, n - 1} {
				w := slices.Clone(v)
				if got := nthSmallest(w, k); got != sorted[k] {
					t.Errorf("%s, %d values: nthSmallest(%d) = %d, want %d", name, n, k, got, sorted[k])
				}
			}
		}
	}
}

// Peek answers what Allow would, and takes nothing: a key peeked at any
// number of times keeps its whole burst, and a spent one is refused with
// the same Retry-After Allow gives.
func TestRateLimitPeek(t *testing.T) {
	l := NewRateLimiter(10, 2, 0)
	for range 100 {
		if ok, _ := l.Peek("a", rlAt(0)); !ok {
			t.Fatal("peek of a fresh key refused")
		}
	}
	if st := l.Stats(); st.Keys != 0 || st.Allowed != 0 {
		t.Fatalf("peeking changed the limiter: %+v", st)
	}
	for i := range 2 {
		if ok, _ := l.Allow("a", rlAt(0)); !ok {
			t.Fatalf("burst request %d refused after peeks", i)
		}
	}
	pok, pafter := l.Peek("a", rlAt(0))
	aok, aafter := l.Allow("a", rlAt(0))
	if pok || aok || pafter != aafter || pafter <= 0 {
		t.Fatalf("spent key: Peek %v %v, Allow %v %v", pok, pafter, aok, aafter)
	}
	if ok, _ := l.Peek("b", rlAt(0)); !ok {
		t.Fatal("another key refused")
	}
}
