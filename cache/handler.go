package cache

import (
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Middleware wraps next with the cache. Before Start and after Close the
// returned handler passes every request straight to next.
func (s *Store) Middleware(next http.Handler) http.Handler {
	return &handler{s: s, next: next}
}

type handler struct {
	s    *Store
	next http.Handler
}

var _ http.Handler = (*handler)(nil)

// keyPool holds key buffers so that a hit builds its key without
// allocating.
var keyPool = sync.Pool{New: func() any { b := make([]byte, 0, 256); return &b }}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	st := h.s.st.Load()
	if st == nil || st.closing.Load() {
		h.next.ServeHTTP(w, r)
		return
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead:
	case http.MethodOptions, http.MethodTrace:
		st.pass(w, r, h.next, "method", false)
		return
	case http.MethodConnect:
		h.next.ServeHTTP(w, r)
		return
	default:
		// Unsafe, or of unknown safety: invalidates (RFC 9111 §4.4).
		st.pass(w, r, h.next, "method", true)
		return
	}
	if len(r.Header["Upgrade"]) > 0 {
		// Protocol switches (WebSocket) are tunnels, not responses.
		h.next.ServeHTTP(w, r)
		return
	}
	st.serve(w, r, h.next)
}

// verdict is what a stored response can do for a request.
type verdict int

const (
	vFresh    verdict = iota // serve it: a hit
	vStale                   // serve it stale: the request's max-stale allows
	vSWR                     // serve it stale and revalidate in the background
	vValidate                // forward, conditionally when it has validators
)

func secs(n int64) time.Duration { return time.Duration(n) * time.Second }

// decide applies RFC 9111 §4.2 and §5.2.1 and RFC 5861 §3 to a stored
// response of the given current age.
func decide(e *entry, rc *reqCC, age time.Duration) verdict {
	if rc.noCache || e.cc.noCache {
		return vValidate // RFC 9111 §5.2.1.4, §5.2.2.4
	}
	fresh := age < e.lifetime
	ageOK := rc.maxAge == absent || age <= secs(rc.maxAge)
	if fresh && ageOK && (rc.minFresh == absent || e.lifetime-age >= secs(rc.minFresh)) {
		return vFresh
	}
	if fresh || e.noStale() {
		return vValidate
	}
	staleness := age - e.lifetime
	if ageOK && (rc.maxStaleAny || (rc.maxStale != absent && staleness <= secs(rc.maxStale))) {
		return vStale // RFC 9111 §5.2.1.2
	}
	if e.cc.swr != absent && staleness < secs(e.cc.swr) && rc.maxAge == absent && rc.minFresh == absent {
		return vSWR
	}
	return vValidate
}

// serve handles GET and HEAD.
func (st *state) serve(w http.ResponseWriter, r *http.Request, next http.Handler) {
	rc := parseReqCC(r.Header["Cache-Control"], r.Header["Pragma"])
	bp := keyPool.Get().(*[]byte)
	key, ok := appendPrimaryKey((*bp)[:0], st.scheme(r), r)
	if !ok {
		*bp = key[:0]
		keyPool.Put(bp)
		st.pass(w, r, next, "bypass", false)
		return
	}
	plen := len(key)
	l, ok := st.acquire()
	if !ok {
		*bp = key[:0]
		keyPool.Put(bp)
		next.ServeHTTP(w, r)
		return
	}
	e := st.get(key)
	var node, part *entry
	if e != nil && e.node {
		node = e
		key = appendVaryKey(key, node.vary, r.Header)
		e = st.get(key)
	} else if e == nil && partCandidate(r, &rc) {
		part = st.get(append(key, partSuffix...))
	}
	l.n.Add(-1)

	if part != nil && st.writePart(w, r, part, &rc) {
		*bp = key[:0]
		keyPool.Put(bp)
		return
	}

	reason := "uri-miss"
	if e != nil {
		age := e.currentAge(st.now())
		v := decide(e, &rc, age)
		if v != vValidate && !preconditioned(r.Header) {
			var status []string
			switch v {
			case vFresh:
				st.m.hits.Inc()
				status = st.hitStatus
			case vStale:
				st.m.staleServed.Inc()
				status = []string{st.name + "; hit; ttl=" + strconv.FormatInt(-int64((age-e.lifetime)/time.Second), 10)}
			case vSWR:
				st.m.staleServed.Inc()
				st.refreshInBackground(r, next, e, string(key[:plen]))
				status = []string{st.name + "; hit; ttl=" + strconv.FormatInt(-int64((age-e.lifetime)/time.Second), 10) + "; detail=stale-while-revalidate"}
			}
			*bp = key[:0]
			keyPool.Put(bp)
			st.writeEntry(w, r, e, age, status)
			return
		}
		reason = "stale"
		if age < e.lifetime && !e.cc.noCache {
			reason = "request"
		}
	} else if node != nil {
		reason = "vary-miss"
	}
	primary := string(key[:plen])
	*bp = key[:0]
	keyPool.Put(bp)
	st.miss(w, r, next, &rc, primary, e, reason)
}

// writePart answers a single-range GET from stored partial content when
// the content is fresh for the request and holds the whole range; false
// leaves the request to the miss path.
func (st *state) writePart(w http.ResponseWriter, r *http.Request, e *entry, rc *reqCC) bool {
	age := e.currentAge(st.now())
	if decide(e, rc, age) != vFresh {
		return false
	}
	start, end, res := parseRange(r.Header["Range"][0], e.partTotal)
	if res != rangeOK || start < e.partStart || end >= e.partStart+int64(len(e.body)) {
		return false
	}
	st.m.hits.Inc()
	h := w.Header()
	setStored(w, h, e, age, st.hitStatus)
	writeRange(w, h, e, start, end, e.partTotal)
	return true
}

// preconditioned reports a request with preconditions that a stored
// response does not evaluate (RFC 9110 §13.1.1, §13.1.4): the origin
// decides those.
func preconditioned(h http.Header) bool {
	return len(h["If-Match"]) > 0 || len(h["If-Unmodified-Since"]) > 0
}

// writeEntry answers a request from a stored response: 304 for a
// matching conditional request (RFC 9111 §4.3.2), 206 for a single
// satisfiable range (RFC 9110 §14.2), HEAD without the body.
func (st *state) writeEntry(w http.ResponseWriter, r *http.Request, e *entry, age time.Duration, status []string) {
	h := w.Header()
	if notModified(r.Header, e) {
		for _, f := range e.fields304 {
			h[f.name] = f.values
		}
		h["Age"] = e.ageHeader(age)
		h["Cache-Status"] = status
		w.WriteHeader(http.StatusNotModified)
		return
	}
	setStored(w, h, e, age, status)
	if e.status == http.StatusOK && r.Method == http.MethodGet {
		if rg := r.Header["Range"]; len(rg) == 1 && ifRangeHolds(r.Header, e) {
			start, end, res := parseRange(rg[0], int64(len(e.body)))
			switch res {
			case rangeOK:
				writeRange(w, h, e, start, end, int64(len(e.body)))
				return
			case rangeUnsatisfiable:
				h["Content-Range"] = []string{"bytes */" + strconv.Itoa(len(e.body))}
				h["Content-Length"] = []string{"0"}
				w.WriteHeader(http.StatusRequestedRangeNotSatisfiable)
				return
			}
		}
	}
	if e.status != http.StatusNoContent {
		h["Content-Length"] = e.clen
	}
	w.WriteHeader(e.status)
	if r.Method != http.MethodHead && len(e.body) > 0 {
		_, _ = w.Write(e.body)
	}
}

// setStored sets the header of a response from e: its stored fields (as
// bytes where the writer takes them), Age and Cache-Status.
func setStored(w http.ResponseWriter, h http.Header, e *entry, age time.Duration, status []string) {
	if !writeRaw(w, h, e) {
		for _, f := range e.fields {
			h[f.name] = f.values
		}
	}
	h["Age"] = e.ageHeader(age)
	h["Cache-Status"] = status
}

// writeRange answers bytes start-end of a representation of length total
// from e's body, which begins at e.partStart (0 for a full response).
func writeRange(w http.ResponseWriter, h http.Header, e *entry, start, end, total int64) {
	h["Content-Range"] = []string{"bytes " + strconv.FormatInt(start, 10) + "-" + strconv.FormatInt(end, 10) + "/" + strconv.FormatInt(total, 10)}
	h["Content-Length"] = []string{strconv.FormatInt(end-start+1, 10)}
	w.WriteHeader(http.StatusPartialContent)
	_, _ = w.Write(e.body[start-e.partStart : end-e.partStart+1])
}

// rawHeaderWriter is a response writer that takes header fields as a
// serialized block, written after the fields of its Header(): meshd's
// HTTP/1.1 server (proxy.h1resp). A hit then costs no header map
// operations for the stored fields.
type rawHeaderWriter interface {
	AddRawHeader(block []byte)
}

// writeRaw hands e's stored fields to the server as bytes when the writer
// under w (through Unwrap) takes them and none of them is already in h (a
// field set by an outer handler must be replaced by the stored one, as the
// map path does). It reports whether it did.
func writeRaw(w http.ResponseWriter, h http.Header, e *entry) bool {
	for k := range h {
		if _, stored := e.header[k]; stored {
			return false
		}
	}
	for range 8 {
		if rw, ok := w.(rawHeaderWriter); ok {
			rw.AddRawHeader(e.raw)
			return true
		}
		u, ok := w.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			return false
		}
		w = u.Unwrap()
	}
	return false
}

// notModified evaluates If-None-Match, or else If-Modified-Since, against
// a stored response (RFC 9110 §13.2.2, RFC 9111 §4.3.2).
func notModified(h http.Header, e *entry) bool {
	if e.status < 200 || e.status > 299 {
		return false
	}
	return condMatches(h, e.etag, e.lastMod, e.hasLM, e.date)
}

func condMatches(h http.Header, etag string, lastMod time.Time, hasLM bool, date time.Time) bool {
	if inm := h["If-None-Match"]; len(inm) > 0 {
		return etag != "" && etagListMatches(inm, etag, false)
	}
	if ims := h["If-Modified-Since"]; len(ims) > 0 {
		t, err := parseHTTPDate(ims[0])
		if err != nil {
			return false // RFC 9110 §13.1.3: an invalid date is ignored
		}
		lm := date
		if hasLM {
			lm = lastMod
		}
		if lm.IsZero() {
			return false
		}
		return !lm.After(t)
	}
	return false
}

// etagListMatches compares an entity tag with a list of them, weakly
// (RFC 9110 §8.8.3.2) or strongly. Entity tags may contain commas, so the
// list is scanned, not split.
func etagListMatches(lines []string, etag string, strong bool) bool {
	for _, s := range lines {
		for s != "" {
			s = strings.TrimLeft(s, " \t,")
			if s == "" {
				break
			}
			if s[0] == '*' {
				return true
			}
			start := 0
			if strings.HasPrefix(s, "W/") {
				start = 2
			}
			if len(s) <= start || s[start] != '"' {
				// Malformed member: skip to the next comma.
				i := strings.IndexByte(s, ',')
				if i < 0 {
					break
				}
				s = s[i+1:]
				continue
			}
			end := strings.IndexByte(s[start+1:], '"')
			if end < 0 {
				break
			}
			tag := s[:start+1+end+1]
			s = s[start+1+end+1:]
			if etagEqual(tag, etag, strong) {
				return true
			}
		}
	}
	return false
}

func etagEqual(a, b string, strong bool) bool {
	wa, wb := strings.HasPrefix(a, "W/"), strings.HasPrefix(b, "W/")
	if strong && (wa || wb) {
		return false
	}
	return strings.TrimPrefix(a, "W/") == strings.TrimPrefix(b, "W/")
}

// ifRangeHolds evaluates If-Range (RFC 9110 §13.1.5): an entity tag must
// match strongly; a date must equal a strong Last-Modified.
func ifRangeHolds(h http.Header, e *entry) bool {
	v := firstValue(h["If-Range"])
	if v == "" {
		return true
	}
	if strings.HasPrefix(v, `"`) || strings.HasPrefix(v, "W/") {
		return e.etag != "" && etagEqual(v, e.etag, true)
	}
	t, err := parseHTTPDate(v)
	if err != nil || !e.hasLM {
		return false
	}
	return t.Equal(e.lastMod) && e.date.Sub(e.lastMod) >= time.Second
}

type rangeResult int

const (
	rangeIgnore rangeResult = iota // serve the full response
	rangeOK
	rangeUnsatisfiable
)

// parseRange parses a single byte range (RFC 9110 §14.1.2) against a
// representation of size bytes. Several ranges, other units and syntax
// errors give rangeIgnore: a server may ignore Range (RFC 9110 §14.2).
func parseRange(spec string, size int64) (start, end int64, res rangeResult) {
	spec = strings.TrimSpace(spec)
	if len(spec) < 6 || !strings.EqualFold(spec[:6], "bytes=") {
		return 0, 0, rangeIgnore
	}
	spec = strings.Trim(spec[6:], " \t,")
	if spec == "" || strings.IndexByte(spec, ',') >= 0 {
		return 0, 0, rangeIgnore
	}
	dash := strings.IndexByte(spec, '-')
	if dash < 0 {
		return 0, 0, rangeIgnore
	}
	first, last := strings.TrimSpace(spec[:dash]), strings.TrimSpace(spec[dash+1:])
	if first == "" {
		n, ok := parseDigits(last)
		if !ok {
			return 0, 0, rangeIgnore
		}
		if n == 0 || size == 0 {
			return 0, 0, rangeUnsatisfiable
		}
		return max(size-n, 0), size - 1, rangeOK
	}
	a, ok := parseDigits(first)
	if !ok {
		return 0, 0, rangeIgnore
	}
	b := int64(-1)
	if last != "" {
		if b, ok = parseDigits(last); !ok || b < a {
			return 0, 0, rangeIgnore
		}
	}
	if a >= size {
		return 0, 0, rangeUnsatisfiable
	}
	if b < 0 || b >= size {
		b = size - 1
	}
	return a, b, rangeOK
}

// parseDigits parses a non-negative decimal, saturating instead of
// overflowing.
func parseDigits(s string) (int64, bool) {
	if s == "" {
		return 0, false
	}
	var n int64
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
		if n < 1<<53 {
			n = n*10 + int64(s[i]-'0')
		}
	}
	return n, true
}

// pass forwards a request the cache does not answer, adding Cache-Status,
// removing the origin's purge tags, and invalidating on a successful
// unsafe request.
func (st *state) pass(w http.ResponseWriter, r *http.Request, next http.Handler, fwd string, invalidate bool) {
	pw := &passWriter{ResponseWriter: w, st: st, r: r, status: st.name + "; fwd=" + fwd, invalidate: invalidate}
	next.ServeHTTP(pw, r)
	if !pw.wrote && invalidate {
		pw.prepare(http.StatusOK)
	}
}

type passWriter struct {
	http.ResponseWriter
	st         *state
	r          *http.Request
	status     string
	invalidate bool
	wrote      bool
}

func (p *passWriter) prepare(code int) {
	p.wrote = true
	h := p.ResponseWriter.Header()
	delete(h, "Cache-Tag")
	delete(h, "Surrogate-Key")
	h["Cache-Status"] = append(h["Cache-Status"], p.status)
	if p.invalidate && code >= 200 && code < 400 {
		p.st.invalidateFor(p.r, h)
	}
}

func (p *passWriter) WriteHeader(code int) {
	if !p.wrote && code >= 200 {
		p.prepare(code)
	}
	p.ResponseWriter.WriteHeader(code)
}

func (p *passWriter) Write(b []byte) (int, error) {
	if !p.wrote {
		p.prepare(http.StatusOK)
	}
	return p.ResponseWriter.Write(b)
}

func (p *passWriter) Flush() {
	if !p.wrote {
		p.prepare(http.StatusOK)
	}
	if f, ok := p.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (p *passWriter) Unwrap() http.ResponseWriter { return p.ResponseWriter }

// invalidateFor invalidates the target URI of an unsafe request and the
// Location and Content-Location URIs of its response when they are on
// the same host (RFC 9111 §4.4).
func (st *state) invalidateFor(r *http.Request, h http.Header) {
	scheme := st.scheme(r)
	if key, ok := appendPrimaryKey(nil, scheme, r); ok {
		st.invalidate(string(key))
	}
	path := "/"
	if r.URL != nil && r.URL.Path != "" {
		path = r.URL.Path
	}
	base := &url.URL{Scheme: scheme, Host: r.Host, Path: path}
	for _, name := range [...]string{"Location", "Content-Location"} {
		v := firstValue(h[name])
		if v == "" {
			continue
		}
		u, err := url.Parse(v)
		if err != nil {
			continue
		}
		abs := base.ResolveReference(u)
		absScheme := strings.ToLower(abs.Scheme)
		if absScheme != "http" && absScheme != "https" {
			continue
		}
		if !strings.EqualFold(stripDefaultPort(absScheme, abs.Host), stripDefaultPort(scheme, r.Host)) {
			continue
		}
		if key, ok := appendKey(nil, absScheme, abs.Host, abs.RequestURI()); ok {
			st.invalidate(string(key))
		}
	}
}
