// Package proxy is meshd's data plane: listeners ([Server]), the forwarding
// handler ([Handler]), pools of reused upstream connections ([Pool]) and the
// header hygiene every hop applies.
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
//     are dropped and X-Forwarded-For/-Proto/-Host and Forwarded (RFC 7239)
//     are set from the real connection; on mesh hops they are kept, because
//     they come from a peer whose identity mTLS has verified.
//
// Bodies are streamed in both directions through pooled 32 KiB buffers, so
// memory use does not grow with body size. Protocol upgrades (WebSocket) and
// CONNECT tunnels are not forwarded yet: they are answered with 501.
//
// Errors are mapped to the client-facing status in one function (classify):
// a *StatusError chosen by the Route function keeps its status and message,
// timeouts become 504, a client that went away is recorded as 499 with
// nothing written, and everything else becomes 502. Details go to the log,
// never to the client.
package proxy
