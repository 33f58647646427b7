package proxy

import (
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// isHopByHop reports whether the field named k belongs to one connection only
// and must not be forwarded (RFC 9110 §7.6.1). Proxy-Authenticate and
// Proxy-Authorization are addressed to the proxy itself (RFC 9110 §11.7.1,
// §11.7.2), so they are removed too; Proxy-Connection is the pre-standard
// spelling of Connection that some clients still send. The comparison is
// case-insensitive and allocation-free: field names from the wire are
// canonical, but a Route function or middleware may have set any spelling.
func isHopByHop(k string) bool {
	switch len(k) {
	case 2:
		return strings.EqualFold(k, "Te")
	case 7:
		return strings.EqualFold(k, "Upgrade") || strings.EqualFold(k, "Trailer")
	case 10:
		return strings.EqualFold(k, "Connection") || strings.EqualFold(k, "Keep-Alive")
	case 16:
		return strings.EqualFold(k, "Proxy-Connection")
	case 17:
		return strings.EqualFold(k, "Transfer-Encoding")
	case 18:
		return strings.EqualFold(k, "Proxy-Authenticate")
	case 19:
		return strings.EqualFold(k, "Proxy-Authorization")
	}
	return false
}

// hasToken reports whether any of the comma-separated lists in values
// contains token, ignoring case and optional whitespace (RFC 9110 §5.6.1).
// It does not allocate.
func hasToken(values []string, token string) bool {
	for _, v := range values {
		for v != "" {
			var t string
			if i := strings.IndexByte(v, ','); i >= 0 {
				t, v = v[:i], v[i+1:]
			} else {
				t, v = v, ""
			}
			if strings.EqualFold(strings.Trim(t, " \t"), token) {
				return true
			}
		}
	}
	return false
}

// isMeshHeader reports whether k is one of meshd's internal X-Mesh-* fields.
func isMeshHeader(k string) bool {
	const p = "X-Mesh-"
	return len(k) >= len(p) && strings.EqualFold(k[:len(p)], p)
}

// isForwardedHeader reports whether k is a field that describes the client
// connection and is therefore only trusted from verified mesh peers.
func isForwardedHeader(k string) bool {
	switch len(k) {
	case 9:
		return strings.EqualFold(k, "Forwarded")
	case 15:
		return strings.EqualFold(k, "X-Forwarded-For")
	case 16:
		return strings.EqualFold(k, "X-Forwarded-Host")
	case 17:
		return strings.EqualFold(k, "X-Forwarded-Proto")
	}
	return false
}

// keepRequestField reports whether the request field k survives this hop.
// conn holds the values of the incoming Connection field.
func keepRequestField(k string, conn []string, public bool) bool {
	if k == "" || k[0] == ':' {
		// Pseudo-fields (":protocol" of an extended CONNECT, RFC 8441) are
		// not fields at all and never forwarded.
		return false
	}
	if isHopByHop(k) || (len(conn) > 0 && hasToken(conn, k)) {
		return false
	}
	if public && (isMeshHeader(k) || isForwardedHeader(k)) {
		return false
	}
	return true
}

// Extra value slots reserved in the outgoing header's backing array, so that
// the fields this hop adds need no allocation of their own.
const (
	extraVia       = 1
	extraTE        = 1
	extraUA        = 1
	extraForwarded = 4 // X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host, Forwarded
)

// forwardInfo is what this hop adds to an outgoing request.
type forwardInfo struct {
	via    string // "1.1 meshd-edge-eu1"
	public bool
	// Set only when public.
	clientIP string // "" when RemoteAddr is not host:port
	proto    string // "http" or "https"
	host     string // the Host the client asked for
}

// outgoingHeader returns a copy of the incoming request header without
// hop-by-hop fields (and, when public, without fields the client must not
// choose), with Via appended and, when public, X-Forwarded-* and Forwarded
// set. Like http.Header.Clone it allocates the map and one backing array for
// every value (plus one string for Forwarded on a public hop); each value
// slice is capped so that a later append cannot overwrite its neighbour.
func outgoingHeader(in http.Header, fi *forwardInfo) http.Header {
	conn := in["Connection"]
	nv, nk := 0, 0
	for k, vv := range in {
		if keepRequestField(k, conn, fi.public) {
			nv += len(vv)
			nk++
		}
	}
	extra := extraVia + extraTE + extraUA
	if fi.public {
		extra += extraForwarded
	}
	sv := make([]string, 0, nv+extra)
	out := make(http.Header, nk+extra)
	for k, vv := range in {
		if !keepRequestField(k, conn, fi.public) {
			continue
		}
		if k == "Via" {
			// Via is appended below, contiguous with the received values.
			continue
		}
		n := len(sv)
		sv = append(sv, vv...)
		out[k] = sv[n:len(sv):len(sv)]
	}
	// RFC 9110 §7.6.3: append this hop to the received Via list.
	n := len(sv)
	sv = append(sv, in["Via"]...)
	sv = append(sv, fi.via)
	out["Via"] = sv[n:len(sv):len(sv)]

	// TE is hop-by-hop, but "trailers" states that the client (and so this
	// hop, which passes trailers through) accepts trailer fields; gRPC
	// relies on it (RFC 9110 §10.1.4).
	if hasToken(in["Te"], "trailers") {
		sv = append(sv, "trailers")
		out["Te"] = sv[len(sv)-1 : len(sv) : len(sv)]
	}
	// Without a User-Agent field Go's transport would add its own; an empty
	// value makes it send none, so the upstream sees what the client sent.
	if _, ok := out["User-Agent"]; !ok {
		sv = append(sv, "")
		out["User-Agent"] = sv[len(sv)-1 : len(sv) : len(sv)]
	}
	if fi.public {
		// The public edge is where the client address is known for sure:
		// anything the client claimed was dropped above and is replaced
		// with what the connection says.
		if fi.clientIP != "" {
			sv = append(sv, fi.clientIP)
			out["X-Forwarded-For"] = sv[len(sv)-1 : len(sv) : len(sv)]
		}
		sv = append(sv, fi.proto)
		out["X-Forwarded-Proto"] = sv[len(sv)-1 : len(sv) : len(sv)]
		if fi.host != "" {
			sv = append(sv, fi.host)
			out["X-Forwarded-Host"] = sv[len(sv)-1 : len(sv) : len(sv)]
		}
		sv = append(sv, forwardedValue(fi.clientIP, fi.proto, fi.host))
		out["Forwarded"] = sv[len(sv)-1 : len(sv) : len(sv)]
	}
	return out
}

// forwardedValue formats one Forwarded element (RFC 7239 §4). An IPv6
// address is bracketed and quoted (§6); host is always quoted because a port
// separator is not a token character.
func forwardedValue(ip, proto, host string) string {
	var b strings.Builder
	b.Grow(len(ip) + len(proto) + len(host) + 32)
	if ip != "" {
		b.WriteString("for=")
		if strings.IndexByte(ip, ':') >= 0 {
			b.WriteString(`"[`)
			b.WriteString(ip)
			b.WriteString(`]"`)
		} else {
			b.WriteString(ip)
		}
		b.WriteByte(';')
	}
	b.WriteString("proto=")
	b.WriteString(proto)
	if host != "" && isQuotable(host) {
		b.WriteString(`;host="`)
		b.WriteString(host)
		b.WriteByte('"')
	}
	return b.String()
}

// isQuotable reports whether s can sit inside a quoted-string without
// escaping (RFC 9110 §5.6.4). The servers already reject such Host values;
// this keeps forwardedValue safe for any caller.
func isQuotable(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '"' || c == '\\' || c < 0x20 || c == 0x7f {
			return false
		}
	}
	return true
}

// clientIP returns the IP part of a "host:port" remote address without
// allocating, or "" when addr is not of that form. The host must parse as
// an IP address: it is written into X-Forwarded-For and Forwarded, where
// anything else (a quote, a comma) would let it forge entries.
func clientIP(addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return ""
	}
	if _, err := netip.ParseAddr(host); err != nil {
		return ""
	}
	return host
}

// copyResponseHeader copies the upstream response's fields into dst, minus
// hop-by-hop fields, the fields the response's Connection names, and
// Alt-Svc: an upstream's alternative services (RFC 7838 §3) describe the
// upstream, which the client never talks to; the edge advertises its own.
// When public, meshd's internal X-Mesh-* fields are dropped too: they
// describe the mesh (instances, regions) and never leave it.
// The value slices are shared with src: the response belongs to this
// request and is not used after the copy.
func copyResponseHeader(dst, src http.Header, public bool) {
	conn := src["Connection"]
	for k, vv := range src {
		if isHopByHop(k) || (len(conn) > 0 && hasToken(conn, k)) || strings.EqualFold(k, "Alt-Svc") ||
			(public && isMeshHeader(k)) {
			continue
		}
		dst[k] = vv
	}
}

// appendVia returns the Via values of a response with via appended, in
// buf's array when they fit (the caller's, per request), else in a new
// slice: never in the received slice, which may be shared.
func appendVia(buf []string, received []string, via string) []string {
	out := buf[:0]
	if len(received)+1 > cap(buf) {
		out = make([]string, 0, len(received)+1)
	}
	out = append(out, received...)
	return append(out, via)
}

// isToken reports whether s is a non-empty RFC 9110 §5.6.2 token (a field
// name, a method, a Via pseudonym).
func isToken[T string | []byte](s T) bool {
	if len(s) == 0 {
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

// TraceID returns the trace ID of the request's W3C traceparent field
// (Trace Context §3.2: version-traceid-parentid-flags in lowercase hex),
// or "" when there is none or it is malformed. It does not allocate: the
// ID is a substring of the field's value. meshd hops pass the field on as
// the tracing of each hop leaves it (none: as the caller sent it), so this
// is the ID of the request's trace wherever the request is.
func TraceID(h http.Header) string {
	v := h["Traceparent"]
	if len(v) != 1 { // several: no one trace they name
		return ""
	}
	tp := v[0]
	if len(tp) < 55 || tp[2] != '-' || tp[35] != '-' || tp[52] != '-' ||
		len(tp) > 55 && (tp[:2] == "00" || tp[55] != '-') || tp[:2] == "ff" {
		return ""
	}
	if !isLowerHex(tp[:2]) || !isLowerHex(tp[3:35]) || !isLowerHex(tp[36:52]) || !isLowerHex(tp[53:55]) ||
		tp[3:35] == "00000000000000000000000000000000" || tp[36:52] == "0000000000000000" {
		return ""
	}
	return tp[3:35]
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}
