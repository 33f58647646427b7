package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// firstByteTimeout is the failure of an attempt that got no response
// header within CallPolicy.FirstByteTimeout. It is a net.Error with
// Timeout() true, so classify answers 504 and Proxy-Status says
// http_response_timeout.
type firstByteTimeout struct{}

func (firstByteTimeout) Error() string {
	return "proxy: no response header within the first-byte timeout"
}
func (firstByteTimeout) Timeout() bool   { return true }
func (firstByteTimeout) Temporary() bool { return true }

var errFirstByteTimeout error = firstByteTimeout{}

// isRefusedStream reports an HTTP/2 stream the upstream refused before
// processing it (RST_STREAM REFUSED_STREAM, RFC 9113 §8.7). net/http's
// HTTP/2 client returns its own unexported StreamError, whose text names
// the code; errors.Is would need x/net's type, which proxy does not import.
func isRefusedStream(err error) bool {
	return err != nil && strings.Contains(err.Error(), "REFUSED_STREAM")
}

// serveWithPolicy is ServeHTTP's forwarding loop under a CallPolicy. The
// loop without one is ServeHTTP's own and stays as it is.
func (h *Handler) serveWithPolicy(w http.ResponseWriter, r *http.Request, c *handlerConfig, o *outgoing, ups []*Upstream, p *CallPolicy, start time.Time, debug bool) {
	if err := p.Validate(); err != nil {
		h.failures.Add(1)
		c.logger.Error("proxy: call policy invalid", "err", err)
		writeError(w, http.StatusInternalServerError, "meshd: proxy misconfigured")
		return
	}
	now := time.Now()
	ctx := r.Context()
	var deadline time.Time
	if p.TotalTimeout > 0 {
		deadline = now.Add(p.TotalTimeout)
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, deadline)
		defer cancel()
	}
	var cancelIdle context.CancelCauseFunc
	if p.IdleTimeout > 0 {
		ctx, cancelIdle = context.WithCancelCause(ctx)
		defer cancelIdle(nil)
	}
	if p.ConnectTimeout > 0 {
		ctx = context.WithValue(ctx, connectTimeoutKey{}, &p.ConnectTimeout)
	}
	if ctx != r.Context() {
		o.req = *o.req.WithContext(ctx)
	}
	if err := h.bufferBody(o, r, p); err != nil {
		h.fail(w, r, c, o, nil, 0, err)
		return
	}
	defer func() {
		if o.cancel != nil {
			o.cancel(nil)
		}
	}()
	p.Budget.record(now)

	// Waiting for the upstream: cancel the exchange if the client leaves.
	watchClient(r.Context())

	maxAttempts := p.Attempts
	if maxAttempts == 0 {
		maxAttempts = c.maxAttempts
	}
	on := p.retryOn()
	outlier := p.outlier()
	var (
		resp     *http.Response
		u        *Upstream
		attempts int
		retries  int // retries after a failure (not moves after admission refusals)
		err      error
	)
	for i, cand := range ups {
		if attempts == maxAttempts {
			break
		}
		if cand == nil {
			continue
		}
		if isOverloaded(err) && !h.Pool.HasFreeSlot(cand, &o.req) {
			continue // as in ServeHTTP
		}
		if attempts > 0 {
			h.retries.Add(1)
		}
		attempts++
		u = cand
		u.inflight.Add(1)
		sent := time.Now()
		resp, err = h.attempt(ctx, o, u, p)
		now := time.Now()
		if err != nil {
			u.inflight.Add(-1)
			if !isOverloaded(err) && r.Context().Err() == nil {
				// Connect failures and timeouts are the upstream's
				// failures; other errors (a reset after the request
				// was sent) say it was reached, as without a policy.
				failed := isDialError(err) || isTimeout(err)
				if !failed {
					u.reached(true)
				}
				u.outlierResult(!failed, outlier, ups, now)
			}
		} else {
			retrySignal := resp.Header[HeaderRetry] != nil
			if retrySignal && !h.TrustRetry {
				delete(resp.Header, HeaderRetry) // as in ServeHTTP
				retrySignal = false
			}
			switch code := resp.StatusCode; {
			case retrySignal, code == http.StatusBadGateway, code == http.StatusServiceUnavailable, code == http.StatusGatewayTimeout:
				// A failure the upstream answered fast must not look
				// like a fast answer to the balancer (observe), and
				// counts toward its ejection.
				u.outlierResult(false, outlier, ups, now)
			default:
				u.reached(true)
				u.outlierResult(true, outlier, ups, now)
				u.observe(now.Sub(sent), now)
			}
			if retrySignal {
				if attempts == maxAttempts || !hasCandidate(ups[i+1:]) || !retryable(r, o, errRetrySignal) {
					break // its answer is the best there is
				}
				u.inflight.Add(-1)
				discard(resp)
				resp, err = nil, errRetrySignal
			}
		}
		if err != nil && isOverloaded(err) && r.Context().Err() == nil {
			continue // nothing was sent: the next candidate with a free slot (see ServeHTTP)
		}
		if attempts == maxAttempts || !hasCandidate(ups[i+1:]) || r.Context().Err() != nil || ctx.Err() != nil {
			break
		}
		var atLeast time.Duration
		if err == nil {
			ok, wait := retryStatus(resp, on, o, p, deadline, now)
			if !ok {
				break
			}
			atLeast = wait
		} else if !retryError(r, o, on, err) {
			break
		}
		if !h.waitRetry(ctx, p, retries+1, atLeast, deadline, now) {
			break
		}
		retries++
		if resp != nil {
			u.inflight.Add(-1)
			discard(resp)
			resp = nil
			c.logger.Debug("proxy: retrying an answer on the next candidate",
				"upstream", u.name(), "addr", u.Addr, "attempt", attempts)
		} else {
			c.logger.Debug("proxy: attempt failed, trying next candidate",
				"upstream", u.name(), "addr", u.Addr, "attempt", attempts, "err", err)
		}
		err = nil
	}
	if resp == nil && err == nil {
		err = errNoUpstream // every candidate was nil
	}
	if err != nil {
		h.fail(w, r, c, o, u, attempts, err)
		return
	}

	if cancelIdle != nil {
		stop := watchIdle(resp, p.IdleTimeout, cancelIdle)
		defer stop()
	}
	h.forward(w, r, c, o, u, resp, attempts, start, debug)
}

// retryStatus decides whether an answer is discarded for a retry: its
// status is in on, the request can be sent again in full, and the
// upstream's Retry-After (on a 503 or 429) asks for no longer a wait than
// the policy allows; wait is the least time to wait before the retry.
func retryStatus(resp *http.Response, on RetryOn, o *outgoing, p *CallPolicy, deadline, now time.Time) (ok bool, wait time.Duration) {
	var cond RetryOn
	switch resp.StatusCode {
	case http.StatusBadGateway:
		cond = Retry502
	case http.StatusServiceUnavailable:
		cond = Retry503
	case http.StatusGatewayTimeout:
		cond = Retry504
	}
	if on&cond == 0 || !o.replayable {
		// Without the whole body at hand the upstream may have read
		// part of it, and Go's transport may still be sending it.
		return false, 0
	}
	if resp.StatusCode == http.StatusServiceUnavailable || resp.StatusCode == http.StatusTooManyRequests {
		if ra, ok := retryAfter(resp.Header, now); ok {
			limit := p.maxWait()
			if !deadline.IsZero() {
				limit = deadline.Sub(now)
			}
			if ra > limit {
				// The service asks for more patience than this request
				// has: its answer is the client's to act on (RFC 9110
				// §10.2.3), not a reason to spread the load elsewhere.
				return false, 0
			}
			wait = ra
		}
	}
	return true, wait
}

// retryError decides whether a failed attempt is retried under on.
func retryError(r *http.Request, o *outgoing, on RetryOn, err error) bool {
	switch {
	case r.Context().Err() != nil:
		return false
	case isDialError(err):
		return on&RetryConnectFailure != 0
	case err == errRetrySignal:
		return retryable(r, o, err)
	case errors.Is(err, errFirstByteTimeout):
		// Idempotent only: a slow upstream may yet act on it (RFC 9110
		// §9.2.2).
		return on&RetryTimeout != 0 && isIdempotent(r.Method) && o.replayable
	case isTimeout(err):
		return false // the total timeout, or the pool's own
	case isRefusedStream(err):
		// Unprocessed by the upstream (RFC 9113 §8.7), but part of a
		// streamed body may have been read.
		return on&RetryRefusedStream != 0 && (o.replayable || !o.body.read.Load())
	}
	return retryable(r, o, err)
}

// waitRetry takes a retry's token from the budget and waits the back-off
// (at least atLeast); it reports false, and the retry is not made, when
// the budget refuses it, the wait would pass the deadline or the exchange
// is cancelled while waiting.
func (h *Handler) waitRetry(ctx context.Context, p *CallPolicy, n int, atLeast time.Duration, deadline, now time.Time) bool {
	d := max(p.backoff(n), atLeast)
	if !deadline.IsZero() && !now.Add(d).Before(deadline) {
		return false
	}
	if !p.Budget.withdraw(now) {
		h.retriesBudgeted.Add(1)
		return false
	}
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// attempt sends the request to u once: with the replayed body when there
// is one, and bounded by p.FirstByteTimeout until the response header.
// The context of the attempt that answers stays alive for its body;
// serveWithPolicy cancels it at the end (o.cancel).
func (h *Handler) attempt(ctx context.Context, o *outgoing, u *Upstream, p *CallPolicy) (*http.Response, error) {
	if o.replay != nil {
		o.req.Body = io.NopCloser(bytes.NewReader(o.replay))
	}
	if o.cancel != nil {
		o.cancel(nil) // the previous attempt's
		o.cancel = nil
	}
	if p.FirstByteTimeout <= 0 {
		return h.Pool.RoundTrip(u, &o.req)
	}
	actx, cancel := context.WithCancelCause(ctx)
	t := time.AfterFunc(p.FirstByteTimeout, func() { cancel(errFirstByteTimeout) })
	resp, err := h.Pool.RoundTrip(u, o.req.WithContext(actx))
	stopped := t.Stop()
	if err == nil && !stopped && context.Cause(actx) == errFirstByteTimeout {
		// The timer fired as the header arrived: the body would fail.
		discard(resp)
		resp, err = nil, errFirstByteTimeout
	}
	if err != nil {
		if context.Cause(actx) == errFirstByteTimeout && ctx.Err() == nil {
			err = errFirstByteTimeout
		}
		cancel(nil)
		return nil, err
	}
	o.cancel = cancel
	return resp, nil
}

// bufferBody reads a request body of at most p.ReplayBody bytes in full,
// so that every attempt can send it (o.replayable). A larger body of
// unknown length is streamed with what was read put back in front.
func (h *Handler) bufferBody(o *outgoing, r *http.Request, p *CallPolicy) error {
	if o.req.Body == nil {
		o.replayable = true
		return nil
	}
	if p.ReplayBody <= 0 || r.Trailer != nil || r.ContentLength > p.ReplayBody {
		return nil
	}
	var buf []byte
	if r.ContentLength > 0 {
		buf = make([]byte, r.ContentLength)
		if _, err := io.ReadFull(r.Body, buf); err != nil {
			return &requestBodyError{err: err}
		}
	} else {
		var err error
		buf, err = io.ReadAll(io.LimitReader(r.Body, p.ReplayBody+1))
		if err != nil {
			return &requestBodyError{err: err}
		}
		if int64(len(buf)) > p.ReplayBody {
			// Too long to keep: stream it, the part read first.
			o.body.rc = readCloser{io.MultiReader(bytes.NewReader(buf), r.Body), r.Body}
			return nil
		}
	}
	o.replay = buf
	o.replayable = true
	o.req.ContentLength = int64(len(buf))
	o.req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf)), nil }
	if len(buf) == 0 {
		o.req.Body, o.req.GetBody = nil, nil
		o.replay = nil
	}
	return nil
}

// readCloser reads from one reader and closes another.
type readCloser struct {
	io.Reader
	io.Closer
}

// errIdleTimeout cancels a response whose body stalled (CallPolicy.IdleTimeout).
var errIdleTimeout = errors.New("proxy: the upstream's response body moved no byte for the idle timeout")

// idleBody notes when the upstream's body last moved.
type idleBody struct {
	io.ReadCloser
	last atomic.Int64 // UnixNano of the last read that returned bytes
}

func (b *idleBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		b.last.Store(time.Now().UnixNano())
	}
	return n, err
}

// watchIdle wraps resp's body so that cancel ends the exchange once the
// body has not moved for idle: one timer per response, re-armed for what
// is left of the idle time when it fires after progress, never reset per
// read. It returns the function that stops the watch.
func watchIdle(resp *http.Response, idle time.Duration, cancel context.CancelCauseFunc) (stop func()) {
	b := &idleBody{ReadCloser: resp.Body}
	b.last.Store(time.Now().UnixNano())
	resp.Body = b
	var t *time.Timer
	var mu sync.Mutex
	check := func() {
		mu.Lock()
		defer mu.Unlock()
		since := time.Duration(time.Now().UnixNano() - b.last.Load())
		if since >= idle {
			cancel(errIdleTimeout)
			return
		}
		t.Reset(idle - since)
	}
	mu.Lock()
	t = time.AfterFunc(idle, check)
	mu.Unlock()
	return func() { t.Stop() }
}
