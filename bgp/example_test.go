package bgp_test

import (
	"context"
	"log"
	"net/netip"
	"time"

	"github.com/meshd/meshd/bgp"
)

// Example shows how the edge wires a speaker to its health gate: flags are
// parsed with the package's Parse functions, the gate turns "can serve"
// into announce/withdraw, and SIGTERM drains before Stop.
func Example() {
	ctx := context.Background()
	asn, err := bgp.ParseASN("64512") // --bgp-asn
	if err != nil {
		log.Fatal(err)
	}
	rid, err := bgp.ParseRouterID("192.0.2.10") // --bgp-router-id
	if err != nil {
		log.Fatal(err)
	}
	peer, err := bgp.ParsePeer("192.0.2.1,64500,hold=9s,bfd") // --bgp-peer
	if err != nil {
		log.Fatal(err)
	}
	prefix, err := bgp.ParsePrefix("198.51.100.10/32") // --anycast
	if err != nil {
		log.Fatal(err)
	}
	sp := &bgp.Speaker{ASN: asn, RouterID: rid, Peers: []bgp.Peer{peer}, Prefixes: []netip.Prefix{prefix}}
	if err := sp.Start(ctx); err != nil {
		log.Fatal(err)
	}

	canServe := make(chan bool) // fed by the mesh's readiness
	gate := &bgp.Gate{UpHold: 5 * time.Second}
	go gate.Run(ctx, canServe, sp.SetAnnounced)

	// On SIGTERM: drain, wait --drain-delay, then stop.
	_ = sp.Drain(ctx, bgp.DrainWithdraw)
	_ = sp.Stop(ctx)
}
