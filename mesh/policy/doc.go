// Package policy is the pure core of meshd's traffic policy: it parses
// and validates the policy document, signs and verifies it, and picks
// the route for a request. Bytes and keys go in, decisions come out; it
// imports no other meshd package, only the standard library and the
// YAML parser, so `meshd check policy`, every node and the fuzzers read
// a document the same way.
//
// # The document
//
// An operator writes one YAML document for the whole mesh
// (testdata/example.yaml is a complete one):
//
//	version: 7                  # optional; if present, the envelope's version
//	services:
//	  web:
//	    domains: [www.example.com, example.com]
//	    split: {v1: 90, v2: 10}
//	    timeouts: {connect: 1s, first-byte: 5s, total: 30s, idle: 60s}
//	    retries: {attempts: 3, on: [connect-failure, 503]}
//	    routes:
//	      - name: api-canary
//	        match: {path-prefix: /api, headers: {x-canary: "1"}}
//	        subset: v2
//	      - match: {path: /login, methods: [POST]}
//	        timeout: 500ms
//
// Each service names the public domains it owns (no domain has two
// owners) and its settings: split (weights over subsets of its
// instances; absent = any instance), timeout (shorthand for
// timeouts.total) and timeouts, retries, rate-limit, concurrency,
// outlier, failover, affinity, mirror and fault. Then routes: rules
// tried in order, the first whose match holds wins; a request no rule
// matches takes the service's own settings (Service.Default).
//
// Values: durations in Go syntax ("250ms", "1m30s"), percentages as
// "20%" (the fields named percent also take a bare number), rates as
// "50/s", "3000/m" or "10/h", sizes as "64KiB", "1MiB" or a number of
// bytes. Service, subset and route names are DNS labels; domains are
// lowercase DNS names. Every number has bounds, and a document is at
// most 256 KiB, 1000 services and 100 rules a service.
//
// The document is strict: an unknown field, a duplicate key, a second
// YAML document, an anchor, alias or tag is an error, and every error
// names the file position and the field, for example
//
//	policy.yaml:12:7: services.web.routes[1].match.headers.x-env: unknown matcher "suffix" (want exact, prefix or regex)
//
// A policy is read by people before it is signed; what they read must
// be all that every node enforces.
//
// # Matching
//
// A match holds when all its fields hold: path (exact), path-prefix,
// methods (uppercase; any of the list), headers (each header: a string
// for an exact value, or one of exact, prefix, regex). A rule without
// match takes every request, so no rule may follow it.
//
// path-prefix matches whole path segments: /api matches /api, /api/ and
// /api/users, never /apiary, so that a rule cannot catch a neighbouring
// API by accident (Envoy's path_separated_prefix; its plain prefix is a
// common source of such mistakes). A prefix ending in / (/static/)
// matches only what lies below it.
//
// Header names are case-insensitive. A header matcher holds when any
// one of the request's values for that header holds (values are
// compared as received, one field line each, never joined); an absent
// header never matches. Regular expressions are RE2 (Go's regexp):
// linear time, unanchored unless written with ^ and $, at most 1 KiB
// and bounded in compiled size. The host is not a header to match: the
// domains decide the service.
//
// # Inheritance and defaults
//
// A rule inherits every setting of its service that it does not set
// itself, so a Route is always complete. timeouts are inherited field
// by field (a rule that sets timeout keeps the service's connect
// timeout); every other block is taken as a whole: a rule's
// retries: {attempts: 1} means one attempt with the default conditions,
// not the service's. A rule sets subset or split or neither (then it
// keeps the service's split). concurrency, outlier and failover belong
// to the service's instances, not to a class of requests: only a
// service sets them.
//
// Where nothing is written: retries 2 attempts (one retry) on
// connect-failure and refused-stream (the failures after which an
// instance cannot have acted on the request), budget 20% of requests,
// at least 10 a second, backoff 25ms to 250ms, request bodies up to
// 64 KiB replayed; outlier detection ejects an instance after 5
// consecutive failures for 30s, at most 10% of instances; failover
// overprovisioning 1.4. No timeout, rate limit, concurrency cap,
// affinity, mirror or fault unless written.
//
// # Signature
//
// The document travels by gossip to every node inside a Signed
// envelope: the YAML exactly as written, its version, the signing time,
// the operator's certificate chain and a signature. The operator's
// certificate is issued by meshd's CA for the SPIFFE ID
// spiffe://<trust-domain>/operator/<name>; services, gateways and edges
// hold certificates of the same CA, but only an operator identity may
// sign policy. The signature covers a context string used for nothing
// else, the version, the signing time and the SHA-256 of the document,
// so none of them can change without Verify refusing the envelope.
// Verify checks the chain against the trust bundle (never the system
// roots), the identity, the validity at the time given, the signature
// and then the document, and says which failed. The version orders
// documents, so that a node can keep the newest it has verified; a
// document's own version: field, when present, must agree with the
// envelope's.
package policy
