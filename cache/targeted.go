package cache

import (
	"net/http"
	"strings"
)

// A CDN may be told apart from other caches. RFC 9213 gives it
// CDN-Cache-Control, a targeted field with Cache-Control's directives; the
// older W3C Edge Architecture note gives surrogates Surrogate-Control,
// whose directives may name the device they are for. meshd's edge is such
// a cache, so its target list is [CDN-Cache-Control, Surrogate-Control]:
// the first of them that is present, valid and says something to meshd
// decides, and then Cache-Control and Expires are ignored (RFC 9213 §2.1).
// Both fields still reach the client: they may be meant for a cache
// further down.

// responseCC returns the directives that govern storing and reusing a
// response in this cache. device is the cache's own Surrogate-Capability
// token.
func responseCC(h http.Header, device string) respCC {
	if v, ok := h["Cdn-Cache-Control"]; ok {
		if c, ok := parseTargetedCC(v); ok {
			return c
		}
	}
	if v, ok := h["Surrogate-Control"]; ok {
		if c, ok := parseSurrogateControl(v, device); ok {
			return c
		}
	}
	return parseRespCC(h["Cache-Control"])
}

// parseTargetedCC parses CDN-Cache-Control, an RFC 8941 Dictionary
// (RFC 9213 §2.1). ok is false when the field is empty, is not a valid
// Dictionary, or gives a known directive a value of the wrong type: the
// field is then ignored as if absent (RFC 9213 §2.1).
func parseTargetedCC(lines []string) (respCC, bool) {
	c := respCC{maxAge: absent, sMaxAge: absent, swr: absent, sie: absent, targeted: true}
	found := false
	for _, line := range lines {
		s := line
		for {
			s = strings.TrimLeft(s, " \t")
			if s == "" {
				break
			}
			key, val, rest, ok := sfMember(s)
			if !ok {
				return respCC{}, false
			}
			found = true
			if p := c.delta(key); p != nil {
				n, ok := sfNonNegInt(val)
				if !ok {
					return respCC{}, false
				}
				*p = n
			} else if p := c.flag(key); p != nil {
				// A Boolean, or for no-cache and private a String of
				// field names (RFC 9213 §2.1); either way the directive
				// holds, except for an explicit ?0.
				*p = *p || val != "?0"
			}
			s = strings.TrimLeft(rest, " \t")
			if s == "" {
				break
			}
			if s[0] != ',' {
				return respCC{}, false
			}
			s = s[1:]
			if strings.TrimLeft(s, " \t") == "" {
				return respCC{}, false // trailing comma
			}
		}
	}
	return c, found
}

// delta returns the numeric directive named key, nil for another name.
func (c *respCC) delta(key string) *int64 {
	switch key {
	case "max-age":
		return &c.maxAge
	case "s-maxage":
		return &c.sMaxAge
	case "stale-while-revalidate":
		return &c.swr
	case "stale-if-error":
		return &c.sie
	}
	return nil
}

// flag returns the boolean directive named key, nil for another name.
func (c *respCC) flag(key string) *bool {
	switch key {
	case "no-store":
		return &c.noStore
	case "no-cache":
		return &c.noCache
	case "private":
		return &c.private
	case "public":
		return &c.public
	case "must-revalidate":
		return &c.mustRevalidate
	case "proxy-revalidate":
		return &c.proxyRevalidate
	}
	return nil
}

// sfMember scans one Dictionary member: key [ "=" bare-item ] and its
// parameters (RFC 8941 §3.2), returning the key, the bare item ("?1"
// when there is none) and what follows.
func sfMember(s string) (key, val, rest string, ok bool) {
	i := 0
	if i >= len(s) || !(s[i] >= 'a' && s[i] <= 'z' || s[i] == '*') {
		return "", "", "", false
	}
	for i < len(s) && sfKeyChar(s[i]) {
		i++
	}
	key, s = s[:i], s[i:]
	val = "?1"
	if s != "" && s[0] == '=' {
		n := sfBareItem(s[1:])
		if n <= 0 {
			return "", "", "", false
		}
		val, s = s[1:1+n], s[1+n:]
	}
	// Parameters: *( ";" *SP key [ "=" bare-item ] ), ignored.
	for s != "" && s[0] == ';' {
		s = strings.TrimLeft(s[1:], " ")
		j := 0
		if j >= len(s) || !(s[j] >= 'a' && s[j] <= 'z' || s[j] == '*') {
			return "", "", "", false
		}
		for j < len(s) && sfKeyChar(s[j]) {
			j++
		}
		s = s[j:]
		if s != "" && s[0] == '=' {
			n := sfBareItem(s[1:])
			if n <= 0 {
				return "", "", "", false
			}
			s = s[1+n:]
		}
	}
	return key, val, s, true
}

func sfKeyChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.' || c == '*'
}

// sfBareItem returns the length of the bare item at the start of s
// (RFC 8941 §3.3), or 0 when there is none.
func sfBareItem(s string) int {
	if s == "" {
		return 0
	}
	switch c := s[0]; {
	case c == '-' || c >= '0' && c <= '9':
		i := 0
		if c == '-' {
			i++
		}
		start, dot := i, -1
		for i < len(s) && (s[i] >= '0' && s[i] <= '9' || s[i] == '.' && dot < 0) {
			if s[i] == '.' {
				dot = i
			}
			i++
		}
		digits := i - start
		if digits == 0 || (dot < 0 && digits > 15) || (dot >= 0 && (dot-start > 12 || i-dot-1 < 1 || i-dot-1 > 3)) {
			return 0
		}
		return i
	case c == '"':
		for i := 1; i < len(s); i++ {
			switch {
			case s[i] == '\\':
				if i+1 >= len(s) || (s[i+1] != '"' && s[i+1] != '\\') {
					return 0
				}
				i++
			case s[i] == '"':
				return i + 1
			case s[i] < 0x20 || s[i] > 0x7e:
				return 0
			}
		}
		return 0
	case c == '?':
		if len(s) >= 2 && (s[1] == '0' || s[1] == '1') {
			return 2
		}
		return 0
	case c == ':':
		if j := strings.IndexByte(s[1:], ':'); j >= 0 {
			return j + 2
		}
		return 0
	case c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '*':
		i := 1
		for i < len(s) && (validToken(s[i:i+1]) || s[i] == ':' || s[i] == '/') {
			i++
		}
		return i
	}
	return 0
}

// sfNonNegInt parses a non-negative Integer bare item as delta-seconds,
// clamped like Cache-Control's (RFC 9111 §1.2.2).
func sfNonNegInt(v string) (int64, bool) {
	if v == "" || v[0] < '0' || v[0] > '9' || strings.IndexByte(v, '.') >= 0 {
		return 0, false
	}
	return parseDelta(directive{value: v, hasValue: true})
}

// parseSurrogateControl parses Surrogate-Control (W3C Edge Architecture
// Specification 1.0 §3): directives max-age=N[+M], no-store and
// no-store-remote, each optionally ";device" for one device only.
// Directives for another device are skipped; ok is false when none is
// left for this one.
func parseSurrogateControl(lines []string, device string) (respCC, bool) {
	c := respCC{maxAge: absent, sMaxAge: absent, swr: absent, sie: absent, targeted: true}
	found := false
	for _, line := range lines {
		for {
			d, rest, ok := nextDirective(line)
			if !ok {
				break
			}
			line = rest
			v := d.value
			name := d.name
			// The target follows ";" after the value, or after the name.
			target := ""
			if i := strings.IndexByte(name, ';'); i >= 0 {
				name, target = name[:i], name[i+1:]
			} else if i := strings.IndexByte(v, ';'); i >= 0 {
				v, target = v[:i], v[i+1:]
			}
			if target != "" && !strings.EqualFold(strings.TrimSpace(target), device) {
				continue
			}
			switch {
			case strings.EqualFold(name, "max-age"):
				if i := strings.IndexByte(v, '+'); i >= 0 {
					v = v[:i] // the +M part is for removal, not freshness
				}
				n, ok := parseDelta(directive{value: v, hasValue: d.hasValue})
				if !ok {
					c.invalid = true
				}
				c.maxAge = n
				found = true
			case strings.EqualFold(name, "no-store"), strings.EqualFold(name, "no-store-remote"):
				c.noStore = true
				found = true
			}
		}
	}
	return c, found
}
