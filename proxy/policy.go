package proxy

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// RetryOn is the set of failures after which a request governed by a
// CallPolicy is sent to its next candidate. The bits are in the order of
// the policy document's retries.on names (connect-failure, refused-stream,
// 502, 503, 504, timeout), so a caller can convert its own mask.
type RetryOn uint8

// The failures a CallPolicy can retry on.
const (
	// RetryConnectFailure: no connection to the upstream (refused, a
	// failed handshake, a connect timeout); it never saw the request.
	RetryConnectFailure RetryOn = 1 << iota
	// RetryRefusedStream: the HTTP/2 upstream refused the stream
	// unprocessed (RFC 9113 §8.7). Go's HTTP/2 client already resends such
	// a request on the same upstream when it can rewind the body; what is
	// left to this handler is the refusal it hands back.
	RetryRefusedStream
	// Retry502, Retry503, Retry504: the upstream answered with that
	// status. The answer is discarded and the request sent to the next
	// candidate only when it can be replayed (no body, or a body within
	// CallPolicy.ReplayBody).
	Retry502
	Retry503
	Retry504
	// RetryTimeout: no response header within CallPolicy.FirstByteTimeout,
	// for idempotent methods (RFC 9110 §9.2.2) only.
	RetryTimeout
)

// DefaultRetryOn is what a CallPolicy with RetryOn 0 retries on: the
// failures after which the upstream cannot have acted on the request.
const DefaultRetryOn = RetryConnectFailure | RetryRefusedStream

// CallPolicy is how the Handler treats one request: how often and when it
// is retried, how long each phase may take, and how failures eject
// upstreams. Handler.Policy returns one per request; values are built by
// the caller once per route and policy change and shared read-only by
// every request of the route, so a CallPolicy must not be modified once it
// has been returned. A zero field means the Handler's behaviour without a
// policy for that aspect, except where the field says otherwise.
//
// Tunnels (CONNECT, upgrades) are not governed by a CallPolicy.
type CallPolicy struct {
	// Attempts is how many candidates the request may be sent to in all,
	// the first included: 1 means no retry. The candidates are those the
	// Route function returned; once they are used up the last answer is
	// forwarded even if attempts remain. Default 0: Handler.MaxAttempts.
	Attempts int
	// RetryOn lists the failures that are retried. A failure after which
	// the upstream may have acted on the request is retried only when
	// RetryOn includes it. Other rules of the Handler stay: a request
	// whose body was partly read and cannot be replayed is not retried,
	// nor is an answer with a trusted HeaderRetry treated differently than
	// without a policy. Default 0: DefaultRetryOn.
	RetryOn RetryOn
	// Budget caps the retries of all requests that share it (see
	// RetryBudget); a retry it refuses is not made, and the last answer or
	// error is forwarded. Default nil: no cap beyond Attempts.
	Budget *RetryBudget
	// BackoffBase and BackoffMax shape the wait before each retry: a
	// uniformly random time in [0, min(BackoffMax, BackoffBase·2^(n-1)))
	// before the n-th retry ("full jitter"), so that clients that failed
	// together do not retry together. The wait never passes TotalTimeout
	// or the client's leaving: a retry that cannot wait for its back-off
	// is not made. Default 0: no wait; BackoffMax 0 with a base: 10 times
	// the base.
	BackoffBase time.Duration
	BackoffMax  time.Duration
	// ReplayBody is the most request body bytes kept in memory so that a
	// retry after a response status (RetryOn 502, 503, 504, timeout) can
	// send the body again. A body up to this size, of declared or unknown
	// length, is read in full before the first attempt; a larger one is
	// streamed and its request is not retried once the upstream may have
	// read any of it. A request with trailers is streamed. Default 0:
	// bodies are streamed, as without a policy.
	ReplayBody int64
	// ConnectTimeout bounds the TCP connect and TLS handshake of a new
	// connection dialled for this request (the lesser of it and
	// Pool.DialTimeout applies). A pooled connection needs no dial. The
	// timeout travels to the pool's dial functions as a context value:
	// Go's transport dials with a context that keeps the request's values
	// but not its cancellation. Default 0: Pool.DialTimeout.
	ConnectTimeout time.Duration
	// FirstByteTimeout bounds each attempt from its start (waiting for a
	// connection included) to the response header. Without RetryTimeout,
	// or for a method that is not idempotent, a timeout is answered 504.
	// The lesser of it and Pool.ResponseHeaderTimeout applies. Default 0:
	// Pool.ResponseHeaderTimeout only.
	FirstByteTimeout time.Duration
	// TotalTimeout bounds the whole exchange: every attempt, the waits
	// between them and the response body. Before the response header it
	// is answered 504; once the body is streaming, the response is cut
	// (the client sees it truncated, never as complete). Default 0: no
	// bound beyond the client's own.
	TotalTimeout time.Duration
	// IdleTimeout cuts a response whose body has moved no byte from the
	// upstream for this long (a stream that stalled; a stream that keeps
	// sending, however slowly, lives on). The client sees the response
	// truncated. Default 0: no bound beyond TotalTimeout.
	IdleTimeout time.Duration
	// Outlier says when failures of this request's upstreams eject them
	// (see OutlierPolicy). Default nil: Envoy's defaults
	// (DefaultOutlierPolicy). Without any CallPolicy the Handler keeps its
	// own rule (EjectAfter, EjectFor).
	Outlier *OutlierPolicy
}

// Validate reports a field with a bad value.
func (p *CallPolicy) Validate() error {
	switch {
	case p.Attempts < 0:
		return fmt.Errorf("proxy: call policy: Attempts %d is negative", p.Attempts)
	case p.BackoffBase < 0 || p.BackoffMax < 0:
		return errors.New("proxy: call policy: negative back-off")
	case p.ReplayBody < 0:
		return fmt.Errorf("proxy: call policy: ReplayBody %d is negative", p.ReplayBody)
	case p.ConnectTimeout < 0 || p.FirstByteTimeout < 0 || p.TotalTimeout < 0 || p.IdleTimeout < 0:
		return errors.New("proxy: call policy: negative timeout")
	}
	if p.Outlier != nil {
		return p.Outlier.Validate()
	}
	return nil
}

func (p *CallPolicy) retryOn() RetryOn {
	if p.RetryOn == 0 {
		return DefaultRetryOn
	}
	return p.RetryOn
}

func (p *CallPolicy) outlier() *OutlierPolicy {
	if p.Outlier == nil {
		return &DefaultOutlierPolicy
	}
	return p.Outlier
}

// backoff is the wait before the n-th retry (n ≥ 1): full jitter, a
// uniform random time below the capped exponential (the "Full Jitter" of
// AWS's "Exponential Backoff and Jitter", which spreads retries best).
func (p *CallPolicy) backoff(n int) time.Duration {
	if p.BackoffBase <= 0 {
		return 0
	}
	hi := p.BackoffMax
	if hi <= 0 {
		hi = 10 * p.BackoffBase
	}
	d := hi
	if n-1 < 30 {
		d = min(hi, p.BackoffBase<<(n-1))
	}
	if d <= 0 {
		return 0
	}
	return rand.N(d)
}

// maxWait is the longest Retry-After the policy honours when there is no
// TotalTimeout: BackoffMax, or 10 times BackoffBase.
func (p *CallPolicy) maxWait() time.Duration {
	if p.BackoffMax > 0 {
		return p.BackoffMax
	}
	return 10 * p.BackoffBase
}

// retryAfter parses a Retry-After field (RFC 9110 §10.2.3): delay-seconds
// or an HTTP-date. ok is false when the field is absent or malformed.
func retryAfter(h http.Header, now time.Time) (time.Duration, bool) {
	v := h["Retry-After"]
	if len(v) == 0 {
		return 0, false
	}
	if s, err := strconv.ParseUint(v[0], 10, 32); err == nil {
		return time.Duration(s) * time.Second, true
	}
	if t, err := http.ParseTime(v[0]); err == nil {
		return max(t.Sub(now), 0), true
	}
	return 0, false
}

// OutlierPolicy is passive outlier ejection in Envoy's manner: an upstream
// that failed ConsecutiveFailures requests in a row (connect failures, and
// 502, 503 and 504 answers it gave) is ejected for Ejection times the
// number of times it has been ejected (at most MaxEjectionTime). When that
// time is over the upstream is on probation: the next request that fails
// ejects it again, for longer; the next that succeeds ends the probation
// and resets the count. Ejected upstreams are not excluded, only ordered
// last: Upstream.Ejected reports the state, and balancers try any other
// candidate first.
//
// At most MaxEjected of a candidate set is ejected at once; the Handler
// counts over the candidates the Route function returned for the request
// that would eject (so a Route that returns the whole set, as a
// power-of-two-choices rotation does, gets the cap over the whole set).
// A balancer that builds its set otherwise can ask MayEject itself. Two
// requests ejecting at the same moment may both pass the check: the cap
// can be exceeded by the number of concurrent ejections.
//
// The ejection state lives in the Upstream, so an upstream shared by
// routes with different policies is ejected by whichever policy's
// threshold its failures reach first. Values are shared read-only.
type OutlierPolicy struct {
	// ConsecutiveFailures ejects an upstream after this many failures in a
	// row. Default 0: 5 (Envoy's consecutive_5xx); negative: never eject.
	ConsecutiveFailures int
	// Ejection is the base ejection time, multiplied by the number of
	// times the upstream has been ejected since its last success after
	// probation. Default 0: 30 s (Envoy's base_ejection_time).
	Ejection time.Duration
	// MaxEjected is the fraction of a candidate set that may be ejected at
	// once. Envoy's 10% rounds down, so small sets could eject nothing;
	// here a set of 3 or more members may always have one ejected, and a
	// set of 1 or 2 none (ordering its only alternative last would only
	// move the load onto the other one). Default 0: 0.1; 1 or more: all.
	MaxEjected float64
}

// DefaultOutlierPolicy is a CallPolicy's outlier ejection when its Outlier
// is nil: Envoy's defaults.
var DefaultOutlierPolicy = OutlierPolicy{ConsecutiveFailures: 5, Ejection: 30 * time.Second, MaxEjected: 0.1}

// MaxEjectionTime caps Ejection × times ejected (Envoy's
// max_ejection_time).
const MaxEjectionTime = 300 * time.Second

// Validate reports a field with a bad value.
func (o *OutlierPolicy) Validate() error {
	switch {
	case o.Ejection < 0:
		return fmt.Errorf("proxy: outlier policy: Ejection %v is negative", o.Ejection)
	case o.MaxEjected < 0 || math.IsNaN(o.MaxEjected):
		return fmt.Errorf("proxy: outlier policy: MaxEjected %v is not a fraction", o.MaxEjected)
	}
	return nil
}

func (o *OutlierPolicy) threshold() int {
	if o.ConsecutiveFailures == 0 {
		return DefaultOutlierPolicy.ConsecutiveFailures
	}
	return o.ConsecutiveFailures
}

func (o *OutlierPolicy) ejection(times int32) time.Duration {
	base := o.Ejection
	if base == 0 {
		base = DefaultOutlierPolicy.Ejection
	}
	if times < 1 {
		times = 1
	}
	if base > MaxEjectionTime/time.Duration(times) {
		return MaxEjectionTime
	}
	return base * time.Duration(times)
}

// MaxEjectedOf is how many members of a set of n may be ejected at once.
func (o *OutlierPolicy) MaxEjectedOf(n int) int {
	f := o.MaxEjected
	if f == 0 {
		f = DefaultOutlierPolicy.MaxEjected
	}
	if f >= 1 {
		return n
	}
	m := int(f * float64(n))
	if m < 1 && n >= 3 {
		m = 1
	}
	return m
}

// MayEject reports whether one more member of set may be ejected at now
// under o: fewer than o.MaxEjectedOf(len(set)) are ejected. Nil members
// are not counted. It costs one atomic load per member.
func MayEject(set []*Upstream, now time.Time, o *OutlierPolicy) bool {
	n, ejected := 0, 0
	for _, u := range set {
		if u == nil {
			continue
		}
		n++
		if u.Ejected(now) {
			ejected++
		}
	}
	return ejected < o.MaxEjectedOf(n)
}

// RetryBudget caps retries at a fraction of requests, as Finagle's and
// Linkerd's retry budgets do, so that retries cannot multiply the load on
// a service that is failing: each request deposits ratio tokens, each
// retry withdraws one, and each second that sees a request adds
// minPerSecond tokens, so a route with little traffic can still retry.
// Tokens expire budgetWindow after they were deposited, so a burst of
// requests long ago does not fund a burst of retries now. A retry takes
// the oldest tokens first, so no token funds two retries: over any run,
// retries ≤ ratio × requests + minPerSecond × seconds with traffic.
//
// One budget is shared by all requests of one route: the caller builds it
// with NewRetryBudget and keeps it in the route's CallPolicy. It is safe
// for concurrent use; a request's deposit is lock-free and allocates
// nothing, a retry takes a short mutex.
type RetryBudget struct {
	deposit int64 // milli-tokens per request: ratio × 1000
	floor   int64 // milli-tokens per second with traffic: minPerSecond × 1000
	start   time.Time

	mu    sync.Mutex // held to start a slot and to withdraw
	slots [budgetSlots]budgetSlot
}

// budgetSlot holds the tokens deposited in one second (sec, counted from
// the budget's start) that no retry has taken yet.
type budgetSlot struct {
	sec    atomic.Int64 // the second + 1; 0: never used
	tokens atomic.Int64 // milli-tokens
}

const (
	budgetSlots  = 10
	budgetWindow = budgetSlots * time.Second // how long a deposit funds retries
)

// NewRetryBudget returns a budget that lets retries be ratio of requests
// (0.2: one retry for every five requests), plus minPerSecond retries each
// second with traffic. Negative values count as 0.
func NewRetryBudget(ratio, minPerSecond float64) *RetryBudget {
	return &RetryBudget{
		deposit: int64(max(ratio, 0) * 1000),
		floor:   int64(max(minPerSecond, 0) * 1000),
		start:   time.Now(),
	}
}

// second is the budget's second of t.
func (b *RetryBudget) second(t time.Time) int64 { return int64(t.Sub(b.start) / time.Second) }

// slot returns the slot of second sec, starting it (with the floor's
// tokens, the old second's left-overs dropped) if another second held it.
func (b *RetryBudget) slot(sec int64) *budgetSlot {
	s := &b.slots[sec%budgetSlots]
	if s.sec.Load() == sec+1 {
		return s
	}
	b.mu.Lock()
	// Never back in time: a request that read the clock before a newer
	// second took the slot deposits into the newer one.
	if s.sec.Load() < sec+1 {
		s.tokens.Store(b.floor)
		s.sec.Store(sec + 1)
	}
	b.mu.Unlock()
	return s
}

// record deposits one request's tokens at now.
func (b *RetryBudget) record(now time.Time) {
	if b == nil {
		return
	}
	sec := b.second(now)
	if sec < 0 {
		sec = 0
	}
	b.slot(sec).tokens.Add(b.deposit)
}

// withdraw takes one retry's token at now, oldest tokens first, and
// reports whether there was one.
func (b *RetryBudget) withdraw(now time.Time) bool {
	if b == nil {
		return true
	}
	sec := max(b.second(now), 0)
	b.mu.Lock()
	defer b.mu.Unlock()
	var live int64
	for i := sec - budgetSlots + 1; i <= sec; i++ {
		if i < 0 {
			continue
		}
		if s := &b.slots[i%budgetSlots]; s.sec.Load() == i+1 {
			live += max(s.tokens.Load(), 0)
		}
	}
	if live < 1000 {
		return false
	}
	need := int64(1000)
	for i := sec - budgetSlots + 1; i <= sec && need > 0; i++ {
		if i < 0 {
			continue
		}
		s := &b.slots[i%budgetSlots]
		if s.sec.Load() != i+1 {
			continue
		}
		// Deposits add concurrently; only this (locked) path subtracts.
		take := min(max(s.tokens.Load(), 0), need)
		s.tokens.Add(-take)
		need -= take
	}
	return true
}
