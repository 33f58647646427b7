package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"net/http"
	"net/url"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// Request parsing of meshd's HTTP/1.1 server (RFC 9112). It is strict where
// leniency lets two parsers disagree about where a message ends (request
// smuggling): a request that both Content-Length and Transfer-Encoding
// frame, differing Content-Length values, a transfer coding other than a
// final "chunked", obs-fold, whitespace before a field's colon and bare CR
// are all refused with 400 (or 501 for an unknown coding) before the
// handler sees anything, and the connection is closed.

// requestError is a request the server refuses before its handler runs.
type requestError struct {
	code int    // 400, 417, 431, 501 or 505
	msg  string // for the client and the debug log
}

func (e *requestError) Error() string { return e.msg }

var (
	errHeadTooLarge = &requestError{http.StatusRequestHeaderFieldsTooLarge, "request header section too large"}
	// errNoRequest: the connection ended or timed out before a request
	// began; nothing is answered.
	errNoRequest = errors.New("no request")
)

func badRequest(msg string) *requestError { return &requestError{http.StatusBadRequest, msg} }

// maxLeadingEmptyLines is how many empty lines before a request line are
// skipped (RFC 9112 §2.2: "SHOULD ignore at least one").
const maxLeadingEmptyLines = 4

// lineReader reads CRLF- (or LF-) terminated lines from a bufio.Reader,
// within a byte budget for the whole header section.
type lineReader struct {
	br     *bufio.Reader
	budget int
	acc    []byte // a line longer than br's buffer, reassembled
	vals   []byte // the field values of the section being read (parseFields), kept between sections when small
}

// next returns the next line without its terminator. The slice is valid
// until the next call. A line counts against the budget with its
// terminator.
func (lr *lineReader) next() ([]byte, error) {
	lr.acc = lr.acc[:0]
	for {
		frag, err := lr.br.ReadSlice('\n')
		lr.budget -= len(frag)
		if lr.budget < 0 {
			return nil, errHeadTooLarge
		}
		switch {
		case err == nil:
			line := frag
			if len(lr.acc) > 0 {
				lr.acc = append(lr.acc, frag...)
				line = lr.acc
			}
			line = line[:len(line)-1]
			if n := len(line); n > 0 && line[n-1] == '\r' {
				line = line[:n-1]
			}
			return line, nil
		case errors.Is(err, bufio.ErrBufferFull):
			lr.acc = append(lr.acc, frag...)
		default:
			return nil, err
		}
	}
}

// parseRequestHead reads one request's line and header section from lr into
// r, without Body, context, RemoteAddr or TLS. (The caller's r can live on
// its stack: serving it takes a copy with its context anyway.) A
// *requestError says what to answer; errNoRequest (nothing was read) and
// read errors mean the connection is done.
func parseRequestHead(lr *lineReader, r *http.Request) error {
	var line []byte
	var err error
	for i := 0; ; i++ {
		line, err = lr.next()
		if err != nil {
			var re *requestError
			if errors.As(err, &re) {
				return err
			}
			if i == 0 && lr.br.Buffered() == 0 {
				return errNoRequest
			}
			return err
		}
		if len(line) > 0 {
			break
		}
		if i == maxLeadingEmptyLines {
			return badRequest("empty request line")
		}
	}
	if e := parseRequestLine(r, line); e != nil {
		return e
	}
	h, err := parseFields(lr, false)
	if err != nil {
		return err
	}
	r.Header = h
	if e := finishHead(r); e != nil {
		return e
	}
	return nil
}

// parseRequestLine fills Method, RequestURI, URL and the protocol version
// from "method SP request-target SP HTTP-version" (RFC 9112 §3).
func parseRequestLine(r *http.Request, line []byte) *requestError {
	sp1 := bytes.IndexByte(line, ' ')
	if sp1 <= 0 {
		return badRequest("malformed request line")
	}
	rest := line[sp1+1:]
	sp2 := bytes.IndexByte(rest, ' ')
	if sp2 <= 0 {
		return badRequest("malformed request line")
	}
	method, target, version := line[:sp1], rest[:sp2], rest[sp2+1:]
	if !isToken(method) {
		return badRequest("invalid method")
	}
	major, minor, ok := parseVersion(version)
	switch {
	case !ok:
		return badRequest("malformed HTTP version")
	case major != 1:
		return &requestError{http.StatusHTTPVersionNotSupported, "unsupported HTTP version"}
	}
	for _, c := range target {
		// Visible characters only (RFC 9112 §3.2; bytes above 0x7e are
		// passed on as sent, as most servers do).
		if c <= ' ' || c == 0x7f {
			return badRequest("invalid request target")
		}
	}
	r.Method = internMethod(method)
	r.ProtoMajor, r.ProtoMinor = 1, minor
	r.Proto = "HTTP/1.1"
	if minor == 0 {
		r.Proto = "HTTP/1.0"
	}
	r.RequestURI = string(target)
	if r.Method == http.MethodConnect && !strings.HasPrefix(r.RequestURI, "/") {
		// authority-form (RFC 9112 §3.2.3).
		r.URL = &url.URL{Host: r.RequestURI}
		return nil
	}
	u, err := url.ParseRequestURI(r.RequestURI)
	if err != nil {
		return badRequest("invalid request target")
	}
	r.URL = u
	return nil
}

// parseVersion parses "HTTP/d.d" (RFC 9112 §2.3).
func parseVersion(v []byte) (major, minor int, ok bool) {
	if len(v) != 8 || string(v[:5]) != "HTTP/" || v[6] != '.' ||
		v[5] < '0' || v[5] > '9' || v[7] < '0' || v[7] > '9' {
		return 0, 0, false
	}
	major, minor = int(v[5]-'0'), int(v[7]-'0')
	if major == 1 && minor > 1 {
		minor = 1 // a later 1.x is answered as 1.1 (RFC 9110 §6.2)
	}
	return major, minor, true
}

// parseFields reads a field section up to its empty line (RFC 9112 §5):
// the header section, or with trailer set a chunked body's trailer
// section. Field values are kept as sent, without surrounding whitespace.
//
// The values are gathered into one buffer while the section is read (the
// lines themselves are only valid until the next read), then made one
// string, which every value is a substring of: one allocation for all of
// them, one for the map and one for the value slices.
func parseFields(lr *lineReader, trailer bool) (http.Header, error) {
	type field struct {
		key      string
		off, end int
	}
	var stack [32]field
	fields := stack[:0]
	vb := lr.vals[:0]
	defer func() {
		if cap(vb) <= maxKeptValues {
			lr.vals = vb[:0]
		}
	}()
	for {
		line, err := lr.next()
		if err != nil {
			return nil, err
		}
		if len(line) == 0 {
			break
		}
		if line[0] == ' ' || line[0] == '\t' {
			// obs-fold (RFC 9112 §5.2): refuse rather than unfold.
			return nil, badRequest("obsolete line folding")
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 || !isToken(line[:colon]) {
			// Covers whitespace between name and colon (§5.1).
			return nil, badRequest("malformed header field")
		}
		value := trimOWS(line[colon+1:])
		if !validFieldValue(value) {
			return nil, badRequest("invalid character in a header field value")
		}
		key := canonicalFieldName(line[:colon])
		if trailer && !httpguts.ValidTrailerHeader(key) {
			continue // framing and routing fields have no place in a trailer
		}
		off := len(vb)
		vb = append(vb, value...)
		fields = append(fields, field{key, off, len(vb)})
	}
	all := string(vb)
	h := make(http.Header, len(fields))
	vals := make([]string, 0, len(fields))
	for _, f := range fields {
		vals = addField(h, vals, f.key, all[f.off:f.end])
	}
	return h, nil
}

// maxKeptValues bounds the value buffer a connection keeps between header
// sections; a larger one (a head near MaxHeaderBytes) is dropped after use.
const maxKeptValues = 4 << 10

// addField adds one field value to h. Single values, what most fields
// have, share the backing array vals (grown 16 at a time), each sliced at
// its capacity so that a repeated field's append copies out; it returns
// vals.
func addField(h http.Header, vals []string, key, value string) []string {
	if vv, ok := h[key]; ok {
		h[key] = append(vv, value)
		return vals
	}
	if len(vals) == cap(vals) {
		vals = make([]string, 0, 16)
	}
	vals = append(vals, value)
	n := len(vals)
	h[key] = vals[n-1 : n : n]
	return vals
}

// finishHead applies the rules that need the whole header section: Host,
// message framing, Connection and Expect.
func finishHead(r *http.Request) *requestError {
	h := r.Header
	hosts := h["Host"]
	if len(hosts) > 1 || (len(hosts) == 0 && r.ProtoMinor == 1) {
		// RFC 9112 §3.2: exactly one Host in HTTP/1.1.
		return badRequest("missing or repeated Host")
	}
	if len(hosts) == 1 && !httpguts.ValidHostHeader(hosts[0]) {
		return badRequest("malformed Host")
	}
	r.Host = r.URL.Host // absolute-form wins over the field (§3.2.2)
	if r.Host == "" && len(hosts) == 1 {
		r.Host = hosts[0]
	}
	delete(h, "Host")

	conn := h["Connection"]
	if r.ProtoMinor == 0 {
		r.Close = !hasToken(conn, "keep-alive")
	} else {
		r.Close = hasToken(conn, "close")
	}

	te, hasTE := h["Transfer-Encoding"]
	cl, hasCL := h["Content-Length"]
	switch {
	case hasTE && hasCL:
		// RFC 9112 §6.1: a server MAY reject such a request; it is the
		// classic smuggling vector, so meshd does.
		return badRequest("both Transfer-Encoding and Content-Length")
	case hasTE && r.ProtoMinor == 0:
		// §6.1: Transfer-Encoding in HTTP/1.0 is faulty framing.
		return badRequest("Transfer-Encoding in an HTTP/1.0 request")
	case hasTE:
		if !onlyChunked(te) {
			return &requestError{http.StatusNotImplemented, "unsupported transfer coding"}
		}
		delete(h, "Transfer-Encoding")
		r.TransferEncoding = []string{"chunked"}
		r.ContentLength = -1
		if e := declareTrailers(r); e != nil {
			return e
		}
	case hasCL:
		n, ok := parseContentLength(cl)
		if !ok {
			return badRequest("invalid Content-Length")
		}
		r.ContentLength = n
	}

	if ev, ok := h["Expect"]; ok {
		if len(ev) != 1 || !strings.EqualFold(ev[0], "100-continue") || r.ProtoMinor == 0 {
			return &requestError{http.StatusExpectationFailed, "unsupported expectation"}
		}
	}
	return nil
}

// declareTrailers moves the names a chunked request announces in Trailer
// into r.Trailer, with nil values that the body fills in at its end, as Go's
// server does: a forwarding handler shares the map with the outgoing
// request, whose transport reads it after the body.
func declareTrailers(r *http.Request) *requestError {
	vv, ok := r.Header["Trailer"]
	if !ok {
		return nil
	}
	delete(r.Header, "Trailer")
	for _, v := range vv {
		for name := range splitList(v) {
			k := http.CanonicalHeaderKey(name)
			if !isToken(k) || !httpguts.ValidTrailerHeader(k) {
				return badRequest("invalid Trailer field")
			}
			if r.Trailer == nil {
				r.Trailer = make(http.Header)
			}
			r.Trailer[k] = nil
		}
	}
	return nil
}

// onlyChunked reports whether Transfer-Encoding lists exactly "chunked".
func onlyChunked(values []string) bool {
	n := 0
	for _, v := range values {
		for part := range splitList(v) {
			if !strings.EqualFold(part, "chunked") {
				return false
			}
			n++
		}
	}
	return n == 1
}

// parseContentLength accepts one value, or several equal ones (as fields or
// a list, RFC 9110 §8.6), of at most 18 digits.
func parseContentLength(values []string) (int64, bool) {
	n := int64(-1)
	for _, v := range values {
		for part := range strings.SplitSeq(v, ",") {
			part = strings.TrimSpace(part)
			if part == "" || len(part) > 18 {
				return 0, false
			}
			var m int64
			for i := 0; i < len(part); i++ {
				c := part[i]
				if c < '0' || c > '9' {
					return 0, false
				}
				m = m*10 + int64(c-'0')
			}
			if n >= 0 && m != n {
				return 0, false
			}
			n = m
		}
	}
	return n, n >= 0
}

// trimOWS removes optional whitespace (SP, HTAB) around a field value.
func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// internMethod returns the method without allocating for the common ones.
func internMethod(b []byte) string {
	switch string(b) {
	case http.MethodGet:
		return http.MethodGet
	case http.MethodHead:
		return http.MethodHead
	case http.MethodPost:
		return http.MethodPost
	case http.MethodPut:
		return http.MethodPut
	case http.MethodDelete:
		return http.MethodDelete
	case http.MethodOptions:
		return http.MethodOptions
	case http.MethodPatch:
		return http.MethodPatch
	case http.MethodConnect:
		return http.MethodConnect
	case http.MethodTrace:
		return http.MethodTrace
	}
	return string(b)
}

// commonFields interns the canonical names of fields most requests carry,
// so reading them allocates nothing.
var commonFields = func() map[string]string {
	m := make(map[string]string)
	for _, k := range []string{
		"Accept", "Accept-Charset", "Accept-Encoding", "Accept-Language", "Authorization",
		"Cache-Control", "Cdn-Loop", "Connection", "Content-Encoding", "Content-Length",
		"Content-Type", "Cookie", "Dnt", "Early-Data", "Expect", "Forwarded", "From", "Host",
		"If-Match", "If-Modified-Since", "If-None-Match", "If-Range", "If-Unmodified-Since",
		"Keep-Alive", "Max-Forwards", "Origin", "Pragma", "Priority", "Proxy-Authorization",
		"Proxy-Connection", "Range", "Referer", "Sec-Ch-Ua", "Sec-Ch-Ua-Mobile",
		"Sec-Ch-Ua-Platform", "Sec-Fetch-Dest", "Sec-Fetch-Mode", "Sec-Fetch-Site",
		"Sec-Fetch-User", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
		"Upgrade-Insecure-Requests", "User-Agent", "Via", "X-Forwarded-For",
		"X-Forwarded-Host", "X-Forwarded-Proto", "X-Real-Ip", "X-Request-Id",
		// meshd's own, on every mesh hop.
		"X-Mesh-Caller", "X-Mesh-Instance", "X-Mesh-Region", "X-Mesh-Retry", "X-Mesh-Service",
		// Response fields, for the upstream side (h1.go).
		"Accept-Ranges", "Access-Control-Allow-Origin", "Age", "Alt-Svc", "Cache-Tag",
		"Cdn-Cache-Control", "Content-Disposition", "Content-Language", "Content-Location",
		"Content-Range", "Date", "Etag", "Expires", "Last-Modified", "Link", "Location",
		"Proxy-Status", "Retry-After", "Server", "Set-Cookie", "Strict-Transport-Security",
		"Surrogate-Control", "Surrogate-Key", "Vary", "X-Content-Type-Options",
	} {
		m[k] = k
	}
	return m
}()

// canonicalFieldName returns the canonical form of a field name that is a
// valid token, as textproto.CanonicalMIMEHeaderKey would ("content-type" →
// "Content-Type"), without allocating for common names.
func canonicalFieldName[T string | []byte](name T) string {
	if s, ok := commonFields[string(name)]; ok {
		return s
	}
	var stack [64]byte
	buf := stack[:0]
	if len(name) > len(stack) {
		buf = make([]byte, 0, len(name))
	}
	upper := true
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case upper && 'a' <= c && c <= 'z':
			c -= 'a' - 'A'
		case !upper && 'A' <= c && c <= 'Z':
			c += 'a' - 'A'
		}
		buf = append(buf, c)
		upper = c == '-'
	}
	if s, ok := commonFields[string(buf)]; ok {
		return s
	}
	return string(buf)
}
