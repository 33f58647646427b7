package proxy

import (
	"net/http"
	"strconv"
	"strings"
)

// RedirectHTTPS returns the handler of a public plain-HTTP listener: a
// request for which exempt returns true is served by next (ACME HTTP-01
// challenges under /.well-known/acme-challenge/, hosts allowed to stay on
// plain HTTP); every other request gets 308 Permanent Redirect to the same
// host and request target on https. 308 rather than 301 keeps the method
// and body (RFC 9110 §15.4.9), so a POST sent to http is re-sent, not
// turned into a GET.
//
// httpsPort is the public HTTPS port put in Location; 0 or 443 leaves it
// out. exempt nil exempts nothing; next nil answers exempt requests with 404.
// A request whose Host is not a valid host (see validHost) gets 400: a
// redirect must not point at whatever a client wrote there.
func RedirectHTTPS(httpsPort int, exempt func(*http.Request) bool, next http.Handler) http.Handler {
	suffix := ""
	if httpsPort != 0 && httpsPort != 443 {
		suffix = ":" + strconv.Itoa(httpsPort)
	}
	if next == nil {
		next = http.NotFoundHandler()
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if exempt != nil && exempt(r) {
			next.ServeHTTP(w, r)
			return
		}
		if !validHost(r.Host) {
			rejectRequest(w, r, http.StatusBadRequest, "meshd: invalid Host")
			return
		}
		host, _, _ := splitHostPort(r.Host)
		target := r.URL.RequestURI()
		if r.URL.Opaque != "" || !strings.HasPrefix(target, "/") {
			// "OPTIONS *" and other non-path targets have no https
			// counterpart worth redirecting to.
			target = "/"
		}
		loc := "https://" + strings.ToLower(host) + suffix + target
		hdr := w.Header()
		hdr["Location"] = []string{loc}
		hdr["Content-Type"] = []string{"text/plain; charset=utf-8"}
		w.WriteHeader(http.StatusPermanentRedirect)
		if r.Method != http.MethodHead {
			_, _ = w.Write([]byte("meshd: use https\n"))
		}
	})
}
