package cache

import (
	"net/http"
	"net/textproto"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// field is one stored header field. Values are clipped (len == cap) so a
// downstream append to a served header never writes into the entry.
type field struct {
	name   string
	values []string
}

// entry is one stored response, or a Vary node (node=true) that only
// names the request fields selecting among the variants of a URL. An
// entry never changes after it is stored; a revalidation builds a new one.
type entry struct {
	key     string // full key: primary, or primary + vary suffix
	primary string
	node    bool
	vary    []string // canonical Vary names (node and variants)

	status    int
	partStart int64   // a 206 (partial content): the offset of body in the whole representation
	partTotal int64   // a 206: the whole representation's length
	fields    []field // stored header fields, Content-Length excluded
	fields304 []field // the subset a 304 carries (RFC 9110 §15.4.5)
	// raw is fields serialized ("Name: value\r\n" each), for response
	// writers that take a header block as bytes (see rawHeaderWriter).
	raw    []byte
	body   []byte
	clen   []string
	header http.Header // the stored fields as a header, for revalidation merges

	reqTime  time.Time
	respTime time.Time
	date     time.Time
	// initialAge is corrected_initial_age of RFC 9111 §4.2.3.
	initialAge time.Duration
	lifetime   time.Duration
	cc         respCC

	// noHeuristic: the response answered a request with Authorization
	// or Cookie and is not public, so heuristic freshness (RFC 9111
	// §4.2.2) never lets it be reused without the origin (see doc.go).
	// Revalidations keep it.
	noHeuristic bool

	etag    string
	lastMod time.Time
	hasLM   bool
	lmRaw   string

	tags []string
	cost int64
	// until is when the entry stops being useful even for revalidation:
	// the ristretto TTL is derived from it.
	until time.Time

	// live is true while the entry is counted in the index and gauges;
	// release clears it exactly once.
	live atomic.Bool
	// ageMemo caches the Age header value of the last second served, so
	// that hits within one second share one allocation.
	ageMemo atomic.Pointer[ageValue]
}

type ageValue struct {
	secs int64
	v    []string
}

// currentAge implements RFC 9111 §4.2.3: corrected_initial_age plus
// resident_time.
func (e *entry) currentAge(now time.Time) time.Duration {
	resident := now.Sub(e.respTime)
	if resident < 0 {
		resident = 0
	}
	return e.initialAge + resident
}

// ageHeader returns the Age field value for age, reusing the slice of the
// previous hit in the same second.
func (e *entry) ageHeader(age time.Duration) []string {
	secs := int64(age / time.Second)
	if m := e.ageMemo.Load(); m != nil && m.secs == secs {
		return m.v
	}
	v := []string{strconv.FormatInt(secs, 10)}
	e.ageMemo.Store(&ageValue{secs: secs, v: v})
	return v
}

// hasValidator reports whether the entry can be revalidated (RFC 9111 §4.3.1).
func (e *entry) hasValidator() bool { return e.etag != "" || e.hasLM }

// noStale reports whether the entry may never be served stale:
// must-revalidate, proxy-revalidate and s-maxage all forbid it for a
// shared cache (RFC 9111 §5.2.2.2, §5.2.2.8, §5.2.2.10).
func (e *entry) noStale() bool {
	return e.cc.mustRevalidate || e.cc.proxyRevalidate || e.cc.sMaxAge != absent
}

// heuristicStatus lists the status codes that are cacheable by default
// (RFC 9110 §15.1), which may get heuristic freshness (RFC 9111 §4.2.2).
func heuristicStatus(code int) bool {
	switch code {
	case 200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501:
		return true
	}
	return false
}

// understoodStatus lists the final status codes whose caching semantics
// meshd implements, the ones must-understand vouches for (RFC 9111
// §5.2.2.3). 206 and 304 are left out: meshd stores full responses only
// (RFC 9111 §3.3 allows not storing partial content).
func understoodStatus(code int) bool {
	switch code {
	case 200, 201, 202, 203, 204, 205,
		300, 301, 302, 303, 307, 308,
		400, 401, 402, 403, 404, 405, 406, 407, 408, 409, 410, 411, 412, 413,
		414, 415, 416, 417, 421, 422, 426,
		500, 501, 502, 503, 504, 505:
		return true
	}
	return false
}

// sharing is what, besides the response itself, decides whether a
// response may be shared: the credentials of the request it answers and
// the store's Set-Cookie option.
type sharing struct {
	auth      bool // the request carried Authorization (RFC 9111 §3.5)
	cookie    bool // the request carried Cookie (meshd policy, see doc.go)
	setCookie bool // Store.StoreSetCookie
}

// credentialed reports whether the request carried credentials.
func (sh sharing) credentialed() bool { return sh.auth || sh.cookie }

// requestSharing returns the sharing of a response to r in st.
func (st *state) requestSharing(r *http.Request) sharing {
	_, auth := r.Header["Authorization"]
	_, cookie := r.Header["Cookie"]
	return sharing{auth: auth, cookie: cookie, setCookie: st.setCookie}
}

// explicitlyShared reports whether a response says a shared cache may
// store it in so many words: public, s-maxage, or max-age (private was
// refused before). Heuristic freshness and Expires are not such a word:
// an origin that answers a logged-in user's request with Last-Modified
// alone has said nothing about sharing, and the page may be that user's.
func (c *respCC) explicitlyShared() bool {
	return c.public || c.sMaxAge != absent || c.maxAge != absent
}

// storable decides whether a shared cache may store a response
// (RFC 9111 §3, §3.5) and says why not.
func storable(status int, cc respCC, h http.Header, req reqCC, sh sharing) (bool, string) {
	switch {
	case status < 200 || status > 999 || status == http.StatusPartialContent || status == http.StatusNotModified:
		// Final, full responses only (RFC 9111 §3); a 206 to a range
		// request of meshd's own goes through storablePart.
		return false, "status"
	case !understoodStatus(status) && cc.mustUnderstand:
		// RFC 9111 §5.2.2.3: only a cache that understands the status
		// code may store it. Without must-understand a status code meshd
		// does not know may be stored like any other (RFC 9111 §3), but
		// only with explicit freshness: it gets no heuristic below.
		return false, "must-understand"
	case req.noStore:
		return false, "request no-store" // RFC 9111 §5.2.1.5
	case cc.noStore && !cc.mustUnderstand:
		return false, "no-store" // RFC 9111 §5.2.2.5; must-understand overrides, §5.2.2.3
	case cc.private:
		return false, "private" // RFC 9111 §5.2.2.7
	case sh.auth && !cc.public && cc.sMaxAge == absent && !cc.mustRevalidate:
		return false, "authorization" // RFC 9111 §3.5
	case sh.cookie && !cc.explicitlyShared():
		// Stricter than RFC 9111, which lets heuristics make such a
		// response storable: Cookie usually carries a session, and
		// Varnish passes such requests by default. See doc.go.
		return false, "cookie"
	case len(h["Set-Cookie"]) > 0 && (!sh.setCookie || (!cc.public && !cc.withholds("Set-Cookie"))):
		// meshd policy, see doc.go: never by default (as nginx and
		// Varnish), and with StoreSetCookie only on the origin's word.
		return false, "set-cookie"
	case len(h["Trailer"]) > 0:
		return false, "trailer"
	}
	if _, star := parseVary(h["Vary"]); star {
		return false, "vary" // RFC 9111 §4.1: never matches
	}
	_, hasExpires := h["Expires"]
	hasExpires = hasExpires && !cc.targeted // RFC 9213 §2.1
	if cc.public || cc.maxAge != absent || cc.sMaxAge != absent || hasExpires || heuristicStatus(status) || cc.invalid {
		return true, ""
	}
	return false, "not cacheable"
}

// storablePart reports whether a 206 to a client's single-range GET may be
// stored as partial content (RFC 9111 §3.3): the rules of a 200, and one
// range of a representation whose length is known.
func storablePart(cc respCC, h http.Header, req reqCC, sh sharing) (start, end, total int64, ok bool) {
	if ok, _ := storable(http.StatusOK, cc, h, req, sh); !ok || len(h["Vary"]) > 0 {
		return 0, 0, 0, false
	}
	cr := h["Content-Range"]
	if len(cr) != 1 || strings.HasPrefix(strings.ToLower(firstValue(h["Content-Type"])), "multipart/byteranges") {
		return 0, 0, 0, false
	}
	start, end, total, ok = parseContentRange(cr[0])
	if !ok || len(h["Content-Length"]) != 1 {
		return 0, 0, 0, false
	}
	if n, valid := parseDigits(h["Content-Length"][0]); !valid || n != end-start+1 {
		return 0, 0, 0, false
	}
	return start, end, total, true
}

// parseContentRange parses "bytes first-last/complete" (RFC 9110 §14.4)
// with a known complete length.
func parseContentRange(v string) (first, last, complete int64, ok bool) {
	rest, found := strings.CutPrefix(strings.TrimSpace(v), "bytes ")
	if !found {
		return 0, 0, 0, false
	}
	span, length, found := strings.Cut(rest, "/")
	a, b, found2 := strings.Cut(span, "-")
	if !found || !found2 {
		return 0, 0, 0, false
	}
	var okA, okB, okL bool
	first, okA = parseDigits(a)
	last, okB = parseDigits(b)
	complete, okL = parseDigits(length)
	if !okA || !okB || !okL || last < first || last >= complete {
		return 0, 0, 0, false
	}
	return first, last, complete, true
}

// withholds reports whether a qualified private or no-cache directive
// names the field: the response is stored without it (RFC 9111
// §5.2.2.7, §5.2.2.4).
func (c *respCC) withholds(name string) bool {
	return slices.Contains(c.privateFields, name) || slices.Contains(c.noCacheFields, name)
}

// excluded reports whether a response field is never stored: hop-by-hop
// fields (RFC 9111 §3.1), fields meshd computes itself (Age,
// Content-Length, Cache-Status) or consumes (Cache-Tag, Surrogate-Key),
// and Set-Cookie (see doc.go).
func excluded(name string) bool {
	switch name {
	case "Connection", "Keep-Alive", "Proxy-Connection", "Te", "Transfer-Encoding",
		"Upgrade", "Trailer", "Proxy-Authenticate", "Proxy-Authentication-Info",
		"Age", "Content-Length", "Cache-Status", "Cache-Tag", "Surrogate-Key", "Set-Cookie":
		return true
	}
	return false
}

// maxTags bounds the tags kept per entry, and maxTagLen their length, so a
// hostile origin cannot grow the purge index without bound.
const (
	maxTags   = 64
	maxTagLen = 256
)

// parseTags reads Cache-Tag (comma separated) and Surrogate-Key (space
// separated) into one deduplicated list.
func parseTags(h http.Header) []string {
	var tags []string
	add := func(lines []string) {
		for _, l := range lines {
			for t := range strings.FieldsFuncSeq(l, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' }) {
				if len(t) <= maxTagLen && len(tags) < maxTags {
					tags = append(tags, t)
				}
			}
		}
	}
	add(h["Cache-Tag"])
	add(h["Surrogate-Key"])
	slices.Sort(tags)
	return slices.Compact(tags)
}

// entryParams carries what newEntry needs beyond the response.
type entryParams struct {
	key, primary string
	vary         []string
	status       int
	header       http.Header // as received (Age, Cache-Tag ... still there)
	body         []byte
	reqTime      time.Time
	respTime     time.Time
	tags         []string // used when header carries none (304 merges)
	maxHeuristic time.Duration
	// credentialed: the response answered a request with Authorization
	// or Cookie (or updates an entry that did and is not public): it gets
	// no heuristic freshness unless it is public.
	credentialed bool
	keepStale    time.Duration
	device       string // the cache's Surrogate-Capability token
	partStart    int64  // a 206: where its bytes start in the whole representation
	partTotal    int64  // a 206: the length of the whole representation
}

// newEntry builds the immutable entry of a response to store.
func newEntry(p entryParams) *entry {
	cc := responseCC(p.header, p.device)
	e := &entry{
		key:       p.key,
		primary:   p.primary,
		vary:      p.vary,
		status:    p.status,
		body:      p.body,
		reqTime:   p.reqTime,
		respTime:  p.respTime,
		cc:        cc,
		partStart: p.partStart,
		partTotal: p.partTotal,
	}
	e.tags = parseTags(p.header)
	if e.tags == nil {
		e.tags = p.tags
	}
	// Fields listed by Connection are hop-by-hop too (RFC 9110 §7.6.1).
	var connFields []string
	for _, l := range p.header["Connection"] {
		for f := range strings.SplitSeq(l, ",") {
			if f = strings.TrimSpace(f); f != "" {
				connFields = append(connFields, textproto.CanonicalMIMEHeaderKey(f))
			}
		}
	}
	e.header = make(http.Header, len(p.header)+1)
	for name, vals := range p.header {
		if excluded(name) || slices.Contains(connFields, name) || cc.withholds(name) || len(vals) == 0 ||
			(p.status == http.StatusPartialContent && name == "Content-Range") {
			continue
		}
		e.header[name] = slices.Clip(slices.Clone(vals))
	}
	// A recipient with a clock adds a missing Date (RFC 9110 §6.6.1).
	if d, err := parseHTTPDate(firstValue(p.header["Date"])); err == nil {
		e.date = d
	} else {
		e.date = p.respTime
		e.header["Date"] = []string{p.respTime.UTC().Format(http.TimeFormat)}
	}
	names := make([]string, 0, len(e.header))
	for name := range e.header {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		f := field{name: name, values: e.header[name]}
		e.fields = append(e.fields, f)
		if in304(name, e.header) {
			e.fields304 = append(e.fields304, f)
		}
	}
	e.raw = appendRawFields(nil, e.fields)
	e.etag = firstValue(e.header["Etag"])
	if lm := firstValue(e.header["Last-Modified"]); lm != "" {
		if t, err := parseHTTPDate(lm); err == nil {
			e.lastMod, e.hasLM, e.lmRaw = t, true, lm
		}
	}
	e.clen = []string{strconv.Itoa(len(p.body))}

	// Age (RFC 9111 §4.2.3).
	ageValue := time.Duration(0)
	if a := firstMember(p.header["Age"]); a != "" {
		if n, ok := parseDelta(directive{value: a, hasValue: true}); ok {
			ageValue = time.Duration(n) * time.Second
		}
	}
	apparent := p.respTime.Sub(e.date)
	if apparent < 0 {
		apparent = 0
	}
	corrected := ageValue + p.respTime.Sub(p.reqTime)
	e.initialAge = max(apparent, corrected)
	maxHeuristic := p.maxHeuristic
	if p.credentialed && !cc.public {
		// A credentialed request's response is storable only on the
		// origin's word (storable); what that word does not say, a
		// guess must not grant: must-revalidate alone (RFC 9111 §3.5)
		// then means revalidate on every reuse.
		e.noHeuristic, maxHeuristic = true, 0
	}
	e.lifetime = lifetime(p.status, cc, p.header, e.date, e.lastMod, e.hasLM, maxHeuristic)

	e.cost = int64(len(e.key)+len(e.primary)+len(e.body)) + 256
	for _, f := range e.fields {
		e.cost += int64(len(f.name)) + 16
		for _, v := range f.values {
			e.cost += int64(len(v)) + 16
		}
	}
	for _, t := range e.tags {
		e.cost += int64(len(t)) + 16
	}
	keep := e.lifetime - e.initialAge
	if keep < 0 {
		keep = 0
	}
	keep += time.Duration(max(cc.swr, cc.sie, 0)) * time.Second
	keep += p.keepStale
	e.until = p.respTime.Add(keep)
	return e
}

// in304 reports whether a field goes into a 304 (RFC 9110 §15.4.5): the
// ones a 200 would carry that guide caches, and Last-Modified only when
// there is no ETag to validate with.
func in304(name string, h http.Header) bool {
	switch name {
	case "Cache-Control", "Content-Location", "Date", "Etag", "Expires", "Vary":
		return true
	case "Last-Modified":
		return len(h["Etag"]) == 0
	}
	return false
}

// lifetime computes the freshness lifetime (RFC 9111 §4.2.1): s-maxage,
// then max-age, then Expires minus Date, then a heuristic (§4.2.2) of 10%
// of the time since Last-Modified, capped, for responses that allow one.
func lifetime(status int, cc respCC, h http.Header, date, lastMod time.Time, hasLM bool, maxHeuristic time.Duration) time.Duration {
	if cc.invalid {
		return 0
	}
	if cc.sMaxAge != absent {
		return time.Duration(cc.sMaxAge) * time.Second
	}
	if cc.maxAge != absent {
		return time.Duration(cc.maxAge) * time.Second
	}
	if exp, ok := h["Expires"]; ok && !cc.targeted {
		// Invalid dates, "0" included, mean "already expired"; so do
		// several different values (RFC 9111 §5.3, §4.2.1).
		if len(exp) != 1 {
			return 0
		}
		t, err := parseHTTPDate(exp[0])
		if err != nil {
			return 0
		}
		if d := t.Sub(date); d > 0 {
			return d
		}
		return 0
	}
	if hasLM && (heuristicStatus(status) || cc.public) {
		if d := date.Sub(lastMod) / 10; d > 0 {
			return min(d, maxHeuristic)
		}
	}
	return 0
}

func firstValue(v []string) string {
	if len(v) == 0 {
		return ""
	}
	return v[0]
}

// firstMember returns the first list member of a field that should be a
// singleton (RFC 9111 §5.1 for Age).
func firstMember(v []string) string {
	s := firstValue(v)
	if i := strings.IndexByte(s, ','); i >= 0 {
		s = s[:i]
	}
	return strings.TrimSpace(s)
}

// appendRawFields serializes fields as a header block. Stored values came
// through an HTTP parser, but a CR, LF or NUL is still made a space, as Go's
// server does, so the block can never split a response.
func appendRawFields(b []byte, fields []field) []byte {
	for _, f := range fields {
		for _, v := range f.values {
			b = append(b, f.name...)
			b = append(b, ": "...)
			for i := 0; i < len(v); i++ {
				c := v[i]
				if c == '\r' || c == '\n' || c == 0 {
					c = ' '
				}
				b = append(b, c)
			}
			b = append(b, "\r\n"...)
		}
	}
	return b
}
