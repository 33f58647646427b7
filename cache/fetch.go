package cache

import (
	"context"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// flight is one upstream request that concurrent requests for the same
// URL wait for instead of making their own (request collapsing).
type flight struct {
	key  string
	done chan struct{}
	once sync.Once
	e    *entry // the stored response, nil when there is none to share
}

// join returns the flight for key and whether the caller leads it. A
// caller that may not lead (lead=false) gets nil when no flight exists.
func (st *state) join(key string, lead bool) (*flight, bool) {
	st.flightMu.Lock()
	defer st.flightMu.Unlock()
	if f := st.flights[key]; f != nil {
		return f, false
	}
	if !lead {
		return nil, false
	}
	f := &flight{key: key, done: make(chan struct{})}
	st.flights[key] = f
	return f, true
}

// finish releases a flight's waiters, once. e is what they may use.
func (st *state) finish(f *flight, e *entry) {
	f.once.Do(func() {
		f.e = e
		st.flightMu.Lock()
		if st.flights[f.key] == f {
			delete(st.flights, f.key)
		}
		st.flightMu.Unlock()
		close(f.done)
	})
}

// wait waits, boundedly, for a flight's result.
func (st *state) wait(f *flight, r *http.Request) *entry {
	st.waiting.Add(1)
	defer st.waiting.Add(-1)
	t := time.NewTimer(st.collapseWait)
	defer t.Stop()
	select {
	case <-f.done:
		return f.e
	case <-t.C:
	case <-r.Context().Done():
	}
	return nil
}

// usable reports whether a response another request brought can answer
// r: same variant, and fresh enough for r's directives.
func (st *state) usable(e *entry, r *http.Request, primary string, rc *reqCC) (time.Duration, bool) {
	if e == nil || e.node || preconditioned(r.Header) {
		return 0, false
	}
	if len(e.vary) > 0 {
		if string(appendVaryKey([]byte(primary), e.vary, r.Header)) != e.key {
			return 0, false
		}
	} else if e.key != primary {
		return 0, false
	}
	age := e.currentAge(st.now())
	return age, decide(e, rc, age) == vFresh
}

// miss handles a GET or HEAD that no stored response could answer
// alone: old is the stored response that needs validation, if any.
func (st *state) miss(w http.ResponseWriter, r *http.Request, next http.Handler, rc *reqCC, primary string, old *entry, reason string) {
	if rc.onlyIfCached {
		// RFC 9111 §5.2.1.7.
		h := w.Header()
		h["Cache-Status"] = []string{st.name + "; detail=only-if-cached"}
		h["Content-Type"] = []string{"text/plain; charset=utf-8"}
		w.WriteHeader(http.StatusGatewayTimeout)
		_, _ = io.WriteString(w, "only-if-cached: no stored response\n")
		return
	}
	// Only a plain GET may fetch for others and fill the store: a range,
	// a precondition or no-store would bring something else.
	lead := r.Method == http.MethodGet && !rc.noStore && len(r.Header["Range"]) == 0 &&
		len(r.Header["If-Range"]) == 0 && !preconditioned(r.Header)
	fe := &fetcher{st: st, next: next, r: r, rc: *rc, primary: primary, old: old, reason: reason, store: lead}
	// A single-range GET for a URL with nothing stored may keep its 206
	// as partial content, for later ranges inside it (RFC 9111 §3.3).
	fe.part = old == nil && partCandidate(r, rc)
	// A request with no-cache must see the origin's answer to a request
	// made after it, so it never waits for another.
	if !rc.noCache {
		f, leader := st.join(primary, lead)
		if f != nil && !leader {
			if e := st.wait(f, r); e != nil {
				if age, ok := st.usable(e, r, primary, rc); ok {
					st.m.hits.Inc()
					st.m.collapsed.Inc()
					st.writeEntry(w, r, e, age, []string{st.name + "; fwd=" + reason + "; collapsed"})
					return
				}
			}
			if r.Context().Err() != nil {
				return
			}
			fe.collapsedFail = true
		} else {
			fe.flight = f
		}
	}
	fe.run(w)
}

// fetcher carries one upstream exchange.
type fetcher struct {
	st            *state
	next          http.Handler
	r             *http.Request
	rc            reqCC
	primary       string
	old           *entry // stored response being validated, or nil
	reason        string // Cache-Status fwd value
	flight        *flight
	store         bool // the response may be stored
	part          bool // a 206 to this single-range request may be stored as partial content
	collapsedFail bool
	background    bool
}

type fwMode int

const (
	modeStream      fwMode = iota // the response goes to the client, maybe into the store too
	modeNotModified               // a 304 to meshd's conditional request, absorbed
	modeStaleError                // an error the stored response stands in for (RFC 9111 §4.2.4, RFC 5861 §4)
	modeHead                      // a 200 to HEAD, held back to update the stored GET response (RFC 9111 §4.3.5)
)

// run forwards the request and answers the client (w nil: background
// refresh, nobody to answer).
func (fe *fetcher) run(w http.ResponseWriter) {
	st := fe.st
	defer func() {
		if fe.flight != nil {
			st.finish(fe.flight, nil)
		}
	}()
	conditional := fe.old != nil && fe.old.hasValidator()
	for attempt := 0; ; attempt++ {
		if conditional {
			st.m.revalidations.Inc()
		} else {
			st.m.misses.Inc()
		}
		fw := &fillWriter{fe: fe, client: w, hdr: make(http.Header), conditional: conditional, mark: st.markNow()}
		fw.stripped = fe.store || conditional
		reqTime := st.now()
		fe.next.ServeHTTP(fw, fe.upstreamRequest(conditional, fw.stripped))
		fw.end()
		switch fw.mode {
		case modeNotModified:
			st.m.notModified.Inc()
			e, stored, ok := fe.refreshed(fw, reqTime)
			if !ok {
				if attempt == 0 {
					// The 304 names another representation (RFC 9111
					// §4.3.4): ask again without conditions.
					conditional = false
					continue
				}
				if w != nil {
					copyHeader(w.Header(), fw.hdr)
					w.WriteHeader(http.StatusNotModified)
				}
				return
			}
			st.settle()
			if fe.flight != nil {
				st.finish(fe.flight, e)
			}
			if w != nil {
				status := st.name + "; fwd=" + fe.reason + "; fwd-status=304"
				if fe.collapsedFail {
					status += "; collapsed=?0"
				}
				if stored {
					status += "; stored"
				}
				st.writeEntry(w, fe.r, e, e.currentAge(st.now()), []string{status})
			}
			return
		case modeHead:
			if e, stored := fe.headUpdated(fw, reqTime); e != nil {
				st.settle()
				if w != nil {
					status := st.name + "; fwd=" + fe.reason + "; fwd-status=200"
					if stored {
						status += "; stored"
					}
					st.writeEntry(w, fe.r, e, e.currentAge(st.now()), []string{status})
				}
				return
			}
			fw.mode = modeStream
			fw.relayHeader(fw.status)
			return
		case modeStaleError:
			st.m.staleServed.Inc()
			if w != nil {
				status := st.name + "; fwd=" + fe.reason + "; fwd-status=" + strconv.Itoa(fw.status) + "; detail=" + fw.detail
				st.writeEntry(w, fe.r, fe.old, fe.old.currentAge(st.now()), []string{status})
			}
			return
		}
		e := fw.storeResult(reqTime)
		if e != nil {
			// Make the entry visible before this exchange ends, so that
			// the client's next request (and anyone arriving after the
			// waiters are released) finds it: ristretto's Set is
			// asynchronous.
			st.settle()
		}
		if fe.flight != nil {
			st.finish(fe.flight, e)
		}
		if e == nil && fe.store && fe.old != nil && fw.status < 500 && !fe.background {
			// A newer full response replaced the stored one but cannot
			// be stored itself: the old one must not be served again.
			// (Only for requests that could have stored it: a client's
			// no-store or Range must not evict what others use.)
			st.release(fe.old)
			st.del(fe.old.key)
		}
		return
	}
}

// upstreamRequest returns the request to forward: the client's own, or a
// copy without its conditionals (meshd evaluates those itself when it may
// store the response) and with the stored response's validators
// (RFC 9111 §4.3.1).
func (fe *fetcher) upstreamRequest(conditional, strip bool) *http.Request {
	if !conditional && !strip {
		return fe.r
	}
	r2 := fe.r.WithContext(fe.r.Context())
	r2.Header = fe.r.Header.Clone()
	if r2.Header == nil {
		r2.Header = make(http.Header)
	}
	delete(r2.Header, "If-None-Match")
	delete(r2.Header, "If-Modified-Since")
	// Announce the device token that Surrogate-Control directives may
	// name to reach this cache (W3C Edge Architecture §2).
	r2.Header["Surrogate-Capability"] = append(r2.Header["Surrogate-Capability"], fe.st.name+`="Surrogate/1.0"`)
	if conditional {
		if fe.old.etag != "" {
			r2.Header["If-None-Match"] = []string{fe.old.etag}
		}
		if fe.old.hasLM {
			r2.Header["If-Modified-Since"] = []string{fe.old.lmRaw}
		}
	}
	return r2
}

// staleOnError reports whether the stored response may answer instead of
// an error, and the Cache-Status detail to say why:
//
//   - "disconnected": a proxy on the way answered the error itself (see
//     originUnreached), so the cache is disconnected from the origin and
//     may serve stale (RFC 9111 §4.2.4), for as long as it keeps the
//     entry, unless no-cache forbids reuse without validation;
//   - "stale-if-error": the origin answered 500, 502, 503 or 504 within
//     a stale-if-error window (RFC 5861 §4).
//
// Never past must-revalidate, proxy-revalidate or s-maxage (RFC 9111
// §4.2.4), nor for a request with no-cache, which asked for the origin's
// answer.
func (fe *fetcher) staleOnError(code int, h http.Header, now time.Time) (bool, string) {
	old := fe.old
	if code < 500 || old == nil || fe.background || old.noStale() || fe.rc.noCache {
		return false, ""
	}
	if originUnreached(code, h) {
		return !old.cc.noCache, "disconnected"
	}
	switch code {
	case 500, 502, 503, 504:
	default:
		return false, ""
	}
	staleness := old.currentAge(now) - old.lifetime
	ok := (old.cc.sie != absent && staleness <= secs(old.cc.sie)) ||
		(fe.rc.staleIfError != absent && staleness <= secs(fe.rc.staleIfError))
	return ok, "stale-if-error"
}

// refreshed builds the stored response updated by a 304 (RFC 9111
// §4.3.4, §3.2) and stores it when it still may be. ok is false when the
// 304 is for a different representation.
func (fe *fetcher) refreshed(fw *fillWriter, reqTime time.Time) (e *entry, stored, ok bool) {
	if et := firstValue(fw.hdr["Etag"]); et != "" && (fe.old.etag == "" || !etagEqual(et, fe.old.etag, false)) {
		return nil, false, false
	}
	e, stored = fe.update(fw, reqTime)
	return e, stored, true
}

// headUpdated applies a 200 response to a HEAD to the stored GET response
// it was forwarded for (RFC 9111 §4.3.5): when the validators and
// Content-Length it carries match the stored response, the stored header
// fields are updated as a 304 would, and the result is returned. When
// they do not, the stored response describes another representation and
// is invalidated; e is nil then.
func (fe *fetcher) headUpdated(fw *fillWriter, reqTime time.Time) (e *entry, stored bool) {
	old := fe.old
	if !sameRepresentation(old, fw.hdr) {
		fe.st.release(old)
		fe.st.del(old.key)
		return nil, false
	}
	return fe.update(fw, reqTime)
}

// sameRepresentation reports whether a HEAD response's ETag,
// Last-Modified and Content-Length, each when present, match a stored
// 200 response (RFC 9111 §4.3.5).
func sameRepresentation(old *entry, h http.Header) bool {
	if old.status != http.StatusOK {
		return false
	}
	if et, ok := h["Etag"]; ok && (len(et) != 1 || et[0] != old.etag) {
		return false
	}
	if lm, ok := h["Last-Modified"]; ok {
		t, err := parseHTTPDate(firstValue(lm))
		if len(lm) != 1 || err != nil || !old.hasLM || !t.Equal(old.lastMod) {
			return false
		}
	}
	if cl, ok := h["Content-Length"]; ok {
		n, valid := parseDigits(firstValue(cl))
		if len(cl) != 1 || !valid || n != int64(len(old.body)) {
			return false
		}
	}
	return true
}

// update builds the stored response with the header fields of a 304 or
// of a 200 to HEAD merged in (RFC 9111 §3.2), and stores it when it
// still may be stored; otherwise the old one is removed.
func (fe *fetcher) update(fw *fillWriter, reqTime time.Time) (e *entry, stored bool) {
	st, old := fe.st, fe.old
	merged := old.header.Clone()
	for k, v := range fw.hdr {
		switch k {
		case "Content-Length", "Content-Range": // RFC 9111 §3.2
			continue
		}
		merged[k] = v
	}
	if _, ok := fw.hdr["Date"]; !ok {
		// A response without Date: the time it was received stands in
		// (RFC 9110 §6.6.1), not the old response's Date.
		merged["Date"] = []string{fw.respTime.UTC().Format(http.TimeFormat)}
	}
	sh := st.requestSharing(fe.r)
	e = newEntry(entryParams{
		key: old.key, primary: old.primary, vary: old.vary, status: old.status,
		header: merged, body: old.body, reqTime: reqTime, respTime: fw.respTime,
		tags: old.tags, maxHeuristic: st.maxHeuristic, keepStale: st.keepStale, device: st.name,
		credentialed: old.noHeuristic || sh.credentialed(),
	})
	names, star := parseVary(merged["Vary"])
	if ok, _ := storable(old.status, e.cc, merged, fe.rc, sh); ok && !star && slices.Equal(names, old.vary) && st.unchanged(fw.mark, fe.primary) {
		stored = st.set(e)
	} else {
		st.release(old)
		st.del(old.key)
	}
	return e, stored
}

// storeResult stores the streamed response when it was complete and
// storable, and returns its entry.
func (fw *fillWriter) storeResult(reqTime time.Time) *entry {
	fe := fw.fe
	st := fe.st
	if !fw.tee || fw.failed || !st.unchanged(fw.mark, fe.primary) {
		return nil
	}
	if cl := fw.hdr["Content-Length"]; len(cl) == 1 {
		if n, ok := parseDigits(cl[0]); !ok || n != int64(len(fw.buf)) {
			return nil // truncated
		}
	}
	for k := range fw.hdr {
		if strings.HasPrefix(k, http.TrailerPrefix) {
			return nil
		}
	}
	if fw.status == http.StatusPartialContent {
		e := newEntry(entryParams{
			key: fe.primary + partSuffix, primary: fe.primary, status: fw.status, header: fw.hdr, body: fw.buf,
			reqTime: reqTime, respTime: fw.respTime, maxHeuristic: st.maxHeuristic, keepStale: st.keepStale,
			device: st.name, partStart: fw.partStart, partTotal: fw.partTotal,
			credentialed: st.requestSharing(fe.r).credentialed(),
		})
		st.set(e)
		return e
	}
	return st.storeResponse(fe.r, fe.primary, fw.status, fw.hdr, fw.buf, reqTime, fw.respTime)
}

// partSuffix follows the primary key of partial content: after the
// primary key a Vary variant's key has a 0 and then 0 or 1, never 'p'.
const partSuffix = "\x00p"

// partCandidate reports whether a request may be answered from, and its
// response stored as, partial content: a GET with one Range field and
// nothing conditional.
func partCandidate(r *http.Request, rc *reqCC) bool {
	return r.Method == http.MethodGet && len(r.Header["Range"]) == 1 && len(r.Header["If-Range"]) == 0 &&
		!preconditioned(r.Header) && len(r.Header["If-None-Match"]) == 0 && len(r.Header["If-Modified-Since"]) == 0 &&
		!rc.noStore && !rc.noCache
}

// storeResponse builds the entry of a response and stores it, with the
// Vary node its URL needs.
func (st *state) storeResponse(r *http.Request, primary string, status int, hdr http.Header, body []byte, reqTime, respTime time.Time) *entry {
	names, _ := parseVary(hdr["Vary"])
	key := primary
	if len(names) > 0 {
		key = string(appendVaryKey([]byte(primary), names, r.Header))
	}
	e := newEntry(entryParams{
		key: key, primary: primary, vary: names, status: status, header: hdr, body: body,
		reqTime: reqTime, respTime: respTime, maxHeuristic: st.maxHeuristic, keepStale: st.keepStale, device: st.name,
		credentialed: st.requestSharing(r).credentialed(),
	})
	if len(names) > 0 {
		st.ensureNode(primary, names, e.until)
	}
	st.set(e)
	return e
}

// ensureNode stores the Vary node of a URL unless one with the same names
// that lives at least as long is there.
func (st *state) ensureNode(primary string, names []string, until time.Time) {
	var cur *entry
	if l, ok := st.acquire(); ok {
		cur = st.get([]byte(primary))
		l.n.Add(-1)
	}
	if cur != nil && cur.node && slices.Equal(cur.vary, names) {
		if !cur.until.Before(until) {
			return
		}
	}
	n := &entry{key: primary, primary: primary, node: true, vary: names, until: until}
	n.cost = int64(2*len(primary)) + 256
	for _, v := range names {
		n.cost += int64(len(v)) + 16
	}
	st.set(n)
}

// refreshInBackground revalidates a stale response for
// stale-while-revalidate (RFC 5861 §3), once per URL at a time.
func (st *state) refreshInBackground(r *http.Request, next http.Handler, old *entry, primary string) {
	f, lead := st.join(primary, true)
	if !lead {
		return
	}
	st.bgMu.Lock()
	if st.closing.Load() {
		st.bgMu.Unlock()
		st.finish(f, nil)
		return
	}
	st.wg.Add(1)
	st.bgMu.Unlock()
	ctx, cancel := context.WithTimeout(st.ctx, st.refreshTimeout)
	r2 := r.Clone(ctx)
	r2.Method = http.MethodGet
	for _, h := range [...]string{"Range", "If-Range", "If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since"} {
		delete(r2.Header, h)
	}
	fe := &fetcher{
		st: st, next: next, r: r2, primary: primary, old: old, reason: "stale", flight: f, store: true, background: true,
		rc: reqCC{maxAge: absent, maxStale: absent, minFresh: absent, staleIfError: absent},
	}
	go func() {
		defer st.wg.Done()
		defer cancel()
		defer func() {
			// A handler may abort with a panic (http.ErrAbortHandler);
			// in a background goroutine that must not end the process.
			if v := recover(); v != nil {
				st.finish(f, nil)
				st.log.Warn("cache: background revalidation aborted", "url", primary, "panic", v)
			}
		}()
		fe.run(nil)
	}()
}

// fillWriter is the ResponseWriter the wrapped handler writes to on a
// miss or revalidation. At WriteHeader it decides: absorb a 304 or an
// error that the stored response answers, or stream the response to the
// client while copying it, up to MaxObject, into the store.
type fillWriter struct {
	fe          *fetcher
	client      http.ResponseWriter // nil for background refreshes
	hdr         http.Header
	conditional bool   // meshd sent the stored response's validators
	stripped    bool   // the client's conditionals were removed upstream
	mark        mark   // the store's state when the fetch started
	detail      string // why a stale response stands in for an error
	wrote       bool
	status      int
	mode        fwMode
	sink        bool // the body goes to the client
	tee         bool // the body goes into buf
	failed      bool
	buf         []byte
	respTime    time.Time
	partStart   int64 // of a 206 being stored
	partTotal   int64
}

var _ http.Flusher = (*fillWriter)(nil)

func (fw *fillWriter) Header() http.Header { return fw.hdr }

func (fw *fillWriter) WriteHeader(code int) {
	if fw.wrote || code < 200 {
		// 1xx responses are not relayed: the cache answers with one
		// final response.
		return
	}
	fe := fw.fe
	st := fe.st
	fw.wrote = true
	fw.status = code
	fw.respTime = st.now()
	if fw.conditional && code == http.StatusNotModified {
		fw.mode = modeNotModified
		return
	}
	if ok, detail := fe.staleOnError(code, fw.hdr, fw.respTime); ok {
		fw.mode, fw.detail = modeStaleError, detail
		return
	}
	if code == http.StatusOK && fe.r.Method == http.MethodHead && fe.old != nil && !fe.background {
		fw.mode = modeHead
		return
	}
	if fe.store && st.unchanged(fw.mark, fe.primary) && !originUnreached(code, fw.hdr) {
		cc := responseCC(fw.hdr, st.name)
		ok, _ := storable(code, cc, fw.hdr, fe.rc, st.requestSharing(fe.r))
		if ok && len(fw.hdr["Content-Length"]) == 1 {
			n, valid := parseDigits(fw.hdr["Content-Length"][0])
			if !valid || n > st.maxObject {
				ok = false
			} else {
				fw.buf = make([]byte, 0, n)
			}
		}
		fw.tee = ok
	}
	if fe.part && code == http.StatusPartialContent && st.unchanged(fw.mark, fe.primary) {
		start, end, total, ok := storablePart(responseCC(fw.hdr, st.name), fw.hdr, fe.rc, st.requestSharing(fe.r))
		if n := end - start + 1; ok && n <= st.maxObject {
			fw.buf = make([]byte, 0, n)
			fw.tee, fw.partStart, fw.partTotal = true, start, total
		}
	}
	if !fw.tee && fe.flight != nil {
		// Nothing to share: release the waiters now, not after the body.
		st.finish(fe.flight, nil)
	}
	fw.relayHeader(code)
}

// relayHeader sends the upstream response's header to the client, or a
// 304 when the client's own conditions match it.
func (fw *fillWriter) relayHeader(code int) {
	fe := fw.fe
	st := fe.st
	if fw.client == nil {
		return
	}
	status := st.name + "; fwd=" + fe.reason
	if fe.collapsedFail {
		status += "; collapsed=?0"
	}
	if fw.tee {
		status += "; stored"
	}
	dst := fw.client.Header()
	if code == http.StatusOK && fw.stripped && (len(fe.r.Header["If-None-Match"]) > 0 || len(fe.r.Header["If-Modified-Since"]) > 0) {
		lm, lmErr := parseHTTPDate(firstValue(fw.hdr["Last-Modified"]))
		date, _ := parseHTTPDate(firstValue(fw.hdr["Date"]))
		if condMatches(fe.r.Header, firstValue(fw.hdr["Etag"]), lm, lmErr == nil, date) {
			for k, v := range fw.hdr {
				if in304(k, fw.hdr) {
					dst[k] = v
				}
			}
			dst["Cache-Status"] = append(slices.Clip(fw.hdr["Cache-Status"]), status+"; fwd-status=200")
			fw.client.WriteHeader(http.StatusNotModified)
			return
		}
	}
	copyHeader(dst, fw.hdr)
	dst["Cache-Status"] = append(slices.Clip(fw.hdr["Cache-Status"]), status)
	fw.client.WriteHeader(code)
	fw.sink = true
}

// copyHeader copies the upstream header for the client, without the
// purge tags (they are meshd's, not the client's).
func copyHeader(dst, src http.Header) {
	for k, v := range src {
		switch k {
		case "Cache-Tag", "Surrogate-Key":
			continue
		}
		dst[k] = v
	}
}

func (fw *fillWriter) Write(p []byte) (int, error) {
	if !fw.wrote {
		fw.WriteHeader(http.StatusOK)
	}
	if fw.mode != modeStream {
		return len(p), nil
	}
	if fw.tee {
		if int64(len(fw.buf)+len(p)) > fw.fe.st.maxObject {
			// Too large: stop copying and let it stream through.
			fw.tee, fw.buf = false, nil
			if fw.fe.flight != nil {
				fw.fe.st.finish(fw.fe.flight, nil)
			}
		} else {
			fw.buf = append(fw.buf, p...)
		}
	}
	if !fw.sink {
		return len(p), nil
	}
	n, err := fw.client.Write(p)
	if err != nil {
		fw.failed = true
	}
	return n, err
}

func (fw *fillWriter) Flush() {
	if !fw.wrote {
		fw.WriteHeader(http.StatusOK)
	}
	if fw.sink {
		if f, ok := fw.client.(http.Flusher); ok {
			f.Flush()
		}
	}
}

// Unwrap gives http.ResponseController access to the client's writer.
func (fw *fillWriter) Unwrap() http.ResponseWriter { return fw.client }

// end completes a response the handler left without a status.
func (fw *fillWriter) end() {
	if !fw.wrote {
		fw.WriteHeader(http.StatusOK)
	}
}
