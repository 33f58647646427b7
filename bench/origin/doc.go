// Command origin is the application behind every server in meshd's
// benchmarks (bench/edge-tls.sh and bench/cache-hits.sh). meshd's edge,
// nginx, Caddy and Varnish all forward to the same origin process, so the
// origin's own cost is the same for each and drops out of the ratios.
//
// It serves fixed bodies from memory, built once at start:
//
//	/1k, /100k                   1 KiB and 100 KiB, Cache-Control: public, max-age=3600
//	/nostore/1k, /nostore/100k   the same bodies with Cache-Control: no-store
//	/healthz                     200, empty body
//	/_count                      number of body responses served so far
//
// The cacheable objects carry a strong ETag and a fixed Last-Modified so a
// cache can revalidate them (RFC 9111 §4.3); the benchmark never lets them
// go stale. /_count lets the cache benchmark prove that a measured round
// was served from cache: the count must not grow while hits are measured.
//
// origin -free-ports N prints N loopback ports that are free for both TCP
// and UDP (meshd binds a UDP socket beside some TCP listeners: HTTP/3 on
// the public HTTPS port, memberlist on its gossip ports), so the shell
// scripts need no other helper to pick ports.
package main
