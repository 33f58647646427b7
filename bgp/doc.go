// Package bgp is meshd's embedded BGP speaker: it announces an edge's
// anycast prefixes to its routers and withdraws them, and knows nothing of
// HTTP or gossip.
//
// The central type is [Speaker], a wrapper around gobgp v4's in-process
// server (server.NewBgpServer; no gobgpd process and never its gRPC
// listener). A Speaker is configured through documented exported fields,
// checked by [Speaker.Validate], started with [Speaker.Start], told what to
// announce with [Speaker.SetAnnounced] and [Speaker.Drain], inspected with
// [Speaker.Status] (JSON for the admin endpoint /v1/bgp) and its Prometheus
// collector, and stopped with [Speaker.Stop].
//
// [Gate] turns the mesh's boolean "this edge can serve" signal into
// announce/withdraw decisions: withdraw at once, announce only after the
// signal has held for a hold-down, so that a flapping edge does not flap its
// route across the internet.
//
// The Parse functions ([ParsePeer], [ParseASN], [ParseRouterID],
// [ParsePrefix], [ParseCommunity], [ParseLargeCommunity], [ParseDrainMode])
// implement the syntax of the --bgp-* and --anycast flags and of the same
// keys in the config file, so that bad input is refused with a clear error
// before anything is announced.
//
// BFD (RFC 5880/5881) uses gobgp v4's native implementation. Its UDP
// listener is fixed by gobgp at port 3784 on all addresses, so only one
// BFD-enabled speaker can run per network namespace; the operator does not
// choose the port. When BFD declares a peer down, gobgp resets the BGP
// session, and the peer withdraws the routes it learned from this speaker.
// Whenever the session of a BFD peer goes down, for whatever reason, the
// speaker deletes the peer from gobgp and adds it again: gobgp v4.8.0
// keeps its BFD session bound to the router's old one and queues the
// reset its BFD makes while the session is down, then kills the next
// session with it (see renewPeers), so without the renewal an edge never
// comes back after its router resets the session.
//
// The anycast addresses themselves are not bound by this package; the
// operator (or the mesh's --anycast-bind) assigns them to an interface.
package bgp
