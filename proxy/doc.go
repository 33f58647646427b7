// Package proxy is meshd's data plane: listeners ([Server]), the forwarding
// handler ([Handler]), pools of reused upstream connections ([Pool]) and the
// header hygiene every hop applies. quic-go (HTTP/3) is used here and in no
// other meshd package.
//
// The package knows nothing about roles, gossip or SPIFFE. Callers hand it
// *tls.Config values that already verify the peer's identity, and a Route
// function that turns a request into candidate [Upstream] values. Everything
// on the request path is lock-free: counters are atomics, the pool's map of
// transports is a sync.Map that is only written when an upstream is first used
// or forgotten, and the only per-request state is one allocation that holds
// the outgoing request.
//
// What a hop does to a request (RFC 9110 §7.6):
//
//   - hop-by-hop fields are removed in both directions: Connection and every
//     field it names, Keep-Alive, Proxy-Connection, Proxy-Authenticate,
//     Proxy-Authorization, TE (except "trailers"), Trailer, Transfer-Encoding
//     and Upgrade (§7.6.1);
//   - "<received-protocol> <Via>" is appended to Via on the forwarded request
//     and on the forwarded response (§7.6.3);
//   - on a public listener (Handler.Public) client-supplied X-Mesh-* fields
//     are dropped (and so are the upstream's X-Mesh-* response fields) and
//     X-Forwarded-For/-Proto/-Host and Forwarded (RFC 7239)
//     are set from the real connection; on mesh hops they are kept, because
//     they come from a peer whose identity mTLS has verified.
//
// Upstream connections: a request without a body and with an idempotent
// method (GET, HEAD, OPTIONS, TRACE, PUT, DELETE) to an HTTP/1.1 upstream
// takes a fast path (h1.go) that writes the request and reads the response
// on the handler's goroutine over a pool of kept-alive connections, with Go's
// own wire code (http.Request.Write, http.ReadResponse); it costs a fraction
// of http.Transport's per-request goroutine hand-offs. Everything else
// (bodies, other methods, HTTP/2 upstreams) goes through http.Transport.
//
// Bodies are streamed in both directions through pooled 32 KiB buffers, so
// memory use does not grow with body size.
//
// CONNECT and protocol upgrades (WebSocket) are tunnels (tunnel.go): routed
// like requests, carried as a CONNECT stream over an HTTP/2 upstream or on a
// connection of their own over HTTP/1.1, to a Raw upstream as plain TCP;
// half-closes travel end to end, and a tunnel idle for
// Handler.TunnelIdleTimeout is closed. A public listener refuses CONNECT
// (405): an edge is not an open proxy.
//
// Responses without a declared length, and event streams, are flushed as
// each piece arrives, and a request body and its response stream at once
// (full duplex, as gRPC's bidirectional calls need) on every listener,
// meshd's HTTP/1.1 server included; trailers pass in HTTP/1.1's chunked
// framing as in HTTP/2's. A plain upstream with Upstream.H2C speaks HTTP/2
// with prior knowledge (a gRPC server), and a plain Server with H2C
// accepts it beside HTTP/1.1 (h2c.go).
//
// # Listeners
//
// A [Server] serves HTTP/1.1, or TLS with HTTP/2 and HTTP/1.1 by ALPN, and
// with Server.HTTP3 also HTTP/3 (quic-go) on UDP at the same address and
// port, advertised by Alt-Svc on TCP responses. 0-RTT is off unless
// Server.Allow0RTT; then only GET, HEAD and OPTIONS are served from early
// data and other methods get 425 (RFC 8470).
//
// Server.Public marks a listener that hostile clients reach. It turns on,
// at documented defaults, a per-client-IP connection limit (closed at
// accept), a request body size limit (413) and a minimum body rate (408),
// and rejects with 400 invalid Host values, HTTP/2 Host fields that differ
// from :authority and absolute-form targets with userinfo, another scheme
// or another host than the TLS server name. HTTP/1.1 is meshd's own server
// (h1server.go, h1parse.go): it bounds header size and time, refuses a
// request framed by both Content-Length and Transfer-Encoding, differing
// Content-Lengths, codings other than a final chunked, obs-fold and bare
// CR before any handler runs, and drops a client that takes no response
// bytes for Server.SendTimeout. HTTP/2 rapid reset and CONTINUATION floods
// are bounded by Go's HTTP/2 server; h2abuse_test.go shows it. [RedirectHTTPS] is the
// handler of the public plain-HTTP listener.
//
// Call policy: Handler.Policy may give a request a [CallPolicy] (retry.go,
// policy.go): how many candidates it may try and after which failures
// (connect failure, refused stream, 502, 503, 504, first-byte timeout),
// a jittered exponential back-off between tries, a [RetryBudget] shared by
// a route that caps retries at a fraction of its requests, a small request
// body kept in memory so that it can be sent again, Retry-After honoured,
// connect, first-byte and total timeouts, and outlier ejection by an
// [OutlierPolicy] (Envoy's defaults). Without a policy the Handler keeps
// its own rules (Handler.MaxAttempts, EjectAfter).
//
// Errors are mapped to the client-facing status in one function (classify):
// a *StatusError chosen by the Route function keeps its status and message,
// timeouts become 504, a client that went away is recorded as 499 with
// nothing written, and everything else becomes 502. Details go to the log,
// never to the client.
package proxy
