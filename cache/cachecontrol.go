package cache

import (
	"net/textproto"
	"strconv"
	"strings"
)

// maxDelta is the value a delta-seconds that does not fit is clamped to
// (RFC 9111 §1.2.2: "the cache MUST consider the value to be 2147483648").
const maxDelta = 1 << 31

// absent marks a numeric directive that was not sent.
const absent = -1

// reqCC holds the request directives of RFC 9111 §5.2.1 and RFC 5861 §4.
// Numeric fields are seconds, or absent.
type reqCC struct {
	maxAge       int64
	maxStale     int64
	minFresh     int64
	staleIfError int64
	maxStaleAny  bool // max-stale without a value: any staleness is acceptable
	noCache      bool
	noStore      bool
	onlyIfCached bool
}

// respCC holds the response directives of RFC 9111 §5.2.2 and RFC 5861 §3-4.
type respCC struct {
	maxAge          int64
	sMaxAge         int64
	swr             int64 // stale-while-revalidate
	sie             int64 // stale-if-error
	noCache         bool
	noStore         bool
	private         bool
	public          bool
	mustRevalidate  bool
	proxyRevalidate bool
	mustUnderstand  bool
	// privateFields lists the field names of a qualified private directive
	// (RFC 9111 §5.2.2.7): the response is shareable without them.
	privateFields []string
	// noCacheFields lists the field names of a qualified no-cache
	// (RFC 9111 §5.2.2.4): they must not be reused without validation,
	// so they are not stored, and the rest of the response is reused.
	noCacheFields []string
	// targeted is set when the directives came from a field targeted at
	// CDNs (see targeted.go): Expires is then ignored too.
	targeted bool
	// invalid is set when max-age or s-maxage has a value that is not
	// delta-seconds, or appears twice with different values: RFC 9111 §4.2.1
	// allows treating such a response as stale, which is the safe choice.
	invalid bool
}

// directive is one member of a Cache-Control list.
type directive struct {
	name     string
	value    string // raw: inside the quotes for a quoted-string, escapes kept
	hasValue bool
	quoted   bool
}

// nextDirective scans the next directive of one Cache-Control field line
// (RFC 9111 §5.2: a list of token [ "=" ( token / quoted-string ) ]). It
// never allocates, tolerates garbage by skipping to the next comma, and
// returns ok=false when s holds no further directive.
func nextDirective(s string) (d directive, rest string, ok bool) {
	for {
		i := 0
		for i < len(s) && (s[i] == ' ' || s[i] == '\t' || s[i] == ',') {
			i++
		}
		s = s[i:]
		if s == "" {
			return directive{}, "", false
		}
		j := 0
		for j < len(s) && s[j] != '=' && s[j] != ',' && s[j] != ' ' && s[j] != '\t' {
			j++
		}
		d.name = s[:j]
		s = s[j:]
		// The grammar has no whitespace around "=" (RFC 9111 §5.2): in
		// "max-age = 5" the directive has no value, which makes it
		// invalid rather than guessed at.
		if s != "" && s[0] == '=' {
			s = s[1:]
			d.hasValue = true
			if s != "" && s[0] == '"' {
				d.quoted = true
				e := 1
				for e < len(s) && s[e] != '"' {
					if s[e] == '\\' && e+1 < len(s) {
						e++
					}
					e++
				}
				if e >= len(s) {
					// Unterminated quoted-string: take what is there.
					d.value = s[1:]
					s = ""
				} else {
					d.value = s[1:e]
					s = s[e+1:]
				}
			} else {
				e := 0
				for e < len(s) && s[e] != ',' && s[e] != ' ' && s[e] != '\t' {
					e++
				}
				d.value = s[:e]
				s = s[e:]
			}
		}
		// Skip anything up to the next comma that is not part of this
		// directive (malformed input).
		if c := strings.IndexByte(s, ','); c >= 0 {
			s = s[c:]
		} else {
			s = ""
		}
		if d.name == "" {
			d = directive{}
			continue
		}
		return d, s, true
	}
}

// parseDelta parses delta-seconds (RFC 9111 §1.2.2), accepting the
// quoted-string form too (RFC 9111 §5.2 asks recipients to accept it).
// Values too large are clamped to 2^31.
func parseDelta(d directive) (int64, bool) {
	v := d.value
	if !d.hasValue || v == "" {
		return 0, false
	}
	var n int64
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		if n < maxDelta {
			n = n*10 + int64(c-'0')
		}
	}
	if n > maxDelta {
		n = maxDelta
	}
	return n, true
}

// unquote removes quoted-pair escapes from a quoted-string's inside.
func unquote(v string) string {
	if strings.IndexByte(v, '\\') < 0 {
		return v
	}
	b := make([]byte, 0, len(v))
	for i := 0; i < len(v); i++ {
		if v[i] == '\\' && i+1 < len(v) {
			i++
		}
		b = append(b, v[i])
	}
	return string(b)
}

// fieldNames parses the field-name list of a qualified no-cache or private.
func fieldNames(d directive) []string {
	v := d.value
	if d.quoted {
		v = unquote(v)
	}
	var out []string
	for f := range strings.SplitSeq(v, ",") {
		f = strings.TrimSpace(f)
		if f != "" && validToken(f) {
			out = append(out, textproto.CanonicalMIMEHeaderKey(f))
		}
	}
	return out
}

// parseReqCC parses the request's Cache-Control field lines. When the
// request has no Cache-Control at all, "Pragma: no-cache" counts as
// no-cache (RFC 9111 §5.4 keeps it for HTTP/1.0 compatibility). It does
// not allocate.
func parseReqCC(lines, pragma []string) reqCC {
	c := reqCC{maxAge: absent, maxStale: absent, minFresh: absent, staleIfError: absent}
	for _, line := range lines {
		for {
			d, rest, ok := nextDirective(line)
			if !ok {
				break
			}
			line = rest
			switch {
			case strings.EqualFold(d.name, "max-age"):
				if n, ok := parseDelta(d); ok && (c.maxAge == absent || n < c.maxAge) {
					c.maxAge = n
				}
			case strings.EqualFold(d.name, "max-stale"):
				if !d.hasValue {
					c.maxStaleAny = true
				} else if n, ok := parseDelta(d); ok && (c.maxStale == absent || n < c.maxStale) {
					c.maxStale = n
				}
			case strings.EqualFold(d.name, "min-fresh"):
				if n, ok := parseDelta(d); ok && n > c.minFresh {
					c.minFresh = n
				}
			case strings.EqualFold(d.name, "stale-if-error"):
				if n, ok := parseDelta(d); ok {
					c.staleIfError = n
				}
			case strings.EqualFold(d.name, "no-cache"):
				c.noCache = true
			case strings.EqualFold(d.name, "no-store"):
				c.noStore = true
			case strings.EqualFold(d.name, "only-if-cached"):
				c.onlyIfCached = true
			}
		}
	}
	if len(lines) == 0 {
		for _, p := range pragma {
			for {
				d, rest, ok := nextDirective(p)
				if !ok {
					break
				}
				p = rest
				if strings.EqualFold(d.name, "no-cache") {
					c.noCache = true
				}
			}
		}
	}
	return c
}

// parseRespCC parses a response's Cache-Control field lines.
func parseRespCC(lines []string) respCC {
	c := respCC{maxAge: absent, sMaxAge: absent, swr: absent, sie: absent}
	setDelta := func(dst *int64, d directive) {
		n, ok := parseDelta(d)
		switch {
		case !ok:
			c.invalid = true
		case *dst != absent && *dst != n:
			c.invalid = true
			if n < *dst {
				*dst = n
			}
		default:
			*dst = n
		}
	}
	for _, line := range lines {
		for {
			d, rest, ok := nextDirective(line)
			if !ok {
				break
			}
			line = rest
			switch {
			case strings.EqualFold(d.name, "max-age"):
				setDelta(&c.maxAge, d)
			case strings.EqualFold(d.name, "s-maxage"):
				setDelta(&c.sMaxAge, d)
			case strings.EqualFold(d.name, "stale-while-revalidate"):
				if n, ok := parseDelta(d); ok {
					c.swr = n
				}
			case strings.EqualFold(d.name, "stale-if-error"):
				if n, ok := parseDelta(d); ok {
					c.sie = n
				}
			case strings.EqualFold(d.name, "no-cache"):
				// A qualified no-cache="field" (RFC 9111 §5.2.2.4) lets
				// the response be reused without validation, but not the
				// named fields: they are not stored. One that names no
				// valid field counts as unqualified.
				if d.hasValue {
					if f := fieldNames(d); len(f) > 0 {
						c.noCacheFields = append(c.noCacheFields, f...)
						continue
					}
				}
				c.noCache = true
			case strings.EqualFold(d.name, "no-store"):
				c.noStore = true
			case strings.EqualFold(d.name, "private"):
				if d.hasValue {
					if f := fieldNames(d); len(f) > 0 {
						c.privateFields = append(c.privateFields, f...)
						continue
					}
				}
				c.private = true
			case strings.EqualFold(d.name, "public"):
				c.public = true
			case strings.EqualFold(d.name, "must-revalidate"):
				c.mustRevalidate = true
			case strings.EqualFold(d.name, "proxy-revalidate"):
				c.proxyRevalidate = true
			case strings.EqualFold(d.name, "must-understand"):
				c.mustUnderstand = true
			}
		}
	}
	return c
}

// String formats the directives canonically; parseRespCC(String()) gives
// the same value back for any valid c (the fuzz target checks this).
func (c respCC) String() string {
	var parts []string
	num := func(name string, v int64) {
		if v != absent {
			parts = append(parts, name+"="+strconv.FormatInt(v, 10))
		}
	}
	num("max-age", c.maxAge)
	num("s-maxage", c.sMaxAge)
	num("stale-while-revalidate", c.swr)
	num("stale-if-error", c.sie)
	flag := func(name string, v bool) {
		if v {
			parts = append(parts, name)
		}
	}
	flag("no-cache", c.noCache)
	flag("no-store", c.noStore)
	flag("private", c.private)
	flag("public", c.public)
	flag("must-revalidate", c.mustRevalidate)
	flag("proxy-revalidate", c.proxyRevalidate)
	flag("must-understand", c.mustUnderstand)
	if len(c.privateFields) > 0 {
		parts = append(parts, `private="`+strings.Join(c.privateFields, ", ")+`"`)
	}
	if len(c.noCacheFields) > 0 {
		parts = append(parts, `no-cache="`+strings.Join(c.noCacheFields, ", ")+`"`)
	}
	return strings.Join(parts, ", ")
}

// validToken reports whether s is an RFC 9110 §5.6.2 token.
func validToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}
