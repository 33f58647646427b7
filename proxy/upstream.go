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
	// HTTP1 makes a TLS upstream speak HTTP/1.1 even when Pool.HTTP2 is
	// set: for nearby upstreams, where a connection per concurrent request
	// is cheap and HTTP/1.1 costs less CPU per request (see Pool.HTTP2).
	// Default false: the Pool decides.
	HTTP1 bool

	// Load and health, kept by the Handler for balancers (see InFlight
	// and Ejected).
	inflight   atomic.Int64 // requests forwarded and not finished
	failStreak atomic.Int32 // consecutive attempts that could not reach it
	lastFail   atomic.Int64 // unix nanoseconds of the last such attempt
	ewma       atomic.Int64 // peak EWMA of the time to a response header, ns
	ewmaAt     atomic.Int64 // unix nanoseconds of its last update
}

// LatencyDecay is the time constant of the latency estimate: a sample
// older by LatencyDecay weighs 1/e of a new one. A slower sample than the
// estimate replaces it at once (peak EWMA, as Finagle's and Linkerd's
// balancers do), so an upstream that slows down sheds load immediately and
// wins it back over about LatencyDecay.
const LatencyDecay = 10 * time.Second

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
	if prev != 0 && sample < prev {
		w := math.Exp(-float64(at-prevAt) / float64(LatencyDecay))
		next = int64(float64(prev)*w + float64(sample)*(1-w))
	}
	u.ewma.Store(next)
	u.ewmaAt.Store(at)
}

// Latency is the peak-EWMA estimate of the time u takes to answer, 0
// before its first answer.
func (u *Upstream) Latency() time.Duration { return time.Duration(u.ewma.Load()) }

// Cost is what a latency-aware balancer compares: the latency estimate
// times the requests in flight plus one, so that both a slow upstream and
// a busy one cost more. An upstream never measured costs nothing while
// idle, so it gets tried, and a second of latency per request in flight
// otherwise, so a new instance gets one request at a time until its first
// answer, never a herd.
func (u *Upstream) Cost() int64 {
	e, n := u.ewma.Load(), u.inflight.Load()
	if e == 0 {
		return n * int64(time.Second)
	}
	return e * (n + 1)
}

// Passive outlier ejection: an upstream that could not be reached
// EjectAfter times in a row is ejected for EjectFor after the last
// failure; one success ends it.
const (
	EjectAfter = 3
	EjectFor   = 10 * time.Second
)

// InFlight is the number of requests forwarded to u whose responses have
// not finished yet: the load a least-loaded balancer compares.
func (u *Upstream) InFlight() int64 { return u.inflight.Load() }

// Ejected reports whether u is ejected at now: its last EjectAfter
// attempts failed to reach it, the last one less than EjectFor ago.
// Balancers should prefer any other candidate.
func (u *Upstream) Ejected(now time.Time) bool {
	return u.failStreak.Load() >= EjectAfter && now.UnixNano()-u.lastFail.Load() < int64(EjectFor)
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
	u.failStreak.Add(1)
}

func (u *Upstream) name() string {
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
