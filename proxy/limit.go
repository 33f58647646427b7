package proxy

import (
	"context"
	"errors"
	"math"
	"net"
	"net/http"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// Admission control. Past an upstream's capacity, every extra request
// only adds queueing: latency grows for all of them until clients and
// handshakes time out and goodput collapses. So each upstream gets a
// concurrency limit, a short bounded queue in front of it, and a bound on
// the connections dialled at once; what does not fit is refused at once
// with 503, Retry-After and Proxy-Status: connection_limit_reached
// (RFC 9209 §2.3.13), before any byte goes upstream.
//
// The limit is per Upstream.Key (one instance, one gateway, the app), not
// per set of upstreams: latency, and so capacity, belongs to one endpoint.
// A limit shared by a service's instances would let one slow instance
// throttle the fast ones, and its latency baseline would mix them. The
// balancer already turns per-instance load into choices (Cost counts the
// requests waiting here too), and a key is also what a pool's connections
// and dials are counted by. The limit belongs to the Pool, so every Handler
// of a node sharing the pool shares each upstream's limit.
//
// The limit counts requests from the moment they are sent until their
// response header arrives: the upstream's own work. A response body being
// streamed to a slow client, a long download or an event stream does not
// hold a slot, or a few slow public clients would look like an upstream at
// capacity.

// Defaults of Pool's admission control.
const (
	// DefaultQueueTimeout is Pool.QueueTimeout's default: a request waits at
	// most this long for a slot under the limit or for a connection. Long
	// enough to ride out a burst (on a mesh hop a slot frees every few
	// milliseconds), short enough that a refused request still has most of
	// any client's timeout left to retry elsewhere, and far below the
	// handshake and header timeouts whose expiry is what a collapse looks
	// like.
	DefaultQueueTimeout = 100 * time.Millisecond
	// DefaultMaxDialsPerUpstream is Pool.MaxDialsPerUpstream's default. A
	// burst of requests to an upstream without idle connections would
	// otherwise start one TCP and TLS handshake per request; handshakes are
	// CPU-bound, so a few at a time finish as fast in total and each of them
	// much sooner, and the other requests take the connections these give
	// (an HTTP/2 connection carries them all).
	DefaultMaxDialsPerUpstream = 4
)

// The adaptive limit, in the spirit of Envoy's adaptive concurrency
// gradient controller and Netflix's Gradient2: every sampling window the
// mean time to response header is compared with the upstream's unloaded
// latency (the baseline):
//
//	gradient = clamp((limitTolerance × baseline + limitSlack) / sample, 0.5, 1)
//	limit    = limit × gradient + √limit
//
// At the baseline the limit grows by √limit per window (the headroom that
// keeps the upstream busy); once queueing at the upstream shows as latency
// beyond limitTolerance × baseline + limitSlack it shrinks, by at most half
// per window, settling where the headroom balances the gradient. The limit does not grow
// while the node uses less than half of it: an idle limit says nothing
// about capacity and would only let the next burst through unchecked.
//
// Latency that a smaller limit does not shorten is not a queue of this
// node's making: a CPU taken by other processes, a slower network, other
// clients of the same upstream. Refusing requests for it only turns slow
// answers into refusals. So when futileCuts windows in a row cut the limit,
// the requests in flight halved and latency did not fall by a quarter, that
// latency is taken as the upstream's unloaded one: the baseline is lifted
// to where it is normal (the lift fades again, by half per window, once
// latency falls below the lifted baseline). A queue at the upstream
// shortens with every cut, so a real overload never lifts it.
//
// The baseline is an average of the latency of calm requests: while one of
// them was in flight, this node never had more than limitMin requests in
// flight to the upstream and dialled no connection to it. Calm requests
// meet no queue of this node's making, and no handshake, so their latency
// is the upstream's own. A minimum over raw samples, the classic minRTT, is
// pulled down by the cheapest answers (a 304, a cached 404) and never rises
// unless the limiter stops traffic to re-measure it; this baseline stops
// moving under sustained load (no request is calm then), so it cannot creep
// up with the queue, and when the upstream really became slower the limit
// falls to limitMin, where requests are calm again and the new latency is
// learnt. A burst on a new upstream has no calm request; until the first
// one, the baseline is the minimum of all samples: the requests served
// first met no queue at the upstream, and a baseline too low only makes
// the limit fall to limitMin, where calm requests correct it.
const (
	limitMin           = 4
	limitMax           = 1000
	limitInitial       = 20
	limitWindow        = 100 * time.Millisecond
	limitWindowSamples = 10
	// limitTolerance: latency up to 25% above the baseline is jitter, not
	// queueing (Envoy's default buffer).
	limitTolerance = 1.25
	// limitSlack: a few milliseconds more are the CPU being shared, not a
	// queue at the upstream. A mesh hop answers in a fraction of a
	// millisecond on an idle machine; on a busy one every process on its
	// path waits for a core for up to a scheduler slice (Linux's CFS: 3–12 ms
	// on small machines), whoever else runs there: a CPU-bound neighbour,
	// the app, this node. A limit that read that wait as overload refused
	// requests at a third of capacity (bench/load.sh: 18% of 2,000 req/s
	// refused by the edge with the machine two-thirds busy), and shrinking
	// the concurrency does not shorten it. Queueing that matters grows far
	// past it, and slow upstreams (tens of milliseconds) hardly see it.
	limitSlack = 5 * time.Millisecond
	// limitSampleCap: a sample counts at most this many times the
	// baseline plus limitSlack in a window's mean, so that one request
	// stuck for a minute weighs as ten slow ones and does not halve the
	// limit by itself; a timeout still counts (slowness is the signal).
	limitSampleCap = 10
	// baselineShift: each baseline sample moves the baseline by 1/16 of its
	// difference, capped at 4 baselines, so that no single sample moves it
	// far.
	baselineShift     = 4
	baselineSampleCap = 4
)

// futileCuts is how many windows in a row must cut the limit, halving the
// requests in flight without shortening latency, before the latency is
// taken for one that this node's concurrency does not cause. A queue at the
// upstream shortens as soon as fewer requests are sent (Little's law):
// half as many in flight, half as long a wait.
const futileCuts = 5

// A queue absorbs bursts; under sustained overload it only adds its timeout
// to the latency of every request it lets through, since it is always full
// (a standing queue). As in CoDel and Facebook's adaptive queueing, a
// queue that has not been empty for a whole queue timeout is standing, and
// so is one that refused a request within the last queue timeout (without
// that, a standing queue drains with the short wait, and the next arrivals
// would wait long again). A request then waits at most
// standingQueueDivisor times less: enough to take a slot that frees (on a
// mesh hop one frees every few milliseconds), too little to add much
// latency.
const standingQueueDivisor = 20

// stallLateness: a queue timer this late was held up by the node not
// running, not by the upstream (see wait). Go's timers fire within
// microseconds of their deadline on a node that runs.
const stallLateness = 2 * time.Millisecond

// errOverloaded is what a client sees when admission control refused its
// request: 503 with Retry-After: 1 (RFC 9110 §10.2.3) and Proxy-Status
// error=connection_limit_reached (RFC 9209 §2.3.13).
var errOverloaded = &StatusError{Code: http.StatusServiceUnavailable,
	Msg: "meshd: upstream at its concurrency limit, try again", RetryAfter: time.Second}

// overloadError is a request refused by admission control; the reason goes
// to the log, the client sees errOverloaded.
type overloadError struct{ reason string }

func (e *overloadError) Error() string { return "proxy: admission refused: " + e.reason }

// As lets classify find the status the client gets.
func (e *overloadError) As(target any) bool {
	if p, ok := target.(**StatusError); ok {
		*p = errOverloaded
		return true
	}
	return false
}

var (
	errQueueFull    = &overloadError{"the upstream's queue is full"}
	errQueueTimeout = &overloadError{"no slot under the upstream's concurrency limit within the queue timeout"}
	errDialQueue    = &overloadError{"no connection and no dial slot within the queue timeout"}
	// errDialSkipped: a dial waited for its slot while an HTTP/2
	// connection to the same upstream was established; that connection
	// serves the request, and Pool.RoundTrip tries again when the
	// transport hands this error to the request first.
	errDialSkipped = &overloadError{"an HTTP/2 connection became ready while the dial waited"}
)

// isOverloaded reports whether err is a refusal by admission control: the
// request never left this node and the upstream is not at fault.
func isOverloaded(err error) bool {
	// Unwrapped by hand: errors.As would put its target on the heap, on
	// every refusal and every failure.
	for err != nil {
		if _, ok := err.(*overloadError); ok {
			return true
		}
		switch u := err.(type) {
		case interface{ Unwrap() error }:
			err = u.Unwrap()
		case interface{ Unwrap() []error }:
			for _, e := range u.Unwrap() {
				if isOverloaded(e) {
					return true
				}
			}
			return false
		default:
			return false
		}
	}
	return false
}

// limiter is the admission control of one upstream: a concurrency limit,
// adaptive or fixed, and a FIFO queue in front of it. Admission and release
// are atomic operations while nobody waits; the mutex guards the queue and
// the end of each sampling window.
type limiter struct {
	adaptive     bool
	queueTimeout time.Duration
	maxQueue     int64            // 0: derived, see queueBound
	now          func() time.Time // the clock of sampling windows
	epoch        time.Time        // times are nanoseconds since epoch
	total        *atomic.Int64    // the pool's count of refused requests; may be nil
	onStall      func()           // tests: a queued request's wait was extended (see wait)

	limit     atomic.Int64 // requests admitted at once
	inflight  atomic.Int64 // requests admitted and not released
	waiting   atomic.Int64 // requests in or entering the queue
	rejected  atomic.Int64 // requests refused (queue full or timed out)
	refusedAt atomic.Int64 // when the last was, nanoseconds since epoch

	// The current sampling window, added to without the mutex.
	winSum   atomic.Int64 // nanoseconds
	winCount atomic.Int64
	winPeak  atomic.Int64 // most requests in flight
	winEnd   atomic.Int64 // nanoseconds since epoch

	baseline atomic.Int64 // nanoseconds; 0 before the first baseline sample
	rtt      atomic.Int64 // mean of the last window, nanoseconds
	// stirred counts events that end calm (see the baseline): the
	// requests in flight going above limitMin, and dials.
	stirred     atomic.Int64
	provisional atomic.Bool // no calm sample yet: the baseline is the minimum

	mu         sync.Mutex
	head, tail *waiter
	queued     int64
	lastEmpty  int64   // when the queue was last empty, nanoseconds since epoch
	est        float64 // the adaptive limit before rounding
	// Cuts that did not shorten latency (see closeWindowLocked).
	lift      int64 // nanoseconds added to the baseline: latency not of this node's making
	cutStreak int   // windows in a row that cut the limit
	cutPeak   int64 // requests in flight in the first of them
	cutMean   int64 // the highest mean latency of the streak
}

// waiter is a request queued for a slot; granted and n are set under the
// limiter's mutex by the release that hands it the slot.
type waiter struct {
	ch         chan struct{}
	prev, next *waiter
	granted    bool
	n          int64
}

// newLimiter returns the limiter for Pool.ConcurrencyLimit mode (0
// adaptive, N fixed), or nil when it is negative (off).
func newLimiter(mode int, queueTimeout time.Duration, maxQueue int, now func() time.Time, total *atomic.Int64) *limiter {
	if mode < 0 {
		return nil
	}
	if now == nil {
		now = time.Now
	}
	l := &limiter{adaptive: mode == 0, queueTimeout: queueTimeout, maxQueue: int64(maxQueue),
		now: now, epoch: now(), total: total, est: limitInitial}
	l.provisional.Store(true)
	if l.adaptive {
		l.limit.Store(limitInitial)
	} else {
		l.limit.Store(int64(mode))
	}
	l.winEnd.Store(int64(limitWindow))
	l.refusedAt.Store(math.MinInt64 / 2) // long ago
	return l
}

func (l *limiter) clock() int64 { return int64(l.now().Sub(l.epoch)) }

// acquire admits a request: at once while the upstream is under its limit
// and nobody waits, else after waiting in the queue. It returns a ticket
// for release, or an *overloadError, or ctx's error when the client went
// away while queued. A nil limiter admits everything.
func (l *limiter) acquire(ctx context.Context) (int64, error) {
	if l == nil {
		return 0, nil
	}
	if l.waiting.Load() == 0 {
		if n, ok := l.take(); ok {
			return n, nil
		}
	}
	return l.wait(ctx)
}

// take takes a free slot, if there is one. Its ticket is stirred+1 as it
// was before the slot was taken when the request may be calm (at most
// limitMin in flight with it), else 0.
func (l *limiter) take() (int64, bool) {
	for {
		st := l.stirred.Load()
		n := l.inflight.Load()
		if n >= l.limit.Load() {
			return 0, false
		}
		if l.inflight.CompareAndSwap(n, n+1) {
			n++
			if n > l.winPeak.Load() {
				l.notePeak(n)
			}
			if n <= limitMin {
				return st + 1, true
			}
			if n == limitMin+1 {
				l.stirred.Add(1)
			}
			return 0, true
		}
	}
}

// stir ends the calm of the requests in flight: a connection is being
// dialled, and its handshake competes with them. A nil limiter ignores it.
func (l *limiter) stir() {
	if l != nil {
		l.stirred.Add(1)
	}
}

func (l *limiter) notePeak(n int64) {
	for {
		p := l.winPeak.Load()
		if n <= p || l.winPeak.CompareAndSwap(p, n) {
			return
		}
	}
}

// wait queues the request until a release hands it a slot, the queue
// timeout passes or ctx ends.
func (l *limiter) wait(ctx context.Context) (int64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	l.mu.Lock()
	// Counted before looking for a slot: a release that frees one after
	// this look sees a waiter and hands the slot over (see release).
	l.waiting.Add(1)
	l.dispatchLocked()
	if l.head == nil {
		if n, ok := l.take(); ok {
			l.waiting.Add(-1)
			l.mu.Unlock()
			return n, nil
		}
	}
	timeout := l.queueTimeout
	now := l.clock()
	if l.queued == 0 {
		l.lastEmpty = now
	}
	if now-l.lastEmpty > int64(timeout) || now-l.refusedAt.Load() < int64(timeout) {
		timeout /= standingQueueDivisor
	}
	if timeout <= 0 || l.queued >= l.queueBound(timeout) {
		l.waiting.Add(-1)
		l.mu.Unlock()
		l.refused()
		return 0, errQueueFull
	}
	w := &waiter{ch: make(chan struct{}, 1), prev: l.tail}
	if l.tail != nil {
		l.tail.next = w
	} else {
		l.head = w
	}
	l.tail = w
	l.queued++
	l.mu.Unlock()

	deadline := now + int64(timeout)
	timer := time.NewTimer(timeout)
	var err error
	for extended := false; err == nil; {
		select {
		case <-w.ch:
			timer.Stop()
			return w.n, nil
		case <-timer.C:
			// A timer that fires long after its deadline means the
			// node did not run meanwhile (the CPU taken by others, a
			// stall): the answers that free slots may be waiting to
			// be read, and their readers run after the timers. The
			// wait counts time the node could run, so it is extended
			// once by that lateness, up to the timeout again.
			if late := l.clock() - deadline; !extended && late > int64(stallLateness) {
				extended = true
				timer.Reset(min(time.Duration(late), timeout))
				if l.onStall != nil {
					l.onStall()
				}
				continue
			}
			err = errQueueTimeout
		case <-ctx.Done():
			timer.Stop()
			err = ctx.Err()
		}
	}
	l.mu.Lock()
	if w.granted {
		// The slot came together with the timeout or the cancellation.
		l.mu.Unlock()
		if ctx.Err() != nil {
			l.release(w.n, 0, false)
			return 0, ctx.Err()
		}
		return w.n, nil
	}
	l.unlinkLocked(w)
	l.waiting.Add(-1)
	l.mu.Unlock()
	if err == errQueueTimeout {
		l.refused()
	}
	return 0, err
}

func (l *limiter) refused() {
	l.refusedAt.Store(l.clock())
	l.rejected.Add(1)
	if l.total != nil {
		l.total.Add(1)
	}
}

func (l *limiter) unlinkLocked(w *waiter) {
	if w.prev != nil {
		w.prev.next = w.next
	} else {
		l.head = w.next
	}
	if w.next != nil {
		w.next.prev = w.prev
	} else {
		l.tail = w.prev
	}
	w.prev, w.next = nil, nil
	if l.queued--; l.queued == 0 {
		l.lastEmpty = l.clock()
	}
}

// dispatchLocked hands free slots to the waiters in queue order.
func (l *limiter) dispatchLocked() {
	for l.head != nil {
		n, ok := l.take()
		if !ok {
			return
		}
		w := l.head
		l.unlinkLocked(w)
		l.waiting.Add(-1)
		w.granted, w.n = true, n
		w.ch <- struct{}{}
	}
}

// queueBound is how many requests may wait for timeout: Pool.MaxQueue, or
// as many as the upstream can take within timeout at its current pace
// (limit × timeout / latency, Little's law), at least the limit. A request
// that would wait longer is better refused at once: its client can retry
// elsewhere with all of its time left.
func (l *limiter) queueBound(timeout time.Duration) int64 {
	if l.maxQueue > 0 {
		return l.maxQueue
	}
	lim := l.limit.Load()
	rtt := l.rtt.Load()
	if rtt <= 0 {
		rtt = l.baseline.Load()
	}
	if rtt <= 0 {
		return max(lim, limitMax) // nothing measured yet: the timeout decides
	}
	q := float64(lim) * float64(timeout) / float64(rtt)
	return int64(min(max(q, float64(lim)), float64(max(lim, limitMax))))
}

// release gives back a slot taken by acquire with its ticket. With sample
// set, rtt (the time from sending the request to its response header)
// feeds the limit.
func (l *limiter) release(ticket int64, rtt time.Duration, sample bool) {
	if l == nil {
		return
	}
	if sample {
		l.record(ticket > 0 && l.stirred.Load() == ticket-1, rtt)
	}
	l.inflight.Add(-1)
	if l.waiting.Load() > 0 {
		l.mu.Lock()
		l.dispatchLocked()
		l.mu.Unlock()
	}
}

// record adds one latency sample, of a calm request or not, and closes the
// window when it is over.
func (l *limiter) record(calm bool, rtt time.Duration) {
	ns := max(int64(rtt), 1)
	b := l.baseline.Load()
	if calm {
		if l.provisional.Load() {
			l.provisional.Store(false)
		}
		l.updateBaseline(ns)
	} else if l.provisional.Load() && (b == 0 || ns < b) {
		l.baseline.CompareAndSwap(b, ns) // lost to another sample: fine
	}
	if c := limitSampleCap * (b + int64(limitSlack)); b > 0 && ns > c {
		ns = c
	}
	l.winSum.Add(ns)
	if l.winCount.Add(1) >= limitWindowSamples && l.clock() >= l.winEnd.Load() && l.mu.TryLock() {
		// Whoever holds the mutex is busy with the queue; a later release
		// closes the window then.
		l.closeWindowLocked()
		l.mu.Unlock()
	}
}

func (l *limiter) updateBaseline(ns int64) {
	for {
		b := l.baseline.Load()
		nb := ns
		if b > 0 {
			nb = b + (min(ns, baselineSampleCap*b)-b)>>baselineShift
		}
		if l.baseline.CompareAndSwap(b, nb) {
			return
		}
	}
}

// closeWindowLocked ends the sampling window and, for an adaptive limit,
// sets the next limit.
func (l *limiter) closeWindowLocked() {
	now := l.clock()
	if now < l.winEnd.Load() || l.winCount.Load() < limitWindowSamples {
		return // another release closed it first
	}
	count := l.winCount.Swap(0)
	sum := l.winSum.Swap(0)
	peak := l.winPeak.Swap(l.inflight.Load())
	mean := sum / count
	l.rtt.Store(mean)
	b := l.baseline.Load()
	// A window spans at least two round trips, so that the requests sent
	// under the last limit have answered before it is judged again.
	l.winEnd.Store(now + max(int64(limitWindow), 2*b))
	if !l.adaptive || b == 0 {
		return
	}
	lim := l.est
	if l.lift > 0 && mean < b+l.lift {
		// Faster than the lifted baseline: what slowed the upstream is
		// gone, and the lift with it, by half per window.
		if l.lift /= 2; l.lift < b/16 {
			l.lift = 0
		}
	}
	if float64(peak)*2 < lim {
		// Less than half of the limit was in use: the limit is not what
		// holds the requests back, so it neither grows (an idle limit
		// says nothing about capacity) nor shrinks. Latency at such a
		// concurrency is not a queue the limit could shorten: at a few
		// requests in flight on a busy machine it is the wait for a core,
		// and cutting a limit nobody reaches would only make the next
		// burst of arrivals, after a scheduling stall, meet a limit of
		// limitMin and refused (mesh tests at 100 req/s on a machine
		// busy with builds: 10-15% refused). An overload reaches the
		// limit: its in-flight count grows with its latency.
		l.cutStreak = 0
		l.dispatchLocked()
		return
	}
	gradient := min(max((limitTolerance*float64(b+l.lift)+float64(limitSlack))/float64(mean), 0.5), 1)
	if gradient < 1 {
		if l.cutStreak == 0 {
			l.cutPeak, l.cutMean = peak, mean
		}
		// Latency lags concurrency by a round trip: the streak is judged
		// against its slowest window, not its first.
		l.cutMean = max(l.cutMean, mean)
		l.cutStreak++
		if l.cutStreak >= futileCuts && peak*2 <= l.cutPeak && mean*4 >= l.cutMean*3 {
			// The limit has been cut for futileCuts windows, the requests
			// in flight have halved, and latency has not moved: it is not
			// a queue of this node's requests (a CPU starved by other
			// processes, a slow network, other clients of the upstream),
			// and refusing more would only turn slow answers into
			// refusals. The baseline is lifted to where this latency is
			// normal, and the limit grows again from here.
			l.lift = max(l.lift, int64((float64(mean)-float64(limitSlack))/limitTolerance)-b)
			l.cutStreak = 0
			gradient = 1
		}
	} else {
		l.cutStreak = 0
	}
	next := min(max(lim*gradient+math.Sqrt(lim), limitMin), limitMax)
	l.est = next
	l.limit.Store(int64(next))
	l.dispatchLocked()
}

// maxLimitSplits bounds the limits of one upstream split by
// Pool.LimitKey: the keys are services of the catalog, but a bound keeps
// a bug or a flood of names from growing the pool without end.
const maxLimitSplits = 256

// limiterFor returns the limiter req counts against: its split of the
// upstream's limit by keyOf (created on first use, as the upstream's own),
// or the upstream's own.
func (uc *upstreamConns) limiterFor(keyOf func(*http.Request) string, req *http.Request) *limiter {
	l, k := uc.existingLimiter(keyOf, req)
	if l != nil || k == "" {
		return l
	}
	if uc.nsplits.Load() >= maxLimitSplits {
		return uc.lim
	}
	v, loaded := uc.splits.LoadOrStore(k, uc.lim.sibling())
	if !loaded {
		uc.nsplits.Add(1)
	}
	return v.(*limiter)
}

// existingLimiter returns the limiter req counts against if it exists
// already; else nil and the split's key, which is "" only when req counts
// against the upstream's own limit (or there is no limit).
func (uc *upstreamConns) existingLimiter(keyOf func(*http.Request) string, req *http.Request) (*limiter, string) {
	if uc.lim == nil || keyOf == nil {
		return uc.lim, ""
	}
	k := keyOf(req)
	if k == "" {
		return uc.lim, ""
	}
	if l, ok := uc.splits.Load(k); ok {
		return l.(*limiter), k
	}
	return nil, k
}

// stir ends the calm of the requests in flight to the upstream, in every
// split of its limit: a connection is being dialled.
func (uc *upstreamConns) stir() {
	if uc.lim == nil {
		return
	}
	uc.lim.stir()
	uc.splits.Range(func(_, l any) bool {
		l.(*limiter).stir()
		return true
	})
}

// sibling returns a new limiter in the same mode and with the same
// queueing as l, counting refusals in the same total.
func (l *limiter) sibling() *limiter {
	mode := 0
	if !l.adaptive {
		mode = int(l.limit.Load())
	}
	return newLimiter(mode, l.queueTimeout, int(l.maxQueue), l.now, l.total)
}

// UpstreamLimit is the admission state of one upstream (see
// Pool.ConcurrencyLimit), or of one split of it (Pool.LimitKey).
type UpstreamLimit struct {
	Key      string        // Upstream.Key
	Split    string        // Pool.LimitKey of the split; "" for the upstream's own limit
	Limit    int           // requests admitted at once
	InFlight int           // requests admitted and waiting for their response header
	Queued   int           // requests waiting for a slot
	Rejected int64         // requests refused since the upstream's pool was created
	Baseline time.Duration // the unloaded latency the adaptive limit compares with; 0 when unknown
}

// Limits returns the admission state of every upstream with a limit, in
// Key order. It is safe to call at any time.
func (p *Pool) Limits() []UpstreamLimit {
	var out []UpstreamLimit
	p.transports.Range(func(k, v any) bool {
		uc := v.(*upstreamConns)
		if uc.lim == nil {
			return true
		}
		own := uc.lim.state(k.(string), "")
		split := false
		uc.splits.Range(func(s, l any) bool {
			split = true
			out = append(out, l.(*limiter).state(k.(string), s.(string)))
			return true
		})
		if !split || own.InFlight > 0 || own.Queued > 0 || own.Rejected > 0 || own.Baseline > 0 {
			// Where every request has a split, the upstream's own
			// limit, never used, would only be a row stuck at its
			// initial value.
			out = append(out, own)
		}
		return true
	})
	sort.Slice(out, func(i, j int) bool {
		if out[i].Key != out[j].Key {
			return out[i].Key < out[j].Key
		}
		return out[i].Split < out[j].Split
	})
	return out
}

func (l *limiter) state(key, split string) UpstreamLimit {
	l.mu.Lock()
	q := l.queued
	l.mu.Unlock()
	return UpstreamLimit{Key: key, Split: split, Limit: int(l.limit.Load()),
		InFlight: int(l.inflight.Load()), Queued: int(q), Rejected: l.rejected.Load(),
		Baseline: time.Duration(l.baseline.Load())}
}

// HasFreeSlot reports whether a request like req would be admitted to u at
// once: u has no limit, or a slot free and nobody queued for it. An
// upstream not used yet has every slot free.
func (p *Pool) HasFreeSlot(u *Upstream, req *http.Request) bool {
	if u == nil || u.Key == "" {
		return false
	}
	v, ok := p.transports.Load(u.Key)
	if !ok {
		return true
	}
	l, _ := v.(*upstreamConns).existingLimiter(p.LimitKey, req)
	if l == nil {
		return true // no limit, or a split no request has used yet
	}
	return l.waiting.Load() == 0 && l.inflight.Load() < l.limit.Load()
}

// Rejected returns how many requests admission control refused since the
// pool was created: queue full, queue timeout, or no connection within the
// queue timeout.
func (p *Pool) Rejected() int64 { return p.rejected.Load() }

// waitDialSlot takes one of a key's dial slots, waiting at most timeout
// while all are taken; the caller gives it back with <-slots.
func waitDialSlot(ctx context.Context, slots chan struct{}, timeout time.Duration, total *atomic.Int64) error {
	select {
	case slots <- struct{}{}:
		return nil
	default:
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case slots <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		total.Add(1)
		return errDialQueue
	}
}

// admission returns the connections of a new key with the pool's admission
// control set up. Dials are bounded for TLS upstreams only: a handshake
// costs a millisecond of CPU or several round trips, a plain connect to the
// app on loopback microseconds.
func (p *Pool) admission(u *Upstream) *upstreamConns {
	qt := orDefault(p.QueueTimeout, DefaultQueueTimeout)
	uc := &upstreamConns{queueTimeout: qt, rejected: &p.rejected,
		lim: newLimiter(p.ConcurrencyLimit, qt, p.MaxQueue, nil, &p.rejected)}
	if d := orDefault(p.MaxDialsPerUpstream, DefaultMaxDialsPerUpstream); d > 0 && u.TLS != nil {
		uc.dials = make(chan struct{}, d)
	}
	return uc
}

// newH1Pool builds the fast path's pool, sharing the key's dial slots.
func (uc *upstreamConns) newH1Pool(dial func(ctx context.Context) (net.Conn, error), maxIdle int, idleTimeout, headerTimeout time.Duration) *h1Pool {
	p := newH1Pool(func(ctx context.Context) (net.Conn, error) {
		uc.stir()
		return dial(ctx)
	}, maxIdle, idleTimeout, headerTimeout)
	p.dials, p.queueTimeout, p.rejected = uc.dials, uc.queueTimeout, uc.rejected
	return p
}

// boundDial makes http.Transport's dials take one of the key's dial slots.
// Go's transport dials for every request that finds no idle connection, and
// lets the dial run on when another connection served the request first.
// For an HTTP/2 upstream a dial that got its slot after an HTTP/2
// connection came up is not needed: that connection has served the
// requests waiting, so it is skipped.
func (uc *upstreamConns) boundDial(dial func(ctx context.Context, network, addr string) (net.Conn, error), h2 bool) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		if uc.dials != nil {
			uc.pendingDials.Add(1)
			defer uc.pendingDials.Add(-1)
			ready := uc.h2Ready.Load()
			if err := waitDialSlot(ctx, uc.dials, uc.queueTimeout, uc.rejected); err != nil {
				return nil, err
			}
			defer func() { <-uc.dials }()
			if h2 && uc.h2Ready.Load() != ready {
				return nil, errDialSkipped
			}
		}
		uc.stir()
		return dial(ctx, network, addr)
	}
}

// roundTrip sends req through http.Transport. A request that got
// errDialSkipped raced with the connection that made the dial needless
// being added to the transport's pool, and is sent again (it was not sent
// at all).
func (uc *upstreamConns) roundTrip(req *http.Request) (*http.Response, error) {
	resp, err := uc.t.RoundTrip(req)
	for try := 0; try < 2 && err != nil && errors.Is(err, errDialSkipped) && req.Context().Err() == nil; try++ {
		if req.Body != nil && req.Body != http.NoBody {
			if req.GetBody == nil {
				break
			}
			body, gerr := req.GetBody()
			if gerr != nil {
				break
			}
			req.Body = body
		}
		resp, err = uc.t.RoundTrip(req)
	}
	return resp, err
}

// limitSample decides what one exchange tells the limiter: the time to the
// response header, except for answers that say nothing about the
// upstream's service time. A 503 or 429 is a refusal (a meshd behind this
// one at its own limit answers in microseconds) and would drag the latency
// down exactly when the upstream is overloaded; failures to connect, and
// requests whose client went away, were not served at all. A timeout is
// slowness and counts.
func limitSample(req *http.Request, resp *http.Response, err error, sent time.Time) (time.Duration, bool) {
	switch {
	case err == nil:
		if resp.StatusCode == http.StatusServiceUnavailable || resp.StatusCode == http.StatusTooManyRequests {
			return 0, false
		}
	case req.Context().Err() != nil, isDialError(err), isOverloaded(err), !isTimeout(err):
		return 0, false
	}
	return time.Since(sent), true
}
