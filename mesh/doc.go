// Package mesh assembles a meshd node: identity (tlsmgr), the two gossip
// pools (gossip), the listeners and forwarding handlers (proxy), and the
// catalog that ties them together. It is the only package that knows the
// roles — edge, gateway, sidecar — and it decides, for every request, which
// region and which instance serve it.
//
// The catalog is folded from gossip records and memberlist liveness into an
// immutable Snapshot swapped with atomic.Pointer on every change, so the
// request path reads it without locks. Gossip only says where to look: every
// upstream connection verifies the peer's SPIFFE ID against what the catalog
// claims, so a node that lies in gossip still cannot receive another
// service's traffic.
package mesh
