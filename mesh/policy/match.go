package policy

import (
	"fmt"
	"net/http"
	"net/textproto"
	"regexp"
	"regexp/syntax"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
)

// matcher is a rule's compiled match. The zero matcher matches every request.
type matcher struct {
	path      string // exact path, when hasPath
	hasPath   bool
	prefix    string // path prefix, when hasPrefix
	hasPrefix bool
	methods   []string
	headers   []headerMatcher
}

type matchKind uint8

const (
	matchExact matchKind = iota
	matchPrefix
	matchRegex
)

type headerMatcher struct {
	name  string // canonical, as http.Header keys are
	kind  matchKind
	value string
	re    *regexp.Regexp
}

func (m *matcher) all() bool {
	return !m.hasPath && !m.hasPrefix && len(m.methods) == 0 && len(m.headers) == 0
}

// matches reports whether every condition of m holds for the request.
// It allocates nothing: Resolve runs it for every request.
func (m *matcher) matches(method, path string, h http.Header) bool {
	if m.hasPath && path != m.path {
		return false
	}
	if m.hasPrefix && !hasPathPrefix(path, m.prefix) {
		return false
	}
	if len(m.methods) > 0 && !slices.Contains(m.methods, method) {
		return false
	}
	for i := range m.headers {
		if !m.headers[i].matches(h[m.headers[i].name]) {
			return false
		}
	}
	return true
}

// hasPathPrefix is path-prefix matching by whole segments: /api matches
// /api and /api/users but not /apiary, so a rule for one API cannot
// catch its neighbour by accident. A prefix that ends in / (/api/)
// matches only below it, and / matches every path.
func hasPathPrefix(path, prefix string) bool {
	if !strings.HasPrefix(path, prefix) {
		return false
	}
	return len(path) == len(prefix) || prefix[len(prefix)-1] == '/' || path[len(prefix)] == '/'
}

// matches reports whether any one of the header's values holds: a
// request with x-team: dev and x-team: ops-db matches prefix ops-.
// Values are compared as received, one field line each; the header's
// absence never matches, not even prefix "".
func (hm *headerMatcher) matches(values []string) bool {
	for _, v := range values {
		switch hm.kind {
		case matchExact:
			if v == hm.value {
				return true
			}
		case matchPrefix:
			if strings.HasPrefix(v, hm.value) {
				return true
			}
		case matchRegex:
			if hm.re.MatchString(v) {
				return true
			}
		}
	}
	return false
}

// Resolve returns the route for a request: the first rule of s whose
// match holds, else s.Default. path is the request's path without the
// query, as the proxy routes it (r.URL.Path); h is the request's header
// with canonical keys, as net/http builds it, so header names match
// whatever case the client or the document used. Resolve allocates
// nothing.
func (s *Service) Resolve(method, path string, h http.Header) *Route {
	for _, r := range s.Routes {
		if r.match.matches(method, path, h) {
			return r
		}
	}
	return s.Default
}

// PickSubset picks a subset by weight from r's Split given a uniform
// random number u in [0,1): the split's subsets, in name order, own
// consecutive intervals of [0,1) as wide as their share. It returns
// r.Subset when the route has a fixed subset, and "" when it has
// neither (any instance). The same u always gives the same subset.
func (r *Route) PickSubset(u float64) string {
	if r.Subset != "" || len(r.Split) == 0 {
		return r.Subset
	}
	total := 0
	for _, w := range r.Split {
		total += w.Weight
	}
	x := u * float64(total)
	if !(x >= 0) { // negative or NaN
		x = 0
	}
	last, cum := "", 0
	for _, w := range r.Split {
		if w.Weight == 0 {
			continue
		}
		cum += w.Weight
		if x < float64(cum) {
			return w.Subset
		}
		last = w.Subset
	}
	return last // u ≥ 1 or rounding at the top end
}

var methodRE = regexp.MustCompile(`^[!#$%&'*+.^_` + "`" + `|~0-9A-Z-]+$`)

func (p *parser) match(n *yaml.Node, path string) matcher {
	var m matcher
	for _, e := range p.mapping(n, path, "path", "path-prefix", "methods", "headers") {
		switch e.name {
		case "path", "path-prefix":
			s := p.str(e.val, e.path)
			if !strings.HasPrefix(s, "/") {
				p.failf(e.val, e.path, "path %q must start with /", s)
			}
			if len(s) > maxValueLen || strings.ContainsAny(s, "?#") {
				p.failf(e.val, e.path, "path %q must be at most %d bytes, without query or fragment", s, maxValueLen)
			}
			if e.name == "path" {
				m.path, m.hasPath = s, true
			} else {
				m.prefix, m.hasPrefix = s, true
			}
		case "methods":
			ms := p.list(e.val, e.path, 16)
			if len(ms) == 0 {
				p.failf(e.val, e.path, "want at least one method")
			}
			for i, mn := range ms {
				mp := fmt.Sprintf("%s[%d]", e.path, i)
				s := p.str(mn, mp)
				if !methodRE.MatchString(s) {
					p.failf(mn, mp, "method %q is not an uppercase token like GET or POST", s)
				}
				if slices.Contains(m.methods, s) {
					p.failf(mn, mp, "duplicate method %q", s)
				}
				m.methods = append(m.methods, s)
			}
		case "headers":
			hs := p.mapping(e.val, e.path)
			if len(hs) > maxHeaders {
				p.failf(e.val, e.path, "%d headers, more than the limit of %d", len(hs), maxHeaders)
			}
			for _, h := range hs {
				m.headers = append(m.headers, p.header(h, e.path, m.headers))
			}
		}
	}
	return m
}

func (p *parser) header(e entry, path string, prev []headerMatcher) headerMatcher {
	if !tokenRE.MatchString(e.name) || len(e.name) > 256 {
		p.failf(e.key, path, "%q is not a valid header name", e.name)
	}
	hm := headerMatcher{name: textproto.CanonicalMIMEHeaderKey(e.name)}
	if hm.name == "Host" {
		p.failf(e.key, e.path, "match the host by the service's domains, not by header")
	}
	for _, q := range prev {
		if q.name == hm.name {
			p.failf(e.key, e.path, "header %q is matched twice (names are case-insensitive)", e.name)
		}
	}
	p.plain(e.val, e.path)
	vn, vp := e.val, e.path
	if e.val.Kind == yaml.MappingNode {
		es := p.mapping(e.val, e.path)
		if len(es) != 1 {
			p.failf(e.val, e.path, "want exactly one of exact, prefix or regex")
		}
		switch es[0].name {
		case "exact":
			hm.kind = matchExact
		case "prefix":
			hm.kind = matchPrefix
		case "regex":
			hm.kind = matchRegex
		default:
			p.failf(es[0].key, e.path, "unknown matcher %q (want exact, prefix or regex)", es[0].name)
		}
		vn, vp = es[0].val, es[0].path
	}
	hm.value = p.str(vn, vp)
	limit := maxValueLen
	if hm.kind == matchRegex {
		limit = maxRegexLen
	}
	if len(hm.value) > limit {
		p.failf(vn, vp, "%d bytes, more than the limit of %d", len(hm.value), limit)
	}
	if hm.kind == matchRegex {
		// RE2 matches in linear time, but a short pattern can still
		// compile to a large program (\pL{1000}): bound the program, per
		// pattern and per document, before compiling it.
		sre, err := syntax.Parse(hm.value, syntax.Perl)
		if err != nil {
			p.failf(vn, vp, "bad regular expression: %v", err)
		}
		size := regexpSize(sre)
		if size > maxRegexSize {
			p.failf(vn, vp, "regular expression too large: about %d instructions, more than %d", size, maxRegexSize)
		}
		if p.regexSize += size; p.regexSize > maxRegexTotal {
			p.failf(vn, vp, "regular expressions too large: about %d instructions in the document, more than %d", p.regexSize, maxRegexTotal)
		}
		re, err := regexp.Compile(hm.value)
		if err != nil {
			p.failf(vn, vp, "bad regular expression: %v", err)
		}
		hm.re = re
	}
	return hm
}

// Bounds of the compiled regular expressions, in instructions of the
// RE2 program; each costs well under a microsecond and a few hundred
// bytes to compile.
const (
	maxRegexSize  = 5000
	maxRegexTotal = 50000
)

// regexpSize estimates the instructions re compiles to, counting each
// repetition {n,m} as max(n,m) copies, as the compiler expands it.
func regexpSize(re *syntax.Regexp) int {
	n := 0
	for _, sub := range re.Sub {
		n += regexpSize(sub)
	}
	switch re.Op {
	case syntax.OpRepeat:
		n *= max(re.Min, re.Max, 1)
	case syntax.OpLiteral:
		n += len(re.Rune) // one instruction a character
	case syntax.OpCharClass:
		n += len(re.Rune) / 32 // one instruction, but its ranges copied for each
	}
	return min(n+1, 1<<30)
}
