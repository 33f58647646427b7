package proxy

import (
	"crypto/tls"
	"net/http"
)

// Upstream is one place a request can be forwarded to. Values are built by
// the caller once per catalog change and shared read-only by every request,
// so describing an upstream costs nothing per request. An Upstream must not
// be modified once it has been handed to a Handler or a Pool.
type Upstream struct {
	// Key identifies the connection pool; it is required. Upstreams with
	// equal Keys share connections, so equal Keys must mean equal Addr and
	// TLS, e.g. "10.0.0.5:8443|spiffe://td/service/web".
	Key string
	// Addr is the "host:port" to dial; it is required.
	Addr string
	// TLS is the client configuration for the upstream connection. Nil
	// means plain HTTP/1.1 (a sidecar talking to its app on 127.0.0.1).
	// Otherwise the configuration must already verify the peer's identity
	// (meshd's configurations check the SPIFFE ID); it is not modified.
	TLS *tls.Config
	// Name is used in logs only, e.g. the instance or gateway name.
	// Default: Addr.
	Name string
	// HTTP1 makes a TLS upstream speak HTTP/1.1 even when Pool.HTTP2 is
	// set: for nearby upstreams, where a connection per concurrent request
	// is cheap and HTTP/1.1 costs less CPU per request (see Pool.HTTP2).
	// Default false: the Pool decides.
	HTTP1 bool
}

func (u *Upstream) name() string {
	if u.Name != "" {
		return u.Name
	}
	return u.Addr
}

// StatusError lets a Route function choose the status and the one-line
// message the client sees, e.g. 404 `meshd: no service for host "x"` or 503
// "meshd: no healthy instance of web". Code must be a 4xx or 5xx status;
// any other value is answered with 502.
type StatusError struct {
	Code int
	Msg  string
}

// Error returns the message, or the status text when Msg is empty.
func (e *StatusError) Error() string {
	if e.Msg != "" {
		return e.Msg
	}
	return http.StatusText(e.Code)
}
