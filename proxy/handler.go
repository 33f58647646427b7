package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// DefaultMaxAttempts is Handler.MaxAttempts's default.
const DefaultMaxAttempts = 3

// StatusClientClosedRequest is the status recorded (never sent) when the
// client went away before the response was complete; nginx's 499.
const StatusClientClosedRequest = 499

// Handler forwards each request to one of the upstreams its Route function
// returns. It is an http.Handler; fields must not change after the first
// request.
type Handler struct {
	// Route picks upstreams for the outgoing request. It receives the
	// outgoing request after header hygiene, so it may add fields such as
	// X-Mesh-Service, and it may read out.TLS, out.RemoteAddr and out.Host of
	// the original request. It returns candidates in preference order, or an
	// error: a *StatusError decides the status and message; any other error
	// is answered with 502. Required.
	Route func(out *http.Request) ([]*Upstream, error)
	// Pool holds the upstream connections. Required.
	Pool *Pool
	// Via is this hop's pseudonym in the Via field, e.g. "meshd-edge-eu1";
	// an RFC 9110 token. "<protocol> <Via>" is appended to Via on the
	// forwarded request and on the response (RFC 9110 §7.6.3). Required.
	Via string
	// Public marks the edge's public listener: client-supplied X-Mesh-*,
	// X-Forwarded-* and Forwarded fields are dropped, and X-Forwarded-For,
	// X-Forwarded-Proto, X-Forwarded-Host and Forwarded are set from the
	// real connection; X-Mesh-* fields of the upstream's response are
	// dropped too, so internal fields never reach the public. When false (mesh hops) X-Forwarded-* and Forwarded
	// are kept as sent: they come from a peer with a verified identity.
	// Default false.
	Public bool
	// MaxAttempts bounds how many candidates one request is sent to.
	// A request moves on to the next candidate only when it certainly did
	// not reach the upstream (connect or TLS failure), or when it is
	// idempotent and none of its body was read; never once response
	// headers arrived (unless they carry a trusted retry signal, see
	// TrustRetry) and never after a timeout (retrying a slow upstream
	// multiplies its load). Default 3.
	MaxAttempts int
	// SignalRetry makes this hop say so when it answers an error because
	// it could not get the request to any upstream while the request could
	// still be sent elsewhere (no byte of its body read; every attempt
	// failed before the upstream could act on it, or the request is
	// idempotent): the error response carries HeaderRetry, which the hop
	// before it, when it trusts this one, takes as "try your next
	// candidate". Set on mesh hops (gateway, sidecar inbound), never on
	// the public edge. Default false.
	SignalRetry bool
	// TrustRetry makes this hop act on HeaderRetry in its upstreams'
	// responses: such a response is discarded and the request goes to the
	// next candidate while it may (MaxAttempts, a body not yet read). Set
	// only when every upstream is a mesh peer whose identity the TLS
	// handshake verified; otherwise the field is removed from responses,
	// so that an app cannot forge it. Default false.
	TrustRetry bool
	// Policy returns the CallPolicy of a request (timeouts, retries and
	// their budget, back-off, body replay, outlier ejection), given the
	// incoming request; it is called once per request after Route, and
	// must not block. The caller keeps one CallPolicy per route and
	// returns it, shared (see CallPolicy). Nil, or returning nil: the
	// rules of MaxAttempts, SignalRetry and TrustRetry alone, and
	// ejection by EjectAfter and EjectFor. Default nil.
	Policy func(r *http.Request) *CallPolicy
	// TunnelIdleTimeout closes a tunnel (CONNECT, WebSocket) that carried
	// no byte either way for this long. Default an hour
	// (DefaultTunnelIdleTimeout).
	TunnelIdleTimeout time.Duration
	// Logger receives at most one debug record per request, and failures
	// at warn level with their details (details never go to the client).
	// Default slog.Default().
	Logger *slog.Logger
	// Observe, when set, learns how each request ended here: w and r are
	// what ServeHTTP got (a caller's middleware in front may find its own
	// writer in w, through Unwrap), u the upstream
	// that answered, or the last one tried (nil when none was), attempts
	// how many upstreams it was sent to, and bodyBytes how much of its
	// body was read from the client and sent on. It is called once per
	// request on the request's goroutine, after the response was written
	// or the failure answered (for a tunnel, only when it could not be
	// opened), and must not block: meshd's metrics read the upstream's
	// Region from it. Default nil.
	Observe func(w http.ResponseWriter, r *http.Request, u *Upstream, attempts int, bodyBytes int64)

	once sync.Once
	cfg  handlerConfig

	requests        atomic.Int64
	retries         atomic.Int64
	retriesBudgeted atomic.Int64
	failures        atomic.Int64
	clientGone      atomic.Int64

	tunnels         atomic.Int64 // tunnels opened
	tunnelsOpen     atomic.Int64 // tunnels open now
	tunnelBytesUp   atomic.Int64 // bytes from clients to upstreams through closed tunnels
	tunnelBytesDown atomic.Int64 // bytes from upstreams to clients through closed tunnels
}

var _ http.Handler = (*Handler)(nil)

// handlerConfig is what ServeHTTP derives from the fields once.
type handlerConfig struct {
	err         error
	logger      *slog.Logger
	maxAttempts int
	// Via values by received protocol, built once.
	via10, via11, via2, via3 string
}

// Stats are the handler's counters since it was created.
type Stats struct {
	Requests int64 // requests served
	Retries  int64 // attempts beyond the first
	// RetriesBudgeted counts retries a CallPolicy allowed that its
	// RetryBudget refused: the last answer or error was forwarded.
	RetriesBudgeted int64
	Failures        int64 // requests answered with an error status by this hop
	ClientGone      int64 // requests whose client went away (recorded as 499)

	Tunnels         int64 // tunnels (CONNECT, upgrades) opened
	TunnelsOpen     int64 // tunnels open now
	TunnelBytesUp   int64 // bytes client → upstream through tunnels that closed
	TunnelBytesDown int64 // bytes upstream → client through tunnels that closed
}

// Stats returns the handler's counters. It is safe to call at any time.
func (h *Handler) Stats() Stats {
	return Stats{
		Requests:        h.requests.Load(),
		Retries:         h.retries.Load(),
		RetriesBudgeted: h.retriesBudgeted.Load(),
		Failures:        h.failures.Load(),
		ClientGone:      h.clientGone.Load(),

		Tunnels:         h.tunnels.Load(),
		TunnelsOpen:     h.tunnelsOpen.Load(),
		TunnelBytesUp:   h.tunnelBytesUp.Load(),
		TunnelBytesDown: h.tunnelBytesDown.Load(),
	}
}

// Validate reports a missing or bad field.
func (h *Handler) Validate() error {
	switch {
	case h.Route == nil:
		return errors.New("proxy: handler: Route is required")
	case h.Pool == nil:
		return errors.New("proxy: handler: Pool is required")
	case !isToken(h.Via):
		return fmt.Errorf("proxy: handler: Via %q is not a token (RFC 9110 §7.6.3)", h.Via)
	case h.MaxAttempts < 0:
		return fmt.Errorf("proxy: handler: MaxAttempts %d is negative", h.MaxAttempts)
	}
	return h.Pool.Validate()
}

func (h *Handler) config() *handlerConfig {
	h.once.Do(func() {
		c := &h.cfg
		c.logger = h.Logger
		if c.logger == nil {
			c.logger = slog.Default()
		}
		c.err = h.Validate()
		c.maxAttempts = orDefault(h.MaxAttempts, DefaultMaxAttempts)
		c.via10 = "1.0 " + h.Via
		c.via11 = "1.1 " + h.Via
		c.via2 = "2 " + h.Via
		c.via3 = "3 " + h.Via
	})
	return &h.cfg
}

// via returns the Via entry for a message received with the given protocol
// version (RFC 9110 §7.6.3: major.minor, or the major version alone for
// HTTP/2 and later).
func (c *handlerConfig) via(major, minor int, pseudonym string) string {
	switch {
	case major == 1 && minor == 1:
		return c.via11
	case major == 2:
		return c.via2
	case major == 1 && minor == 0:
		return c.via10
	case major == 3:
		return c.via3
	case major >= 2:
		return fmt.Sprintf("%d %s", major, pseudonym)
	}
	return fmt.Sprintf("%d.%d %s", major, minor, pseudonym)
}

// outgoing is the per-request state: the one allocation a forwarded request
// costs this package besides its header.
type outgoing struct {
	req  http.Request
	url  url.URL
	body trackedBody
	via  [4]string // the response's Via values, when they fit

	// With a CallPolicy (retry.go): the body read in full for replay
	// (replayable), and the cancellation of the last attempt's context.
	replay     []byte
	replayable bool
	cancel     context.CancelCauseFunc
}

// trackedBody wraps the incoming body so the retry decision can tell whether
// any of it was read. Close does not close the incoming body while nothing
// was read: Go's transport closes a request body on every failure, and the
// body must stay readable for the next candidate. The server closes the
// incoming body itself when ServeHTTP returns.
type trackedBody struct {
	rc   io.ReadCloser
	read atomic.Bool  // some of the body was read
	eof  atomic.Bool  // the incoming body reported EOF
	n    atomic.Int64 // bytes read, for Handler.Observe
}

func (b *trackedBody) Read(p []byte) (int, error) {
	if b.eof.Load() {
		// Go's transport reads once more after the declared length to
		// check for excess data. By then Go's HTTP/1 server may have
		// closed the incoming body, which it does when the response
		// header is written after the body hit EOF; that read must say
		// EOF, not "read after close", or the transport drops the
		// upstream connection under the response being streamed.
		return 0, io.EOF
	}
	if !b.read.Load() {
		b.read.Store(true)
	}
	n, err := b.rc.Read(p)
	if n > 0 {
		b.n.Add(int64(n))
	}
	if err == io.EOF {
		b.eof.Store(true)
	} else if err != nil {
		// Marked so classify can tell the client's failure (a malformed
		// chunked body, a body cut by the server's limits) from the
		// upstream's: the transport hands it back from RoundTrip.
		err = &requestBodyError{err: err}
	}
	return n, err
}

// requestBodyError marks a failure to read the client's request body.
type requestBodyError struct{ err error }

func (e *requestBodyError) Error() string { return "read request body: " + e.err.Error() }
func (e *requestBodyError) Unwrap() error { return e.err }

func (b *trackedBody) Close() error {
	if b.read.Load() {
		return b.rc.Close()
	}
	return nil
}

// bodyRead is how many bytes of the client's body were read: streamed
// through body, or read whole for replay (retry.go).
func (o *outgoing) bodyRead() int64 { return o.body.n.Load() + int64(len(o.replay)) }

// errBodyRead is what getBody reports once the body cannot be replayed.
var errBodyRead = errors.New("proxy: request body already sent, cannot replay")

// getBody lets Go's transport resend a request on a fresh connection when
// the pooled one turned out to be closed before anything was read from the
// body (an upstream's idle timeout racing a new request). Once a byte was
// read the body cannot be replayed.
func (o *outgoing) getBody() (io.ReadCloser, error) {
	if o.body.read.Load() {
		return nil, errBodyRead
	}
	return &o.body, nil
}

// prepare builds the outgoing request from r: same method, context (client
// cancellation reaches the upstream), path, query, Host and body; a clean
// header (see outgoingHeader).
func (h *Handler) prepare(o *outgoing, r *http.Request, c *handlerConfig) {
	o.req = *r
	o.url = *r.URL
	// Absolute-form targets (RFC 9112 §3.2.2): the server already took
	// the authority as r.Host; the pool sets scheme and host per upstream,
	// and credentials in the URI are never forwarded.
	o.url.Scheme, o.url.Host, o.url.User = "", "", nil
	o.req.URL = &o.url
	o.req.RequestURI = ""
	// The client's "Connection: close" is about its own connection, not
	// about the pooled upstream one.
	o.req.Close = false
	o.req.TransferEncoding = nil
	// Trailers are shared on purpose: the server fills in r.Trailer when
	// the body is read to the end, before the transport sends them on.
	o.req.Trailer = r.Trailer

	fi := forwardInfo{via: c.via(r.ProtoMajor, r.ProtoMinor, h.Via), public: h.Public}
	if h.Public {
		fi.clientIP = clientIP(r.RemoteAddr)
		fi.proto = "http"
		if r.TLS != nil {
			fi.proto = "https"
		}
		fi.host = r.Host
	}
	o.req.Header = outgoingHeader(r.Header, &fi)

	if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
		// A nil body lets the transport retry on a stale pooled
		// connection by itself, and tells the retry loop nothing can
		// have been consumed.
		o.req.Body = nil
		o.req.GetBody = nil
		o.req.ContentLength = 0
	} else {
		o.body.rc = r.Body
		o.req.Body = &o.body
		o.req.GetBody = o.getBody
	}
}

// ServeHTTP forwards r to the first upstream that answers.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c := h.config()
	h.requests.Add(1)
	var start time.Time
	debug := c.logger.Enabled(r.Context(), slog.LevelDebug)
	if debug {
		start = time.Now()
	}
	if c.err != nil {
		h.failures.Add(1)
		c.logger.Error("proxy: handler misconfigured", "err", c.err)
		writeError(w, http.StatusInternalServerError, "meshd: proxy misconfigured")
		return
	}
	if proto, ok := tunnelProto(r, h.Public); ok {
		h.serveTunnel(w, r, c, proto)
		return
	}

	o := &outgoing{}
	h.prepare(o, r, c)
	ups, err := h.Route(&o.req)
	if err == nil && len(ups) == 0 {
		err = errNoUpstream
	}
	if err != nil {
		h.fail(w, r, c, o, nil, 0, err)
		return
	}

	if h.Policy != nil {
		if p := h.Policy(r); p != nil {
			h.serveWithPolicy(w, r, c, o, ups, p, start, debug)
			return
		}
	}

	// Waiting for the upstream: cancel the exchange if the client leaves.
	watchClient(r.Context())

	var (
		resp     *http.Response
		u        *Upstream
		attempts int
	)
	for i, cand := range ups {
		if attempts == c.maxAttempts {
			break
		}
		if cand == nil {
			continue
		}
		if isOverloaded(err) && !h.Pool.HasFreeSlot(cand, &o.req) {
			// After a refusal by admission control only a candidate
			// that admits at once is worth it: waiting in a second
			// queue would double the wait.
			continue
		}
		if attempts > 0 {
			h.retries.Add(1)
		}
		attempts++
		u = cand
		u.inflight.Add(1)
		sent := time.Now()
		resp, err = h.Pool.RoundTrip(u, &o.req)
		switch {
		case err != nil:
			u.inflight.Add(-1)
			if !isOverloaded(err) { // refused here: says nothing of u's health
				var de *dialError
				u.reached(!errors.As(err, &de))
			}
		case resp.Header[HeaderRetry] == nil:
			u.reached(true)
			now := time.Now()
			u.observe(now.Sub(sent), now)
		case !h.TrustRetry:
			// Not from a peer that may say so: an app cannot make
			// meshd retry its requests elsewhere.
			delete(resp.Header, HeaderRetry)
			u.reached(true)
			now := time.Now()
			u.observe(now.Sub(sent), now)
		default:
			// The hop behind u reached no upstream: u failed this
			// request as if it could not be reached (a dead app, a
			// region with nothing left), and its fast error must not
			// look like a fast answer to the balancer.
			u.reached(false)
			if attempts == c.maxAttempts || !hasCandidate(ups[i+1:]) || !retryable(r, o, errRetrySignal) {
				break // its answer is the best there is
			}
			u.inflight.Add(-1)
			discard(resp)
			resp, err = nil, errRetrySignal
		}
		// A refusal by admission control sent nothing: the next
		// candidate with a free slot may take it (see above).
		moveOn := isOverloaded(err) && r.Context().Err() == nil
		if err == nil || !moveOn && !retryable(r, o, err) {
			break
		}
		c.logger.Debug("proxy: attempt failed, trying next candidate",
			"upstream", u.name(), "addr", u.Addr, "attempt", attempts, "err", err)
	}
	if resp == nil && err == nil {
		err = errNoUpstream // every candidate was nil
	}
	if err != nil {
		h.fail(w, r, c, o, u, attempts, err)
		return
	}

	h.forward(w, r, c, o, u, resp, attempts, start, debug)
}

// forward sends the chosen upstream's response to the client: the end of
// ServeHTTP and of serveWithPolicy. It releases u's slot in flight.
func (h *Handler) forward(w http.ResponseWriter, r *http.Request, c *handlerConfig, o *outgoing, u *Upstream, resp *http.Response, attempts int, start time.Time, debug bool) {
	defer u.inflight.Add(-1)
	rc := http.NewResponseController(w)
	if o.req.Body != nil && r.ProtoMajor == 1 {
		// The upstream may answer while the client is still sending
		// (an early 413, or a streaming echo); without full duplex Go's
		// HTTP/1 server would stop reading the request body once the
		// response header is written. HTTP/2 is always full duplex.
		_ = rc.EnableFullDuplex()
	}
	status := h.respond(w, r, c, o, rc, resp)
	if h.Observe != nil {
		h.Observe(w, r, u, attempts, o.bodyRead())
	}
	if debug {
		c.logger.Debug("proxy: forwarded",
			"method", r.Method, "host", r.Host, "path", r.URL.Path,
			"status", status, "upstream", u.name(), "attempts", attempts,
			"duration", time.Since(start))
	}
}

// HeaderRetry is the retry signal between mesh hops (see
// Handler.SignalRetry): "1" on an error response says the hop reached no
// upstream that could answer and the request may be sent to another
// candidate: nothing acted on it, or it is idempotent, and no byte of its
// body was read. It is an X-Mesh-* field, so the public edge drops it in
// both directions.
const HeaderRetry = "X-Mesh-Retry"

// errRetrySignal: an upstream hop answered with HeaderRetry.
var errRetrySignal = errors.New("proxy: the upstream hop could not reach any upstream")

// errNoUpstream: Route returned no candidate and no error.
var errNoUpstream = &StatusError{Code: http.StatusServiceUnavailable, Msg: "meshd: no upstream available"}

// retryable reports whether a request whose attempt failed with err may be
// sent to the next candidate.
func retryable(r *http.Request, o *outgoing, err error) bool {
	if r.Context().Err() != nil {
		return false // the client is gone
	}
	if isOverloaded(err) {
		// Refused by admission control: not a retry. ServeHTTP moves
		// it only to a candidate that admits it at once, and never
		// signals the hop before to send it elsewhere: queueing at
		// each would multiply the wait, and the overload with it.
		return false
	}
	if isDialError(err) {
		// Never connected: the upstream did not see the request.
		return true
	}
	if err == errRetrySignal {
		// The hop behind the upstream says no app saw it; what this hop
		// sent can be sent again if none of the body was read.
		return !o.body.read.Load()
	}
	if isTimeout(err) {
		// The upstream got the request and is slow; sending it to
		// another one multiplies the load that made it slow.
		return false
	}
	// The upstream may have seen the request. Resending is only safe when
	// repeating it has no further effect (RFC 9110 §9.2.2) and no byte of
	// the body was consumed, so the next upstream sees all of it.
	return isIdempotent(r.Method) && !o.body.read.Load()
}

// hasCandidate reports whether ups holds another upstream to try.
func hasCandidate(ups []*Upstream) bool {
	for _, u := range ups {
		if u != nil {
			return true
		}
	}
	return false
}

// discard drops a response that will not be forwarded. An error answer is
// short: reading it to the end lets its connection be reused.
func discard(resp *http.Response) {
	_, _ = io.CopyN(io.Discard, resp.Body, 4<<10)
	resp.Body.Close()
}

// isIdempotent reports RFC 9110 §9.2.2 idempotent methods.
func isIdempotent(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace,
		http.MethodPut, http.MethodDelete:
		return true
	}
	return false
}

func isTimeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// classify is the one place that decides what a client sees for a failure:
// a *StatusError from Route keeps its status and message; a client that went
// away gets 499 (logged, nothing written); timeouts give 504; anything else
// 502. The message is a short fixed text: error details never reach the
// client.
func classify(ctx context.Context, err error) (int, string) {
	if ctx.Err() != nil {
		return StatusClientClosedRequest, ""
	}
	if isOverloaded(err) {
		return errOverloaded.Code, errOverloaded.Msg
	}
	var se *StatusError
	if errors.As(err, &se) {
		if se.Code >= 400 && se.Code <= 599 {
			return se.Code, se.Error()
		}
		return http.StatusBadGateway, "meshd: bad gateway"
	}
	var be *requestBodyError
	if errors.As(err, &be) {
		// The client's body failed, not the upstream (RFC 9112 §7.1: a
		// malformed chunk is a bad request).
		return http.StatusBadRequest, "meshd: malformed request body"
	}
	if isTimeout(err) {
		return http.StatusGatewayTimeout, "meshd: upstream timed out"
	}
	return http.StatusBadGateway, "meshd: bad gateway"
}

// fail answers a request that could not be forwarded. u is the last
// upstream tried, nil when none was.
func (h *Handler) fail(w http.ResponseWriter, r *http.Request, c *handlerConfig, o *outgoing, u *Upstream, attempts int, err error) {
	if h.Observe != nil {
		defer h.Observe(w, r, u, attempts, o.bodyRead())
	}
	code, msg := classify(r.Context(), err)
	overloaded := isOverloaded(err)
	// The record's attributes are built only when it is written: under
	// overload a node refuses more requests than it serves, and each
	// refusal is a debug record nobody reads.
	record := func(level slog.Level, what string) {
		if !c.logger.Enabled(r.Context(), level) {
			return
		}
		attrs := []any{"method", r.Method, "host", r.Host, "path", r.URL.Path,
			"status", code, "attempts", attempts, "err", err}
		if u != nil {
			attrs = append(attrs, "upstream", u.name(), "addr", u.Addr)
		}
		c.logger.Log(r.Context(), level, what, attrs...)
	}
	if code == StatusClientClosedRequest {
		h.clientGone.Add(1)
		record(slog.LevelDebug, "proxy: client went away")
		return
	}
	h.failures.Add(1)
	var se *StatusError
	switch {
	case overloaded:
		// Refused by this node's admission control: counted in
		// /metrics, one debug record.
		se = errOverloaded
		record(slog.LevelDebug, "proxy: refused by admission control")
	case errors.As(err, &se):
		// A routing decision, not a fault of this node: one debug record.
		record(slog.LevelDebug, "proxy: not routed")
	case code == http.StatusBadRequest:
		// Nothing wrong with this node or the upstream.
		record(slog.LevelDebug, "proxy: client error: bad request body")
	default:
		record(slog.LevelWarn, "proxy: forwarding failed")
	}
	if t := proxyStatusError(code, err); t != "" {
		// RFC 9209: says this answer is a proxy's, not the origin's, and
		// why. Hops after this one keep it; a cache in front reads it as
		// "the origin could not be reached" (RFC 9111 §4.2.4).
		ps := make([]byte, 0, 160)
		ps = append(append(append(ps, proxyStatusToken(h.Via)...), "; error="...), t...)
		if u != nil {
			ps = appendSFString(append(ps, "; next-hop="...), u.name())
		}
		var details string
		if se != nil {
			details = se.Details
		}
		ps = appendDetails(ps, details, TraceID(o.req.Header))
		w.Header()["Proxy-Status"] = []string{string(ps)}
	}
	if h.SignalRetry && (code == http.StatusBadGateway || code == http.StatusServiceUnavailable) &&
		!overloaded && // a refusal by admission control is final: retries would multiply an overload
		(attempts == 0 && !o.body.read.Load() || retryable(r, o, err)) {
		// Nothing upstream acted on it (or repeating it is harmless):
		// the hop before this one may send it elsewhere.
		w.Header()[HeaderRetry] = []string{"1"}
	}
	if overloaded {
		w.Header()["Retry-After"] = retryAfterOverloaded
	} else if se != nil && se.RetryAfter > 0 {
		w.Header()["Retry-After"] = []string{strconv.FormatInt(int64((se.RetryAfter+time.Second-1)/time.Second), 10)}
	}
	writeError(w, code, msg)
}

// proxyStatusError is the RFC 9209 §2.3 error type of a request that could
// not be forwarded, or "" when no upstream was at fault.
func proxyStatusError(code int, err error) string {
	if isOverloaded(err) {
		return "connection_limit_reached" // admission control (limit.go)
	}
	var se *StatusError
	var be *requestBodyError
	switch {
	case errors.As(err, &be):
		return "" // the client's body failed
	case err == errRetrySignal:
		return "destination_unavailable"
	case errors.As(err, &se):
		if code == http.StatusServiceUnavailable || code == http.StatusBadGateway {
			return "destination_unavailable"
		}
		return ""
	case isDialError(err):
		var (
			cve   *tls.CertificateVerificationError
			ce    *certError
			alert tls.AlertError
			he    *handshakeError
		)
		switch {
		case errors.Is(err, syscall.ECONNREFUSED):
			return "connection_refused"
		case isTimeout(err):
			return "connection_timeout"
		case errors.As(err, &cve), errors.As(err, &ce):
			// The upstream's certificate is not one this hop accepts:
			// another CA, expired, or not the identity the catalog
			// expects of it.
			return "tls_certificate_error"
		case errors.As(err, &alert):
			return "tls_alert_received" // the upstream refused the handshake
		case errors.As(err, &he):
			return "tls_protocol_error"
		}
		return "destination_unavailable"
	case isTimeout(err):
		return "http_response_timeout"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "connection_terminated"
	}
	return "http_protocol_error"
}

// appendDetails appends the Proxy-Status details parameter (RFC 9209
// §2.1.6: implementation-specific text for debugging): details for the
// client, then the request's trace ID as "trace=<id>", so that whoever got
// the error can find its trace, and the spans of every hop, by the ID in
// the answer. Nothing is appended when both are empty.
func appendDetails(ps []byte, details, trace string) []byte {
	if details == "" && trace == "" {
		return ps
	}
	ps = appendSFString(append(ps, "; details="...), details)
	ps = ps[:len(ps)-1] // the closing quote comes after the trace
	if trace != "" {
		if details != "" {
			ps = append(ps, "; "...)
		}
		ps = append(append(ps, "trace="...), trace...) // lowercase hex: nothing to escape
	}
	return append(ps, '"')
}

// ProxyStatus is a Proxy-Status field value (RFC 9209) for an answer
// this node gives instead of the origin: name (an sf-token, see Via),
// the error type ("" for none), and details with trace, the request's
// TraceID ("" for none), as Handler's own error answers carry them.
func ProxyStatus(name, errType, details, trace string) string {
	ps := make([]byte, 0, 64+len(details)+len(trace))
	ps = append(ps, proxyStatusToken(name)...)
	if errType != "" {
		ps = append(append(ps, "; error="...), errType...)
	}
	return string(appendDetails(ps, details, trace))
}

// sfString renders s as a structured-field string (RFC 8941 §3.3.3):
// quoted, with '"' and '\' escaped; a byte outside printable ASCII, which
// an sf-string cannot carry, becomes '?'.
func sfString(s string) string {
	return string(appendSFString(make([]byte, 0, len(s)+2), s))
}

// appendSFString appends s to b as sfString renders it.
func appendSFString(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c < 0x20 || c > 0x7e:
			b = append(b, '?')
		default:
			b = append(b, c)
		}
	}
	return append(b, '"')
}

// proxyStatusToken is the proxy's name in Proxy-Status: an sf-token, or
// "meshd" when the Via pseudonym is not one.
func proxyStatusToken(name string) string {
	if name == "" {
		return "meshd"
	}
	c := name[0]
	if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || c == '*') {
		return "meshd"
	}
	for i := 1; i < len(name); i++ {
		if !isToken(name[i:i+1]) && name[i] != ':' && name[i] != '/' {
			return "meshd"
		}
	}
	return name
}

// writeError sends a short plain-text error. no-store keeps a cache in front
// of this handler from keeping a failure that is over in a moment.
func writeError(w http.ResponseWriter, code int, msg string) {
	hdr := w.Header()
	hdr["Content-Type"] = errorContentType
	hdr["X-Content-Type-Options"] = errorNoSniff
	hdr["Cache-Control"] = errorNoStore
	w.WriteHeader(code)
	if msg == errOverloaded.Msg {
		_, _ = w.Write(overloadedBody)
		return
	}
	_, _ = io.WriteString(w, msg+"\n")
}

// The fields of every error answer, shared: a handler's header map is
// dropped after its response, and no writer changes a value in place.
var (
	errorContentType     = []string{"text/plain; charset=utf-8"}
	errorNoSniff         = []string{"nosniff"}
	errorNoStore         = []string{"no-store"}
	retryAfterOverloaded = []string{strconv.Itoa(int(errOverloaded.RetryAfter / time.Second))}
	overloadedBody       = []byte(errOverloaded.Msg + "\n")
)

// errUpstreamBody marks a failure to read the upstream's response body.
type upstreamBodyError struct{ err error }

func (e *upstreamBodyError) Error() string { return "read upstream body: " + e.err.Error() }
func (e *upstreamBodyError) Unwrap() error { return e.err }

// respond copies resp to w: header without hop-by-hop fields, Via, status,
// body and trailers. It returns the status for the log. Once the status
// line is sent no error status is possible, so failures are handled here.
func (h *Handler) respond(w http.ResponseWriter, r *http.Request, c *handlerConfig, o *outgoing, rc *http.ResponseController, resp *http.Response) int {
	defer resp.Body.Close()
	hdr := w.Header()
	copyResponseHeader(hdr, resp.Header, h.Public)
	if hdr[HeaderRetry] != nil && (!h.SignalRetry || !retryable(r, o, errRetrySignal)) {
		// A trusted hop's signal passed on only when this hop signals
		// too and the request can still be replayed before it.
		delete(hdr, HeaderRetry)
	}
	hdr["Via"] = appendVia(o.via[:], resp.Header["Via"], c.via(resp.ProtoMajor, resp.ProtoMinor, h.Via))
	// Announce the upstream's trailers so the server sends them after the
	// body (RFC 9110 §6.5.2); Go's transport lists their names in
	// resp.Trailer before the body is read.
	announced := len(resp.Trailer)
	for k := range resp.Trailer {
		hdr.Add("Trailer", k)
	}
	if announced > 0 {
		// HTTP/1.1 carries trailers only in chunked framing (RFC 9112
		// §7.1.2); an HTTP/2 upstream may send Content-Length as well,
		// which would make the server drop them.
		delete(hdr, "Content-Length")
	}
	w.WriteHeader(resp.StatusCode)

	// Stream what has no declared length (chunked, HTTP/2 without
	// Content-Length) and event streams: the client must see each piece
	// when the upstream sends it, not when a buffer fills.
	flush := resp.ContentLength < 0 || strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream")
	if flush || len(resp.Trailer) > 0 {
		// Send the header now; with trailers this also keeps the server
		// from computing a Content-Length, so it uses chunked encoding.
		_ = rc.Flush()
	}

	err := copyBody(w, rc, resp.Body, flush)
	if err != nil {
		var ue *upstreamBodyError
		if r.Context().Err() != nil || !errors.As(err, &ue) {
			h.clientGone.Add(1)
			c.logger.Debug("proxy: client went away during the response",
				"method", r.Method, "host", r.Host, "path", r.URL.Path,
				"status", StatusClientClosedRequest, "err", err)
			return StatusClientClosedRequest
		}
		h.failures.Add(1)
		c.logger.Warn("proxy: upstream response body failed",
			"method", r.Method, "host", r.Host, "path", r.URL.Path, "err", err)
		// The status line is gone; aborting makes the server reset the
		// stream or close the connection, so the client sees a truncated
		// response rather than one that looks complete.
		panic(http.ErrAbortHandler)
	}
	// Trailers that were announced are set under their name; any the
	// upstream added without announcing them go through TrailerPrefix.
	for k, vv := range resp.Trailer {
		if len(resp.Trailer) == announced {
			hdr[k] = vv
		} else {
			hdr[http.TrailerPrefix+k] = vv
		}
	}
	return resp.StatusCode
}

// bufPool holds the 32 KiB copy buffers; pointers to slices, so Put does not
// allocate.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// copyBody streams src to w through a pooled buffer, flushing after each
// write when flush is set. A read failure is returned as
// *upstreamBodyError; a write failure as is.
func copyBody(w io.Writer, rc *http.ResponseController, src io.Reader, flush bool) error {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return fmt.Errorf("write to client: %w", werr)
			}
			if flush {
				if ferr := rc.Flush(); ferr != nil && !errors.Is(ferr, http.ErrNotSupported) {
					return fmt.Errorf("flush to client: %w", ferr)
				}
			}
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return &upstreamBodyError{err: rerr}
		}
	}
}
