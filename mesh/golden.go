package mesh

import (
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshd/meshd/mesh/policy"
	"github.com/meshd/meshd/proxy"
)

// The golden signals of every request a node serves: how many, how many
// failed and why, how slow, how big, per listener (public, mesh,
// outbound: one hop each), service, policy route, the region of the
// upstream that answered and the status class. Every label's values are
// bounded by what the node knows (listeners, the snapshot's services and
// regions, the policy's routes, RFC 9209's error types): a path, a host
// or a client never becomes a label, and a service nobody publishes is
// counted under service "".
//
// The request path pays one map lookup (a map behind an atomic pointer,
// copied on the rare miss), an atomic add per counter and one histogram
// observation; no label string is built per request.

// upstreamNone is upstream_region for requests the node answered itself:
// a cache hit, a refusal (unknown host, rate limit, authorization), no
// healthy upstream.
const upstreamNone = "none"

// maxSeries bounds the label combinations one node tracks; beyond it new
// combinations are counted without service, route and region. maxLines
// bounds the dashboard's timelines likewise (about 2.8 MiB of them);
// beyond it a listener's further services share one, under service "".
const (
	maxSeries = 4096
	maxLines  = 256
)

var codeClasses = [...]string{"1xx", "2xx", "3xx", "4xx", "5xx"}

// codeClass is the index in codeClasses of a status.
func codeClass(code int) uint8 {
	if code < 100 || code > 599 {
		return 4 // nothing sensible was answered: a server error
	}
	return uint8(code/100 - 1)
}

type seriesKey struct {
	listener, service, route, region string
	class                            uint8
}

// series are the collectors of one label combination, resolved once.
type series struct {
	requests            prometheus.Counter
	duration            prometheus.Observer
	reqBytes, respBytes prometheus.Counter
	retries             prometheus.Counter
	// hist is the dashboard's memory of the combination (timeline.go).
	hist *timeline
}

type errKey struct{ listener, service, reason string }

type lineKey struct{ listener, service string }

// cowMap is a map read without a lock on the request path and copied on
// write, for keys that are few and added rarely.
type cowMap[K comparable, V any] struct {
	mu sync.Mutex
	m  atomic.Pointer[map[K]V]
}

func (c *cowMap[K, V]) load(k K) (V, bool) {
	if m := c.m.Load(); m != nil {
		v, ok := (*m)[k]
		return v, ok
	}
	var zero V
	return zero, false
}

// store adds k unless present and returns the value held for k; the
// second result is false when the map is full and k was not added.
func (c *cowMap[K, V]) store(k K, v V, limit int) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.m.Load()
	if old != nil {
		if cur, ok := (*old)[k]; ok {
			return cur, true
		}
		if len(*old) >= limit {
			return v, false
		}
	}
	var next map[K]V
	if old == nil {
		next = map[K]V{k: v}
	} else {
		next = make(map[K]V, len(*old)+1)
		for ok, ov := range *old {
			next[ok] = ov
		}
		next[k] = v
	}
	c.m.Store(&next)
	return v, true
}

// snapshot returns the map as it is now; callers must not modify it.
func (c *cowMap[K, V]) snapshot() map[K]V {
	if m := c.m.Load(); m != nil {
		return *m
	}
	return nil
}

// reqMetrics holds the request collectors of a node.
type reqMetrics struct {
	requests, reqBytes, respBytes, retries, errors *prometheus.CounterVec
	duration                                       *prometheus.HistogramVec
	series                                         cowMap[seriesKey, *series]
	errs                                           cowMap[errKey, prometheus.Counter]
	lines                                          cowMap[lineKey, *timeline]
	maxSeries, maxLines                            int
}

func newReqMetrics(labels prometheus.Labels) *reqMetrics {
	full := []string{"listener", "service", "route", "upstream_region", "code_class"}
	svc := []string{"listener", "service"}
	counter := func(name, help string, l []string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help, ConstLabels: labels}, l)
	}
	return &reqMetrics{
		requests: counter("meshd_requests_total", "HTTP requests served, per listener (public: the edge's, mesh: a gateway's or a sidecar's inbound, outbound: a sidecar's for its app), service, policy route, region of the upstream that answered (none: answered by this node) and status class.", full),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "meshd_request_duration_seconds",
			Help:        "Time from a request's arrival to the end of its response, with the labels of meshd_requests_total; a native histogram, with classic buckets for scrapers that read only those.",
			ConstLabels: labels, Buckets: []float64{.001, .005, .025, .1, .5, 2.5, 10},
			NativeHistogramBucketFactor: 1.1, NativeHistogramMaxBucketNumber: 160, NativeHistogramMinResetDuration: time.Hour}, full),
		errors:    counter("meshd_request_errors_total", "Responses carrying an RFC 9209 Proxy-Status error, from this hop or one behind it, per listener, service and error type (other: a type RFC 9209 does not define).", []string{"listener", "service", "reason"}),
		reqBytes:  counter("meshd_request_body_bytes_total", "Request body bytes read from clients and forwarded, per listener and service.", svc),
		respBytes: counter("meshd_response_body_bytes_total", "Response body bytes written to clients, per listener and service.", svc),
		retries:   counter("meshd_request_retries_total", "Attempts beyond the first that requests were sent on (another upstream, another region), per listener and service.", svc),
		maxSeries: maxSeries, maxLines: maxLines,
	}
}

func (m *reqMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.requests, m.duration, m.errors, m.reqBytes, m.respBytes, m.retries}
}

// get returns the series of k, resolving its collectors on first use.
func (m *reqMetrics) get(k seriesKey) *series {
	if s, ok := m.series.load(k); ok {
		return s
	}
	return m.resolve(k)
}

func (m *reqMetrics) resolve(k seriesKey) *series {
	s := m.newSeries(k)
	if s, ok := m.series.store(k, s, m.maxSeries); ok {
		return s
	}
	// Full: the combination counts without its service, route and region.
	k = seriesKey{listener: k.listener, region: upstreamNone, class: k.class}
	if s, ok := m.series.load(k); ok {
		return s
	}
	s, _ = m.series.store(k, m.newSeries(k), m.maxSeries+len(codeClasses)*4)
	return s
}

func (m *reqMetrics) newSeries(k seriesKey) *series {
	class := codeClasses[k.class]
	return &series{
		requests:  m.requests.WithLabelValues(k.listener, k.service, k.route, k.region, class),
		duration:  m.duration.WithLabelValues(k.listener, k.service, k.route, k.region, class),
		reqBytes:  m.reqBytes.WithLabelValues(k.listener, k.service),
		respBytes: m.respBytes.WithLabelValues(k.listener, k.service),
		retries:   m.retries.WithLabelValues(k.listener, k.service),
		hist:      m.timeline(lineKey{k.listener, k.service}),
	}
}

// timeline returns the dashboard's timeline of a listener and service.
func (m *reqMetrics) timeline(k lineKey) *timeline {
	if t, ok := m.lines.load(k); ok {
		return t
	}
	if t, ok := m.lines.store(k, newTimeline(), m.maxLines); ok {
		return t
	}
	k.service = ""
	if t, ok := m.lines.load(k); ok {
		return t
	}
	t, _ := m.lines.store(k, newTimeline(), m.maxLines+4)
	return t
}

// outcome is what a request's end tells the metrics.
type outcome struct {
	key                 seriesKey
	end                 time.Time
	took                time.Duration
	reqBytes, respBytes int64
	attempts            int
	reason              string // RFC 9209 error type, "" without one
}

// record counts one request.
func (m *reqMetrics) record(o *outcome) {
	s := m.get(o.key)
	s.requests.Inc()
	secs := o.took.Seconds()
	s.duration.Observe(secs)
	if o.reqBytes > 0 {
		s.reqBytes.Add(float64(o.reqBytes))
	}
	if o.respBytes > 0 {
		s.respBytes.Add(float64(o.respBytes))
	}
	if o.attempts > 1 {
		s.retries.Add(float64(o.attempts - 1))
	}
	s.hist.add(o.end, o.key.class, secs)
	if o.reason != "" {
		k := errKey{o.key.listener, o.key.service, o.reason}
		c, ok := m.errs.load(k)
		if !ok {
			c, _ = m.errs.store(k, m.errors.WithLabelValues(k.listener, k.service, k.reason), 1<<30)
		}
		c.Inc()
	}
}

// proxyStatusTypes are the error types of RFC 9209 §2.3, the values the
// reason label may take besides "other".
var proxyStatusTypes = func() map[string]string {
	m := map[string]string{}
	for _, t := range []string{"dns_timeout", "dns_error", "destination_not_found", "destination_unavailable",
		"destination_ip_prohibited", "destination_ip_unroutable", "connection_refused", "connection_terminated",
		"connection_timeout", "connection_read_timeout", "connection_write_timeout", "connection_limit_reached",
		"tls_protocol_error", "tls_certificate_error", "tls_alert_received", "http_request_error",
		"http_request_denied", "http_response_incomplete", "http_response_header_section_size",
		"http_response_header_size", "http_response_body_size", "http_response_trailer_section_size",
		"http_response_trailer_size", "http_response_transfer_coding", "http_response_content_coding",
		"http_response_timeout", "http_upgrade_failed", "http_protocol_error", "proxy_internal_response",
		"proxy_internal_error", "proxy_configuration_error", "proxy_loop_detected"} {
		m[t] = t
	}
	return m
}()

// proxyStatusReason is the error type of the first Proxy-Status member
// that has one (the hop nearest the origin that failed; hops after it
// keep its member), "other" for a type RFC 9209 does not define, "" when
// no member has an error. It reads the field leniently, as a search for
// an error parameter: a quoted details string that holds "; error=" can
// only make up a reason, and an undefined one counts as other.
func proxyStatusReason(h http.Header) string {
	for _, line := range h["Proxy-Status"] {
		for rest := line; ; {
			i := strings.Index(rest, "error=")
			if i < 0 {
				break
			}
			if i > 0 && (rest[i-1] == ';' || rest[i-1] == ' ' || rest[i-1] == '\t') {
				v := rest[i+len("error="):]
				if end := strings.IndexAny(v, ";, \t"); end >= 0 {
					v = v[:end]
				}
				if t, ok := proxyStatusTypes[v]; ok {
					return t
				}
				return "other"
			}
			rest = rest[i+len("error="):]
		}
	}
	return ""
}

// routeName is the route label of a request's route: the policy's rule,
// "default" for a service the policy does not name.
func routeName(rr *reqRoute) string {
	if rr == nil || rr.route == nil {
		return policy.DefaultRouteName
	}
	return rr.route.Name
}

// observed is what the forwarding handler tells a request's recorder
// (proxy.Handler.Observe): the upstream, the attempts, the body bytes.
func observed(w http.ResponseWriter, _ *http.Request, u *proxy.Upstream, attempts int, bodyBytes int64) {
	// The edge's cache and replay wrap the writer; a background
	// revalidation's ends in nil.
	for range 8 {
		switch x := w.(type) {
		case *statusRecorder:
			x.up = u
			x.attempts += attempts
			x.reqBytes += bodyBytes
			return
		case interface{ Unwrap() http.ResponseWriter }:
			w = x.Unwrap()
		default:
			return
		}
	}
}

// noteRoute hands a chain front's resolved route to the request's
// recorder, which sits right in front of it.
func noteRoute(w http.ResponseWriter, rr *reqRoute) {
	if rec, ok := w.(*statusRecorder); ok {
		rec.rr = rr
	}
}
