package mesh

import (
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/meshd/meshd/proxy"
)

// meshSuffix is the host suffix apps use to call a service through their
// sidecar: http://<service>.mesh/.
const meshSuffix = ".mesh"

// HeaderService carries the service a request is for between mesh hops.
// Only mesh identities can set it: the edge drops every client-supplied
// X-Mesh-* header, and the gateway reads it only on its mTLS listener.
const HeaderService = "X-Mesh-Service"

// normalizeHost lowercases a Host header value and strips its port and a
// trailing dot. It returns "" for a value that is not a plausible host name
// (empty, with characters no DNS name or IP literal has), which routes
// nowhere.
func normalizeHost(h string) string {
	if h == "" || len(h) > 260 {
		return ""
	}
	if h[0] == '[' { // IPv6 literal, never a service
		return ""
	}
	if i := strings.LastIndexByte(h, ':'); i >= 0 {
		port := h[i+1:]
		for j := 0; j < len(port); j++ {
			if port[j] < '0' || port[j] > '9' {
				return ""
			}
		}
		h = h[:i]
	}
	h = strings.TrimSuffix(h, ".")
	if h == "" {
		return ""
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '.':
		case c >= 'A' && c <= 'Z':
		default:
			return ""
		}
	}
	return strings.ToLower(h)
}

// serviceUnder returns S when host is S.<domain> for a single valid label S.
func serviceUnder(host, domain string) (string, bool) {
	if len(host) <= len(domain)+1 || !strings.HasSuffix(host, domain) || host[len(host)-len(domain)-1] != '.' {
		return "", false
	}
	svc := host[:len(host)-len(domain)-1]
	if validLabel(svc) != nil {
		return "", false
	}
	return svc, true
}

// publicService maps a public Host header to the service it names:
// <service>.<publicDomain>, or a domain a service published.
func publicService(host, publicDomain string, domains map[string]string) (string, bool) {
	h := normalizeHost(host)
	if h == "" {
		return "", false
	}
	if svc, ok := domains[h]; ok {
		return svc, true
	}
	return serviceUnder(h, publicDomain)
}

// meshService maps the Host of an app's outbound call, <service>.mesh, to
// the service.
func meshService(host string) (string, bool) {
	h := normalizeHost(host)
	if h == "" {
		return "", false
	}
	return serviceUnder(h, meshSuffix[1:])
}

func errNoHost(host string) error {
	return &proxy.StatusError{Code: http.StatusNotFound,
		Msg: fmt.Sprintf("meshd: no service is published at host %q", truncate(host, 100))}
}

// errNoHealthy is the answer for a service the node knows (or remembers,
// within --service-tombstone) but cannot send to: 503, not 404, because an
// outage is not a misconfiguration. d, when not nil, says what the node saw
// last ("last one, web-eu-1, left 12s ago"); the same line goes into
// Proxy-Status details (RFC 9209 §2.1.5) and Retry-After (RFC 9110
// §10.2.3) tells clients when to look again.
func errNoHealthy(svc string, d *serviceDown, now time.Time) error {
	msg := fmt.Sprintf("no healthy instance of service %s is reachable", svc)
	if r := d.reason(now); r != "" {
		msg = fmt.Sprintf("service %s has no healthy instance (%s)", svc, r)
	}
	return &proxy.StatusError{Code: http.StatusServiceUnavailable, Msg: "meshd: " + msg,
		Details: msg, RetryAfter: downRetryAfter}
}

func errUnknownService(svc string) error {
	return &proxy.StatusError{Code: http.StatusNotFound,
		Msg: fmt.Sprintf("meshd: no service %q in the mesh", svc)}
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}
