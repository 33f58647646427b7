package proxy

import (
	"crypto/tls"
	"math"
	"net/http"
	"sync/atomic"
	"time"
)

// Upstream is one place a request can be forwarded to. Values are built by
// the caller once per catalog change and shared read-only by every request,
// so describing an upstream costs nothing per request. An Upstream must not
// be modified once it has been handed to a Handler or a Pool.
type Upstream struct {
	// Key identifies the connection pool; it is required. Upstreams with
	// equal Keys share connections, so equal Keys must mean equal Addr and
	// TLS, e.g. "10.0.0.5:8443|spiffe://td/service/web".
	Key string
	// Addr is the "host:port" to dial; it is required.
	Addr string
	// TLS is the client configuration for the upstream connection. Nil
	// means plain HTTP/1.1 (a sidecar talking to its app on 127.0.0.1).
	// Otherwise the configuration must already verify the peer's identity
	// (meshd's configurations check the SPIFFE ID); it is not modified.
	TLS *tls.Config
	// Name is used in logs only, e.g. the instance or gateway name.
	// Default: Addr.
	Name string
	// Region is where the upstream runs, for observers only (a trace
	// span's upstream region, Handler.Observe's metrics); the proxy does
	// not read it. Default "".
	Region string
	// HTTP1 makes a TLS upstream speak HTTP/1.1 even when Pool.HTTP2 is
	// set: for nearby upstreams, where a connection per concurrent request
	// is cheap and HTTP/1.1 costs less CPU per request (see Pool.HTTP2).
	// Default false: the Pool decides.
	HTTP1 bool
	// Raw makes a tunnel (a CONNECT) to this upstream a TCP connection to
	// Addr carrying the tunnel's bytes, with no HTTP: the app's TCP port
	// behind its sidecar. Requests are not sent to a Raw upstream.
	Raw bool
	// ProxyProtocol makes a Raw upstream's tunnels start with a PROXY
	// protocol v2 header naming the client (HeaderClient,
	// HeaderClientDst; LOCAL when they are missing), for an app that
	// wants the client's address rather than its sidecar's.
	ProxyProtocol bool
	// UDP makes a Raw upstream's tunnels UDP: datagrams to and from Addr,
	// carried as DATAGRAM capsules on the tunnel's stream (RelayUDP).
	UDP bool
	// H2C makes a plain upstream (TLS nil) speak HTTP/2 with prior
	// knowledge (RFC 9113 §3.3, "h2c"): an app that serves gRPC, whose
	// servers speak nothing else without TLS. Requests then go through
	// http.Transport's HTTP/2 client, multiplexed on one connection; the
	// HTTP/1.1 fast path is not used. Ignored when TLS is set. Default
	// false: HTTP/1.1.
	H2C bool

	// Load and health, kept by the Handler for balancers (see InFlight
	// and Ejected).
	inflight   atomic.Int64 // requests forwarded and not finished
	failStreak atomic.Int32 // consecutive attempts that could not reach it
	lastFail   atomic.Int64 // unix nanoseconds of the last such attempt
	ewma       atomic.Int64 // peak EWMA of the time to a response header, ns, as of ewmaAt
	ewmaAt     atomic.Int64 // unix nanoseconds of its last update
	floor      atomic.Int64 // lowest recent time to a response header, ns (see observe)
	samples    atomic.Int32 // answers measured, up to floorAfter
	answered   atomic.Int64 // unix nanoseconds of its last answer (observe)

	// Ejection by an OutlierPolicy (see outlierResult).
	oStreak    atomic.Int32 // consecutive failures under a policy
	ejections  atomic.Int32 // times ejected since the last probation passed
	ejectUntil atomic.Int64 // unix nanoseconds the current ejection ends
	ejected    atomic.Int64 // ejections of either kind, for EjectionsTotal
}

// LatencyDecay is the time constant of the latency estimate: a sample
// older by LatencyDecay weighs 1/e of a new one, and an estimate not
// updated for LatencyDecay has decayed to 1/e of its value (toward zero,
// as Finagle's and Linkerd's peak EWMA do), so an upstream that gets no
// traffic looks cheaper as time passes and is measured again. A slower
// sample than the estimate replaces it at once, so an upstream that slows
// down sheds load immediately and wins it back over about LatencyDecay.
const LatencyDecay = 10 * time.Second

// Aging of an upstream a balancer passes over (PassedOver). Time alone
// is too slow for this: at a thousand requests a second, ten seconds of
// decay is ten thousand requests, and two equal instances, one of which
// had a single slow answer (its first, which paid for the connection, or
// one that met a GC pause), would not share any of them.
//
// So each pass-over takes half of the distance between the estimate and
// the upstream's floor: the lowest time to an answer it has shown
// recently. A spike is forgotten after a few pass-overs, while an upstream
// that is consistently slower keeps an estimate at its own floor, above
// the faster one's, and gets almost nothing but what time decay and the
// other's own slow answers give it. The floor is trusted once it rests on
// floorAfter answers; before that the estimate ages toward zero.
const (
	passOverShift = 1 // each pass-over keeps 1/2 of the distance to the floor
	floorRise     = 3 // a sample above the floor raises it by at most 1/8 of itself
	floorAfter    = 3
)

// decayed is the estimate e (as of at, unix ns) at now: e·exp(-Δt/LatencyDecay).
func decayed(e, at, now int64) int64 {
	if e == 0 || now <= at {
		return e
	}
	return int64(float64(e) * math.Exp(-float64(now-at)/float64(LatencyDecay)))
}

// observe folds the time to one response header into the estimate. Two
// requests finishing at once may lose one of their samples: the estimate
// is a load signal, not a statistic.
func (u *Upstream) observe(d time.Duration, now time.Time) {
	sample, at := int64(d), now.UnixNano()
	prev, prevAt := u.ewma.Load(), u.ewmaAt.Load()
	if sample <= 0 {
		sample = 1
	}
	next := sample
	if cur := decayed(prev, prevAt, at); prev != 0 && sample < cur {
		w := math.Exp(-float64(at-prevAt) / float64(LatencyDecay))
		next = int64(float64(prev)*w + float64(sample)*(1-w))
	}
	u.ewma.Store(next)
	u.ewmaAt.Store(at)
	u.answered.Store(at)

	// The floor falls to a faster sample at once and rises by at most an
	// eighth of itself per slower one: a single spike barely moves it, an
	// upstream that stays slow raises it within a few dozen answers.
	f := u.floor.Load()
	switch {
	case f == 0 || sample < f:
		f = sample
	default:
		f += min(sample-f, f) >> floorRise
	}
	u.floor.Store(f)
	if u.samples.Load() < floorAfter {
		u.samples.Add(1)
	}
}

// PassedOver records that a balancer chose another upstream over u at
// now: the estimate ages toward u's floor (see passOverShift), so an
// upstream that once answered slowly is measured again after a few
// requests went elsewhere instead of being starved while its estimate
// cannot change. Balancers that compare candidates call it on the ones
// they did not choose.
func (u *Upstream) PassedOver(now time.Time) {
	e := u.ewma.Load()
	if e == 0 {
		return // never measured: it costs nothing while idle anyway
	}
	at := now.UnixNano()
	e = decayed(e, u.ewmaAt.Load(), at)
	var f int64
	if u.samples.Load() >= floorAfter {
		f = u.floor.Load()
	}
	if e > f {
		e = max(f+(e-f)>>passOverShift, 1)
	}
	u.ewma.Store(e)
	u.ewmaAt.Store(at)
}

// AnsweredSince reports whether u answered a request (a response header
// that was not a hop's failure signal) at or after t: evidence that it is
// alive whatever gossip's failure detector says of it.
func (u *Upstream) AnsweredSince(t time.Time) bool { return u.answered.Load() >= t.UnixNano() }

// Latency is the peak-EWMA estimate of the time u takes to answer as of
// its last update (an answer or a pass-over), 0 before its first answer.
func (u *Upstream) Latency() time.Duration { return time.Duration(u.ewma.Load()) }

// Cost is CostAt(time.Now()).
func (u *Upstream) Cost() int64 { return u.CostAt(time.Now()) }

// CostAt is what a latency-aware balancer compares at now: the latency
// estimate, decayed for the time since its last update, times the
// requests in flight plus one, so that both a slow upstream and a busy one
// cost more. An upstream never measured costs nothing while idle, so it
// gets tried, and a second of latency per request in flight otherwise, so
// a new instance gets one request at a time until its first answer, never
// a herd.
func (u *Upstream) CostAt(now time.Time) int64 {
	e, n := u.ewma.Load(), u.inflight.Load()
	if e == 0 {
		return n * int64(time.Second)
	}
	return max(decayed(e, u.ewmaAt.Load(), now.UnixNano()), 1) * (n + 1)
}

// Passive outlier ejection of requests without a CallPolicy: an upstream
// that could not be reached EjectAfter times in a row is ejected for
// EjectFor after the last failure; one success ends it. Requests with a
// CallPolicy eject by its OutlierPolicy instead.
const (
	EjectAfter = 3
	EjectFor   = 10 * time.Second
)

// InFlight is the number of requests forwarded to u whose responses have
// not finished yet: the load a least-loaded balancer compares.
func (u *Upstream) InFlight() int64 { return u.inflight.Load() }

// Ejected reports whether u is ejected at now: its last EjectAfter
// attempts without a CallPolicy failed to reach it, the last one less
// than EjectFor ago, or an OutlierPolicy ejected it until after now.
// Balancers should prefer any other candidate.
func (u *Upstream) Ejected(now time.Time) bool {
	t := now.UnixNano()
	return u.failStreak.Load() >= EjectAfter && t-u.lastFail.Load() < int64(EjectFor) ||
		t < u.ejectUntil.Load()
}

// EjectionsTotal counts the times u was ejected since it was created: by
// EjectAfter failures to reach it in a row, or by an OutlierPolicy.
func (u *Upstream) EjectionsTotal() int64 { return u.ejected.Load() }

// Ejections is how many times in a row an OutlierPolicy ejected u: 0
// once a request after its last ejection succeeded.
func (u *Upstream) Ejections() int { return int(u.ejections.Load()) }

// outlierResult records the outcome of a request under o at now; set is
// the request's candidates, over which o.MaxEjected is counted. A failure
// that makes ConsecutiveFailures in a row, or the first failure after an
// ejection ended (probation), ejects u for o.ejection(times ejected),
// unless the set has its share ejected already. A success resets the
// streak, and after an ejection ended it passes the probation: the count
// of ejections starts over.
func (u *Upstream) outlierResult(ok bool, o *OutlierPolicy, set []*Upstream, now time.Time) {
	t := now.UnixNano()
	if ok {
		if u.oStreak.Load() != 0 {
			u.oStreak.Store(0)
		}
		if u.ejections.Load() != 0 && t >= u.ejectUntil.Load() {
			u.ejections.Store(0)
		}
		return
	}
	th := o.threshold()
	if th < 0 {
		return
	}
	n := u.oStreak.Add(1)
	if t < u.ejectUntil.Load() {
		return // ejected already; a balancer sent it a request as a last resort
	}
	if u.ejections.Load() == 0 && int(n) < th {
		return
	}
	if !MayEject(set, now, o) {
		return
	}
	times := u.ejections.Add(1)
	u.ejected.Add(1)
	u.ejectUntil.Store(t + int64(o.ejection(times)))
	u.oStreak.Store(0)
}

// reached records whether an attempt reached u.
func (u *Upstream) reached(ok bool) {
	if ok {
		if u.failStreak.Load() != 0 {
			u.failStreak.Store(0)
		}
		return
	}
	u.lastFail.Store(time.Now().UnixNano())
	if u.failStreak.Add(1) == EjectAfter {
		u.ejected.Add(1)
	}
}

func (u *Upstream) name() string {
	if u == nil {
		return ""
	}
	if u.Name != "" {
		return u.Name
	}
	return u.Addr
}

// StatusError lets a Route function choose the status and the one-line
// message the client sees, e.g. 404 `meshd: no service for host "x"` or 503
// "meshd: no healthy instance of web". Code must be a 4xx or 5xx status;
// any other value is answered with 502.
type StatusError struct {
	Code int
	Msg  string
	// RetryAfter, when positive, is sent as Retry-After (RFC 9110 §10.2.3),
	// in whole seconds rounded up: how soon the client may try again.
	// Default 0: no Retry-After.
	RetryAfter time.Duration
	// Details, when not empty, is sent as the details parameter of the
	// response's Proxy-Status (RFC 9209 §2.1.5): the same one line as Msg
	// for a client or tool that reads only the header. Default "".
	Details string
}

// Error returns the message, or the status text when Msg is empty.
func (e *StatusError) Error() string {
	if e.Msg != "" {
		return e.Msg
	}
	return http.StatusText(e.Code)
}
