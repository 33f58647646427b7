package proxy

import (
	"hash/maphash"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Rate limits (issue 14): a service or a route may cap the requests each
// caller makes, keyed by the caller's SPIFFE ID on a mesh hop, by the
// client IP at the edge, or by "" for the route's total. Each node enforces
// its own limit with a token bucket per key; nodes do not coordinate, so a
// service behind N edges sees at most N times the configured rate.
//
// The bucket is GCRA (the generic cell rate algorithm of ATM, ITU-T I.371;
// a token bucket in another form): each key holds one int64, its
// "theoretical arrival time" (TAT), the instant its bucket will be full
// again, in nanoseconds since the limiter was built. A request at t is
// allowed when max(TAT, t) + interval - t <= burst*interval, and then moves
// TAT on by one interval. Why this and not float64 tokens plus a timestamp:
//   - one int64 per key rather than two words (tokens and the time they
//     were counted): a bucket's whole state is one map value, which a
//     present key updates in place;
//   - integer nanoseconds do not drift: float64 tokens lose precision as
//     fractions of a token are added up over hours, nanoseconds of credit
//     are exact. The one rounding is the interval itself, 1/rate rounded
//     to the nanosecond: under 0.05% for rates up to a million a second;
//   - "full" is a comparison (TAT <= now), which is what eviction needs,
//     and the retry-after of a refusal is a subtraction.
//
// Memory is bounded by maxKeys however many keys callers invent: an edge
// keyed by client IP sees keys an attacker chooses. The keys are split over
// up to 32 shards by maphash with a per-limiter random seed (so an attacker
// cannot aim all its keys at one shard), each with its own mutex and a
// fixed share of maxKeys. When a new key finds its shard full, the shard
// drops first the buckets that are full (they carry no state: a dropped
// full bucket and a fresh one answer alike), and if that frees less than a
// sixteenth of the shard, the buckets that owe the least, the smallest
// TAT, until a sixteenth is free. Least owed rather than least recently
// used: forgetting a bucket gives its key back exactly what it owes, so
// dropping the smallest debts loses the least limiting, and it needs no
// timestamp or list pointers beside the one int64. LRU would also lose the
// key that matters: an attacker cycling client IPs turns a shard over
// faster than a key over its limit asks again, and each time LRU forgets
// that key it gets a fresh burst.
//
// The trade-off, and the condition under which a key over its limit stays
// limited: it is dropped only when a sweep finds it among the sixteenth of
// its shard that owe least. A key refused for being over its limit owes
// more than burst-1 intervals; a key that made one request owes one
// interval. So with burst >= 2, any number of keys that each send one
// request (an attacker cycling source addresses) evicts each other and
// never a key that is over its limit. To push such a key out an attacker
// must keep most of its shard's buckets owing more than it does, that is
// spend about a burst of allowed requests on each of maxKeys/32 keys every
// burst/rate seconds: traffic the limiter is letting through anyway, at
// the configured rate per key. With burst 1 a key over its limit and a key
// seen once can owe the same, and either may go. A key that stops asking
// pays off its debt and goes like the others once it owes as little as
// they do: forgetting it then gives back about one token.
//
// A sweep visits the whole shard under its mutex (maxKeys/32 entries),
// once per maxKeys/512 new keys; the other 31 shards are not held up. At
// the default that is about 200µs every 195 new keys, about 1µs per new
// key (BenchmarkRateLimiterChurn): a flood of fresh client IPs costs the
// callers sharing a shard with it well under a millisecond of wait now and
// then, and nothing to the others.

// DefaultRateLimitKeys is NewRateLimiter's default maxKeys: the buckets one
// limiter holds at most, a few megabytes.
const DefaultRateLimitKeys = 100_000

const (
	rateLimitShards = 32 // at most; fewer for a small maxKeys
	// rateLimitMinShardKeys keeps a small limiter's shards big enough for
	// eviction to choose among: maxKeys 100 gives 4 shards of 25.
	rateLimitMinShardKeys = 16
	// rateLimitMaxSpan bounds the interval and burst*interval (about 73
	// years) so that TAT arithmetic cannot overflow int64.
	rateLimitMaxSpan = math.MaxInt64 / 4
)

// RateLimiter is a token bucket per key. Build it with NewRateLimiter; it is
// safe for concurrent use. A nil *RateLimiter allows every request, so a
// route without a limit holds nil and calls Allow all the same.
type RateLimiter struct {
	interval  int64 // nanoseconds per token: 1/rate
	tolerance int64 // burst*interval: how far ahead of now a TAT may go
	epoch     time.Time
	seed      maphash.Seed
	mask      uint64
	shards    []rateLimitShard
}

// rateLimitShard is a share of a limiter's keys. Padded to two cache lines
// so that cores working on neighbouring shards do not share one.
type rateLimitShard struct {
	mu      sync.Mutex
	tat     map[string]int64 // key → TAT, guarded by mu
	max     int              // len(tat) never exceeds max
	scratch []int64          // evictLocked's, guarded by mu
	allowed atomic.Uint64
	limited atomic.Uint64
	_       [128 - 64]byte
}

// NewRateLimiter returns a limiter of rate tokens a second per key, of
// which a key may spend up to burst at once.
//
// burst 0 (or less) means max(1, ceil(rate)): one second's worth. maxKeys 0
// (or less) means DefaultRateLimitKeys; it bounds the buckets held at once,
// see the eviction rules above.
//
// rate must be > 0, and validating it is the caller's job: the policy that
// configures a limit rejects 0, negative and NaN rates with an error its
// author can read. Should one get here anyway, NewRateLimiter neither
// panics nor returns nil (nil allows everything: a limit that silently
// stopped limiting would be found only by the flood it was for). It
// behaves as the limit of a rate going to 0: each key gets its burst and
// then refusals with a Retry-After of decades. Likewise a rate so low
// that a burst would refill in more than about 73 years refills in 73
// years, and a rate above 1e9 (or +Inf) is one token a nanosecond, no
// limit in practice: the arithmetic never overflows.
func NewRateLimiter(rate float64, burst int, maxKeys int) *RateLimiter {
	interval := int64(rateLimitMaxSpan)
	if rate > 0 { // false for NaN
		if iv := math.Round(1e9 / rate); iv < rateLimitMaxSpan {
			interval = max(int64(iv), 1)
		}
	}
	b := int64(1)
	switch {
	case burst > 0:
		b = min(int64(burst), rateLimitMaxSpan)
	case rate > 1:
		b = int64(min(math.Ceil(rate), 1<<31))
	}
	// A burst that would take longer than rateLimitMaxSpan to refill
	// refills in rateLimitMaxSpan: the burst stays exact.
	interval = max(min(interval, rateLimitMaxSpan/b), 1)
	tolerance := b * interval // <= rateLimitMaxSpan
	if maxKeys <= 0 {
		maxKeys = DefaultRateLimitKeys
	}
	n := rateLimitShards
	for n > 1 && maxKeys/n < rateLimitMinShardKeys {
		n /= 2
	}
	l := &RateLimiter{
		interval:  interval,
		tolerance: tolerance,
		epoch:     time.Now(),
		seed:      maphash.MakeSeed(),
		mask:      uint64(n - 1),
		shards:    make([]rateLimitShard, n),
	}
	for i := range l.shards {
		s := &l.shards[i]
		s.tat = make(map[string]int64)
		// Floor, so the shards together hold at most maxKeys.
		s.max = max(maxKeys/n, 1)
	}
	return l
}

// Allow spends one of key's tokens at now. When none is left it returns
// false and how long until the next one; nothing is spent then, so a
// client that keeps retrying too early does not push its next token
// further away. now is the request's arrival (time.Now() in meshd, with
// its monotonic reading); tests pass their own.
//
// A key already present costs no allocation; a new key allocates its
// bucket once (a copy of key, so the limiter never keeps a request's
// header alive).
func (l *RateLimiter) Allow(key string, now time.Time) (ok bool, retryAfter time.Duration) {
	if l == nil {
		return true, 0
	}
	t := int64(now.Sub(l.epoch))
	s := &l.shards[maphash.String(l.seed, key)&l.mask]
	s.mu.Lock()
	tat, found := s.tat[key]
	tat = max(tat, t) // a full bucket, or a new one, starts at now
	next := tat + l.interval
	if over := next - t - l.tolerance; over > 0 {
		s.mu.Unlock()
		s.limited.Add(1)
		return false, time.Duration(over)
	}
	if found {
		s.tat[key] = next
	} else {
		if len(s.tat) >= s.max {
			s.evictLocked(t)
		}
		s.tat[strings.Clone(key)] = next
	}
	s.mu.Unlock()
	s.allowed.Add(1)
	return true, 0
}

// Peek reports what Allow would answer for key at now without taking a
// token or adding a key: `meshd explain` asks whether a request would be
// limited and must not be one.
func (l *RateLimiter) Peek(key string, now time.Time) (ok bool, retryAfter time.Duration) {
	if l == nil {
		return true, 0
	}
	t := int64(now.Sub(l.epoch))
	s := &l.shards[maphash.String(l.seed, key)&l.mask]
	s.mu.Lock()
	tat := max(s.tat[key], t)
	s.mu.Unlock()
	if over := tat + l.interval - t - l.tolerance; over > 0 {
		return false, time.Duration(over)
	}
	return true, 0
}

// evictLocked frees at least a sixteenth of a full shard at t: the full
// buckets, then those that owe least. s.mu is held.
func (s *rateLimitShard) evictLocked(t int64) {
	need := max(s.max/16, 1)
	before := len(s.tat)
	for k, tat := range s.tat {
		if tat <= t {
			delete(s.tat, k)
		}
	}
	need -= before - len(s.tat)
	if need <= 0 || len(s.tat) == 0 {
		return
	}
	// The need-th smallest TAT: everything below it goes, then as many
	// equal to it as still need to. The scratch slice is kept: a limiter
	// that swept once is likely under a churn of keys that will sweep
	// again, and it costs 8 bytes per key beside the map's ~50.
	tats := s.scratch[:0]
	for _, tat := range s.tat {
		tats = append(tats, tat)
	}
	s.scratch = tats
	limit := nthSmallest(tats, min(need, len(tats))-1)
	for k, tat := range s.tat {
		if tat < limit {
			delete(s.tat, k)
			need--
		}
	}
	for k, tat := range s.tat {
		if need <= 0 {
			break
		}
		if tat == limit {
			delete(s.tat, k)
			need--
		}
	}
}

// nthSmallest returns the value that would be at index n of a sorted v,
// reordering v: quickselect, O(len(v)) on average where a sort would be
// O(len(v) log len(v)) under the shard's mutex.
func nthSmallest(v []int64, n int) int64 {
	lo, hi := 0, len(v)-1
	for lo < hi {
		// Median of three as the pivot: TATs of keys that arrived in
		// order are nearly sorted, the worst case of a fixed pivot.
		mid := lo + (hi-lo)/2
		if v[mid] < v[lo] {
			v[mid], v[lo] = v[lo], v[mid]
		}
		if v[hi] < v[lo] {
			v[hi], v[lo] = v[lo], v[hi]
		}
		if v[hi] < v[mid] {
			v[hi], v[mid] = v[mid], v[hi]
		}
		p := v[mid]
		i, j := lo, hi
		for i <= j { // Hoare partition: v[lo..j] <= p <= v[i..hi]
			for v[i] < p {
				i++
			}
			for v[j] > p {
				j--
			}
			if i <= j {
				v[i], v[j] = v[j], v[i]
				i++
				j--
			}
		}
		switch {
		case n <= j:
			hi = j
		case n >= i:
			lo = i
		default:
			return v[n] // j < n < i: v[n] == p
		}
	}
	return v[n]
}

// RateLimitStats is a limiter's counters, for /metrics.
type RateLimitStats struct {
	Allowed uint64 // requests allowed since the limiter was built
	Limited uint64 // requests refused since the limiter was built
	Keys    int    // buckets held now, at most maxKeys
}

// Stats returns l's counters; a nil limiter's are zero.
func (l *RateLimiter) Stats() RateLimitStats {
	var st RateLimitStats
	if l == nil {
		return st
	}
	for i := range l.shards {
		s := &l.shards[i]
		st.Allowed += s.allowed.Load()
		st.Limited += s.limited.Load()
		s.mu.Lock()
		st.Keys += len(s.tat)
		s.mu.Unlock()
	}
	return st
}

// rateLimitedBody is the body of every 429, shared.
var rateLimitedBody = []byte("meshd: rate limit exceeded\n")

// WriteRateLimited answers a request refused by a RateLimiter: 429 Too
// Many Requests (RFC 6585 §4) with Retry-After in whole seconds rounded up,
// at least 1 (RFC 9110 §10.2.3: a client retrying after the rounded-down
// value would be refused again), and Proxy-Status error=http_request_denied
// (RFC 9209 §2.3), which tells the caller and the hops before this one
// that meshd refused the request, not the service. no-store keeps a cache
// in front from serving the refusal to callers that are within their
// limit.
//
// details, when not empty, goes to the client as the Proxy-Status details:
// name the limit ("per caller on route /api"), never the key, which may be
// another caller's identity. trace, the request's TraceID, follows it
// there when not empty.
func WriteRateLimited(w http.ResponseWriter, retryAfter time.Duration, details, trace string) {
	secs := int64(retryAfter / time.Second)
	if retryAfter%time.Second > 0 {
		secs++
	}
	secs = max(secs, 1)
	hdr := w.Header()
	hdr["Retry-After"] = []string{strconv.FormatInt(secs, 10)}
	hdr["Proxy-Status"] = []string{ProxyStatus("meshd", "http_request_denied", details, trace)}
	hdr["Content-Type"] = errorContentType
	hdr["X-Content-Type-Options"] = errorNoSniff
	hdr["Cache-Control"] = errorNoStore
	w.WriteHeader(http.StatusTooManyRequests)
	_, _ = w.Write(rateLimitedBody)
}
