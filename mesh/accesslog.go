package mesh

import (
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/meshd/meshd/proxy"
)

// HeaderRequestID identifies a request across every hop and every log.
const HeaderRequestID = "X-Request-Id"

// requestID gives every public request an ID the edge chose: a client's
// own X-Request-Id is replaced, because it is not a mesh identity and could
// collide with or impersonate another request in the logs.
func requestID(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var b [12]byte
		var x [24]byte
		rand.Read(b[:])
		hex.Encode(x[:], b[:])
		r.Header[HeaderRequestID] = []string{string(x[:])}
		next.ServeHTTP(w, r)
	})
}

// accessLog writes one record per request to log at info level, after
// the response ended: who asked, what, the status, the bytes sent, the
// time taken, the cache's verdict and the trace ID ("" when the edge does
// not trace).
func accessLog(log *slog.Logger, next http.Handler) http.Handler {
	return &observer{log: log, next: next}
}

// observer is the first handler of every listener that serves HTTP
// requests: it sees each request at its end, for the access log (log, when
// set) and the golden-signal metrics (m, when set; golden.go).
type observer struct {
	n        *Node
	m        *reqMetrics
	listener string
	// service is the service of requests no front resolved a route for:
	// a sidecar's own on its inbound listener.
	service string
	log     *slog.Logger
	next    http.Handler
}

// observe wraps the front of a listener's chain.
func (n *Node) observe(listener string, log *slog.Logger, next http.Handler) http.Handler {
	o := &observer{n: n, m: n.reqs, listener: listener, log: log, next: next}
	if n.Config.Role == RoleSidecar && listener == "mesh" {
		o.service = n.Config.Service
	}
	return o
}

func (o *observer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// Tunnels (CONNECT, WebSocket) last as long as they are open: they
	// have their own metrics (meshd_tunnels_total), not a request's.
	count := o.m != nil && r.Method != http.MethodConnect && r.Header["Upgrade"] == nil
	if !count && o.log == nil {
		o.next.ServeHTTP(w, r)
		return
	}
	start := time.Now()
	rw := recorderPool.Get().(*statusRecorder)
	rw.ResponseWriter = w
	defer func() {
		end := time.Now()
		if o.log != nil {
			o.log.LogAttrs(r.Context(), slog.LevelInfo, "access",
				slog.String("id", r.Header.Get(HeaderRequestID)),
				// The edge's trace, when it traces: its span set the
				// traceparent the request went on with.
				slog.String("trace", proxy.TraceID(r.Header)),
				slog.String("client", r.RemoteAddr),
				slog.String("proto", r.Proto),
				slog.String("method", r.Method),
				slog.String("host", r.Host),
				slog.String("uri", r.RequestURI),
				slog.Int("status", rw.code(r)),
				slog.Int64("bytes", rw.bytes),
				slog.Duration("took", end.Sub(start)),
				slog.String("cache", w.Header().Get("Cache-Status")),
			)
		}
		if count {
			o.record(rw, r, end, end.Sub(start))
		}
		*rw = statusRecorder{}
		recorderPool.Put(rw)
	}()
	o.next.ServeHTTP(rw, r)
}

// record counts the request rw recorded.
func (o *observer) record(rw *statusRecorder, r *http.Request, end time.Time, took time.Duration) {
	code := rw.code(r)
	out := outcome{key: seriesKey{listener: o.listener, region: upstreamNone, class: codeClass(code)},
		end: end, took: took, reqBytes: rw.reqBytes, respBytes: rw.bytes, attempts: rw.attempts}
	svc := o.service
	if rw.rr != nil {
		svc = rw.rr.service
	}
	if svc != "" && o.n.countsService(svc, code) {
		out.key.service, out.key.route = svc, routeName(rw.rr)
	}
	if rw.up != nil && rw.up.Region != "" {
		out.key.region = rw.up.Region
	}
	if rw.Header()["Proxy-Status"] != nil {
		out.reason = proxyStatusReason(rw.Header())
	}
	o.m.record(&out)
}

// countsService reports whether requests for svc count under its name:
// the node's catalog or policy knows it, or something answered it below
// 400. An app that calls made-up names through its sidecar adds no series.
func (n *Node) countsService(svc string, code int) bool {
	if code < 400 || svc == n.Config.Service || n.snap.Load().known[svc] {
		return true
	}
	t := n.table.Load()
	return t != nil && t.services[svc] != nil
}

var recorderPool = sync.Pool{New: func() any { return new(statusRecorder) }}

// statusRecorder notes the status and body size of a response. It keeps
// Flush (the cache and the proxy stream through it) and Unwrap (for
// http.ResponseController).
type statusRecorder struct {
	http.ResponseWriter
	status int
	bytes  int64
	// From the chain's front (noteRoute) and the forwarding handler
	// (observed): the route, the upstream that answered or was tried
	// last, the attempts and the request body bytes sent on.
	rr       *reqRoute
	up       *proxy.Upstream
	attempts int
	reqBytes int64
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 && code >= 200 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(p []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	n, err := s.ResponseWriter.Write(p)
	s.bytes += int64(n)
	return n, err
}

func (s *statusRecorder) Flush() {
	if f, ok := s.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

func (s *statusRecorder) code(r *http.Request) int {
	if s.status == 0 {
		if r.Context().Err() != nil {
			return 499 // nothing was written: the client went away first
		}
		return http.StatusOK // net/http's implicit answer
	}
	return s.status
}

var _ http.Flusher = (*statusRecorder)(nil)
