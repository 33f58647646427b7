package cache

import (
	"errors"
	"fmt"
	"net/http"
	"net/textproto"
	"slices"
	"strings"
)

// A primary cache key is "scheme://host/target" (RFC 9111 §2: the target
// URI): the scheme as the Store's Scheme function reports it, the Host in
// lower case without the scheme's default port, and the request target
// exactly as the client sent it (queries kept as sent, no re-encoding).
//
// A response with Vary is stored under a secondary key: the primary key,
// a NUL byte, then for each header the Vary names (sorted, canonical) an
// escaped, whitespace-normalized value (RFC 9111 §4.1), so that two
// requests share a secondary key exactly when their nominated header
// fields normalize to the same values.

// appendPrimaryKey appends the primary key of r to dst. ok is false when
// the request has no usable host or target (such a request bypasses the
// cache).
func appendPrimaryKey(dst []byte, scheme string, r *http.Request) ([]byte, bool) {
	target := r.RequestURI
	if target == "" && r.URL != nil {
		target = r.URL.RequestURI()
	}
	if target == "" || target == "*" {
		return dst, false
	}
	if target[0] != '/' {
		// Absolute form (RFC 9112 §3.2.2): keep the path and query as sent.
		i := strings.Index(target, "://")
		if i < 0 {
			return dst, false
		}
		rest := target[i+3:]
		j := strings.IndexAny(rest, "/?")
		if j < 0 {
			target = "/"
		} else {
			target = rest[j:]
		}
	}
	return appendKey(dst, scheme, r.Host, target)
}

// appendKey appends scheme://host/target with the host normalized.
func appendKey(dst []byte, scheme, host, target string) ([]byte, bool) {
	if host == "" || scheme == "" {
		return dst, false
	}
	host = stripDefaultPort(scheme, host)
	if host == "" || host[0] == ':' {
		return dst, false
	}
	for i := 0; i < len(host); i++ {
		c := host[i]
		if c <= ' ' || c >= 0x7f || c == '/' || c == '?' || c == '#' || c == '\\' {
			return dst, false
		}
	}
	dst = append(dst, scheme...)
	dst = append(dst, "://"...)
	for i := 0; i < len(host); i++ {
		c := host[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		dst = append(dst, c)
	}
	if target == "" || target[0] != '/' {
		dst = append(dst, '/')
	}
	if i := strings.IndexByte(target, '#'); i >= 0 {
		target = target[:i]
	}
	dst = append(dst, target...)
	return dst, true
}

func stripDefaultPort(scheme, host string) string {
	switch {
	case scheme == "http" && strings.HasSuffix(host, ":80"):
		return host[:len(host)-3]
	case scheme == "https" && strings.HasSuffix(host, ":443"):
		return host[:len(host)-4]
	}
	return host
}

// errBadURL is returned for purge URLs that cannot name a cache entry.
var errBadURL = errors.New("cache: url must be absolute http or https with a host")

// NormalizeURL returns the primary cache key that an absolute http or
// https URL names, as PurgeURL matches it: scheme and host in lower case,
// default port removed, path and query kept exactly as given, fragment
// dropped. The admin API uses it to reject bad purge requests.
func NormalizeURL(raw string) (string, error) {
	i := strings.Index(raw, "://")
	if i <= 0 {
		return "", fmt.Errorf("normalize %q: %w", raw, errBadURL)
	}
	scheme := strings.ToLower(raw[:i])
	if scheme != "http" && scheme != "https" {
		return "", fmt.Errorf("normalize %q: %w", raw, errBadURL)
	}
	rest := raw[i+3:]
	j := strings.IndexAny(rest, "/?#")
	host, target := rest, "/"
	if j >= 0 {
		host, target = rest[:j], rest[j:]
	}
	if strings.ContainsRune(host, '@') {
		return "", fmt.Errorf("normalize %q: %w", raw, errBadURL)
	}
	b, ok := appendKey(nil, scheme, host, target)
	if !ok {
		return "", fmt.Errorf("normalize %q: %w", raw, errBadURL)
	}
	return string(b), nil
}

// parseVary returns the canonical, sorted, deduplicated field names of a
// response's Vary field lines, and star=true when any member is "*" or is
// not a valid field name (RFC 9111 §4.1: such a response never matches).
func parseVary(lines []string) (names []string, star bool) {
	for _, line := range lines {
		for f := range strings.SplitSeq(line, ",") {
			f = strings.Trim(f, " \t")
			if f == "" {
				continue
			}
			if f == "*" || !validToken(f) {
				return nil, true
			}
			names = append(names, textproto.CanonicalMIMEHeaderKey(f))
		}
	}
	slices.Sort(names)
	return slices.Compact(names), false
}

// appendVaryKey appends the secondary key suffix for names to dst. An
// absent header differs from an empty one (RFC 9111 §4.1: a field absent
// from one request only matches when absent from the other).
func appendVaryKey(dst []byte, names []string, h http.Header) []byte {
	dst = append(dst, 0)
	for _, n := range names {
		vals, ok := h[n]
		if !ok {
			dst = append(dst, 0)
			continue
		}
		dst = append(dst, 1)
		dst = appendNormalized(dst, vals, n == "Accept-Language")
		dst = append(dst, 0)
	}
	return dst
}

// appendNormalized appends the field lines joined as one list with
// whitespace normalized: members trimmed, empty members dropped, runs of
// spaces and tabs inside a member collapsed to one space (RFC 9111 §4.1
// allows normalizing whitespace before comparing). Bytes 0 and 1 are
// escaped so that the encoding stays unambiguous.
//
// With lang (Accept-Language) it also drops the whitespace around ";" and
// "=" (the weight, RFC 9110 §12.4.2) and folds letters to lower case:
// language ranges compare without regard to case (RFC 4647 §2). The order of the members is kept: RFC
// 9110 gives equal weights no order, but origins commonly pick the first
// listed of equal weight, so "en, de" and "de, en" can get different
// answers.
func appendNormalized(dst []byte, vals []string, lang bool) []byte {
	first := true
	for _, v := range vals {
		for len(v) > 0 {
			m := v
			if i := strings.IndexByte(v, ','); i >= 0 {
				m, v = v[:i], v[i+1:]
			} else {
				v = ""
			}
			m = strings.Trim(m, " \t")
			if m == "" {
				continue
			}
			if !first {
				dst = append(dst, ',')
			}
			first = false
			space := false
			for i := 0; i < len(m); i++ {
				c := m[i]
				switch c {
				case ' ', '\t':
					space = true
					continue
				}
				if space {
					if prev := dst[len(dst)-1]; !lang || (c != ';' && c != '=' && prev != ';' && prev != '=') {
						dst = append(dst, ' ')
					}
					space = false
				}
				switch {
				case lang && 'A' <= c && c <= 'Z':
					dst = append(dst, c+'a'-'A')
				case c == 0:
					dst = append(dst, 1, 2)
				case c == 1:
					dst = append(dst, 1, 1)
				default:
					dst = append(dst, c)
				}
			}
		}
	}
	return dst
}
