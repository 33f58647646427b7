// Package cache is meshd's shared HTTP cache (RFC 9111, with RFC 5861's
// stale-while-revalidate and stale-if-error and RFC 9211's Cache-Status)
// as http.Handler middleware on a ristretto store. It knows nothing of the
// mesh: it wraps any handler, and whatever that handler answers is the
// origin's response.
//
//	s := &cache.Store{MaxBytes: 256 << 20}
//	if err := s.Start(ctx); err != nil { ... }
//	defer s.Close()
//	h := s.Middleware(upstream)
//
// # What is stored
//
// Only final, full responses to GET (RFC 9111 §3; a status code meshd does
// not know needs explicit freshness and no must-understand, §5.2.2.3),
// and only what a shared cache may keep: never no-store (unless
// must-understand vouches for the status, §5.2.2.3), never private;
// private="field" and no-cache="field" (RFC 9111 §5.2.2.7, §5.2.2.4)
// store the response without the named fields, and then reuse it
// without validation like any other. A
// response is stored when it has explicit freshness (s-maxage, max-age,
// Expires), is public, or has a status code cacheable by default (RFC
// 9110 §15.1). Full responses answer single-range requests. A 206 to a
// client's single-range GET for a URL with nothing stored is kept as
// partial content (RFC 9111 §3.3) when it would be storable as a 200, has
// no Vary, one Content-Range of a known complete length and a matching
// Content-Length; while fresh it answers later single ranges that lie
// inside it, and anything else goes to the origin (parts are not combined
// or revalidated, and a full response, once stored, wins). Bodies larger than Store.MaxObject stream
// through without being buffered; so does a response whose length is
// unknown once it grows past MaxObject.
//
// Authorization (RFC 9111 §3.5): a response to a request that carried
// Authorization is stored only when it says public, s-maxage or
// must-revalidate. Unless it is public it gets no heuristic freshness
// (meshd's choice; the RFC would allow one): must-revalidate alone means
// every reuse is revalidated with the origin, for the request at hand,
// and never served stale. A stored response can answer a request with
// Authorization, as the RFC allows; origins that personalize by
// credentials must say private or no-store.
//
// Cookie (stricter than RFC 9111): a response to a request that carried
// Cookie is stored only when it explicitly allows a shared cache: public,
// s-maxage, or max-age (private is never stored). Heuristic freshness and
// Expires do not make it storable, and unless it is public it gets no
// heuristic freshness either. An origin that answers a signed-in
// user's request with Last-Modified and no Cache-Control has said nothing
// about sharing, and the page is often that user's own: stored, it would
// be served to the next visitor, fresh and, once the origin is down,
// stale. Varnish's built-in policy does not even look up such requests.
// A response stored under explicit permission is shared like any other,
// stale included: the origin said it may be. Stored responses still
// answer requests with Cookie.
//
// Set-Cookie (stricter than RFC 9111): a response with Set-Cookie is
// never stored, as nginx and Varnish do by default: it is often the page
// that signs one user in. With Store.StoreSetCookie it is stored when it
// is explicitly public or names Set-Cookie in private="..." or
// no-cache="...", and then without its Set-Cookie field: the client that
// caused the fetch gets the cookie, later clients get the shared
// representation and never another user's cookie. Replaying one user's
// cookies to everybody is the classic shared-cache leak; "public", or
// withholding the cookie by name, is the origin's explicit statement that
// the rest of the response is shareable.
//
// CDN-Cache-Control (RFC 9213) and then Surrogate-Control (W3C Edge
// Architecture; directives for another device token are skipped, and
// requests to the origin announce Surrogate-Capability with Store.Name as
// the token) take precedence over Cache-Control and Expires when present
// and valid; an invalid one is ignored as if absent. Both still reach the
// client.
//
// # Keys and Vary
//
// The key is scheme://host/target: the scheme from Store.Scheme (default
// r.TLS), the host in lower case without a default port, and the target
// exactly as sent (queries kept as sent). A response with Vary is stored
// under a secondary key made of the nominated request fields after
// whitespace normalization; Vary: * is never stored. Several variants of a
// URL are kept side by side.
//
// # Freshness, validation and staleness
//
// HTTP-dates are parsed strictly (RFC 9110 §5.6.7); an invalid Expires
// means already expired (RFC 9111 §5.3). Freshness is s-maxage, else
// max-age, else Expires minus Date, else 10%
// of the time since Last-Modified (capped by Store.MaxHeuristic) for
// status codes that allow heuristics. Age is computed as RFC 9111 §4.2.3
// prescribes and sent in Age. Conflicting duplicate max-age or s-maxage
// values, or values that are not delta-seconds, make the response stale.
// Request directives max-age, min-fresh, max-stale, no-cache (and Pragma:
// no-cache without Cache-Control), no-store and only-if-cached (504 when
// nothing stored can answer) are honoured. Stale responses with an ETag or
// Last-Modified are revalidated with a conditional request; a 304 updates
// the stored header fields (except Content-Length). So does a 200 to a
// HEAD that went to the origin, when its ETag, Last-Modified and
// Content-Length (those it has) match the stored GET response; when they
// do not, the stored response is removed (RFC 9111 §4.3.5). Clients' own
// If-None-Match and If-Modified-Since are answered 304 from fresh entries;
// If-Match and If-Unmodified-Since go to the origin.
// stale-while-revalidate serves the stale response and revalidates once in
// the background; stale-if-error serves it when the origin answers 500,
// 502, 503 or 504. When the origin cannot be reached at all, the cache is
// disconnected (RFC 9111 §4.2.4) and serves the stale response it still
// keeps, without stale-if-error: meshd knows this from a 5xx carrying a
// Proxy-Status member with an error parameter (RFC 9209), which a proxy
// on the way, meshd's own included, adds to an error it answered itself
// (connection_terminated, connection_refused, http_response_timeout...).
// Such an error is never stored. A 5xx without one is the origin's own
// answer. must-revalidate, proxy-revalidate and s-maxage forbid serving
// stale, and so does no-cache in the response or the request.
//
// A successful (2xx, 3xx) unsafe request invalidates its target URI and
// the Location and Content-Location URIs on the same host (RFC 9111 §4.4).
//
// Concurrent misses for one URL make one upstream request; the others
// wait up to Store.CollapseWait and are answered from its response, or go
// upstream themselves when it cannot be shared.
//
// # Cache-Status
//
// Every GET and HEAD response carries a Cache-Status member named
// Store.Name (default "meshd"), appended after any the origin sent:
//
//	meshd; hit                                      fresh, from the store
//	meshd; hit; ttl=-5                              stale, allowed by max-stale
//	meshd; hit; ttl=-5; detail=stale-while-revalidate
//	meshd; fwd=uri-miss; stored                     nothing stored; the response was stored
//	meshd; fwd=vary-miss                            stored variants did not match
//	meshd; fwd=stale; fwd-status=304                revalidated
//	meshd; fwd=stale; fwd-status=503; detail=stale-if-error
//	meshd; fwd=stale; fwd-status=502; detail=disconnected   the origin was unreachable
//	meshd; fwd=request                              request directives forced forwarding
//	meshd; fwd=uri-miss; collapsed                  answered by a concurrent request's fetch
//	meshd; fwd=method                               not GET or HEAD
//	meshd; fwd=bypass                               no usable key (no Host)
//	meshd; detail=only-if-cached                    the 504 of only-if-cached
//
// "stored" means the response was handed to the store: its admission
// policy may still refuse it, which never affects the response itself.
//
// # Purge and tags
//
// PurgeURL, PurgePrefix and PurgeTag remove entries and report how many.
// Tags come from the origin's Cache-Tag (comma separated) and
// Surrogate-Key (space separated) fields, which never reach the client.
// ristretto keeps only key hashes, so the Store keeps an index of full
// keys and tags beside it, maintained from ristretto's OnExit callback so
// that evictions, rejections and replacements keep it exact. The same
// index drives expiry: entries are stored without a ristretto TTL (whose
// check reads the clock inside every Get) and a sweep once a minute
// removes those past freshness, stale-while-revalidate/stale-if-error and
// Store.KeepStale.
//
// # Hot path
//
// A hit builds its key in a pooled buffer, makes one or two ristretto Gets
// (plus one per Vary), compares the full key, and writes the stored header
// slices and body: no lock of its own and no allocation beyond what the
// ResponseWriter does (the Age value is shared by all hits in the same
// second).
package cache
