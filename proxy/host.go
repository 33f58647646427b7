package proxy

import (
	"net/netip"
	"strings"
)

// validHost reports whether h is an acceptable Host (or :authority) on a
// public listener: uri-host [ ":" port ] (RFC 9110 §7.2, RFC 3986 §3.2.2),
// narrowed to what names a real HTTP origin:
//
//   - an IP-literal "[v6]" holding an IPv6 address without zone, an IPv4
//     address, or a DNS name of labels made of letters, digits, '-' and
//     '_' (1 to 63 bytes each, at most 253 bytes, one trailing dot
//     allowed);
//   - a port, when present, of decimal digits between 1 and 65535.
//
// Go's servers accept more (percent-encoded and sub-delim characters, empty
// labels, "host:" with an empty port): legal URI syntax that no browser
// sends, which a cache, a log or a router may read differently from the
// next hop. Userinfo ("user@host") is rejected: RFC 9110 §4.2.4 says to
// treat it as an error.
func validHost(h string) bool {
	host, port, ok := splitHostPort(h)
	if !ok {
		return false
	}
	if port != "" && !validPort(port) {
		return false
	}
	if strings.HasPrefix(host, "[") {
		a, err := netip.ParseAddr(host[1 : len(host)-1])
		return err == nil && a.Is6() && a.Zone() == ""
	}
	return validDNSName(host)
}

// splitHostPort splits h into host and port ("" when absent) without
// allocating. A bracketed host keeps its brackets. ok is false when a ':'
// follows no port, when a bracket is unbalanced, or when an unbracketed host
// holds a ':'.
func splitHostPort(h string) (host, port string, ok bool) {
	if h == "" {
		return "", "", false
	}
	if h[0] == '[' {
		end := strings.IndexByte(h, ']')
		if end < 0 {
			return "", "", false
		}
		host, rest := h[:end+1], h[end+1:]
		if rest == "" {
			return host, "", true
		}
		if rest[0] != ':' || len(rest) == 1 {
			return "", "", false
		}
		return host, rest[1:], true
	}
	i := strings.IndexByte(h, ':')
	if i < 0 {
		return h, "", true
	}
	if i == len(h)-1 || strings.IndexByte(h[i+1:], ':') >= 0 {
		return "", "", false
	}
	return h[:i], h[i+1:], true
}

// validPort reports whether p is a decimal port 1–65535.
func validPort(p string) bool {
	if p == "" || len(p) > 5 {
		return false
	}
	n := 0
	for i := 0; i < len(p); i++ {
		c := p[i]
		if c < '0' || c > '9' {
			return false
		}
		n = n*10 + int(c-'0')
	}
	return n >= 1 && n <= 65535
}

// validDNSName reports whether s is a DNS name (or dotted IPv4 address) as
// described at validHost.
func validDNSName(s string) bool {
	s = strings.TrimSuffix(s, ".")
	if s == "" || len(s) > 253 {
		return false
	}
	label := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '.':
			if label == 0 {
				return false
			}
			label = 0
			continue
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_':
		default:
			return false
		}
		label++
		if label > 63 {
			return false
		}
	}
	return label > 0
}

// hostName returns h without its port and trailing dot, for comparing the
// host a request names with the TLS server name.
func hostName(h string) string {
	host, _, ok := splitHostPort(h)
	if !ok {
		return h
	}
	return strings.TrimSuffix(host, ".")
}
