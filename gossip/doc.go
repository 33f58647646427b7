// Package gossip is meshd's membership layer: a wrapper around
// hashicorp/memberlist that joins and leaves a pool, keeps gossip encrypted
// and labelled, replicates one opaque, versioned record per node to every
// member, and reports changes.
//
// meshd runs two kinds of pools (ARCHITECTURE.md, "The catalog"): one region
// pool per region with the LAN profile, and one global pool with the WAN
// profile. A node in both runs two Clusters with different Labels.
//
// The package does not know what records mean; package mesh encodes and
// decodes them. A record is at most MaxRecordSize bytes. Gossip is a hint:
// any member holding the key can claim anything, which is why every
// upstream connection in meshd verifies the peer's SPIFFE ID.
//
// Security: a Cluster refuses to start without a 16, 24 or 32 byte AES key
// and a Label; memberlist then encrypts and authenticates every packet and
// stream (AES-GCM with the label as additional data) and drops anything
// that fails to verify, so a node without the key, or with the key of
// another pool or another label, cannot join or inject records.
//
// Concurrency: memberlist calls back on its own goroutines, some with its
// locks held. Those callbacks only copy their input into a mailbox; one
// state goroutine owns all record state and publishes immutable snapshots
// that Members and LocalState read without locks; network sends run on
// their own goroutines; OnChange is called from one more goroutine, so a
// slow OnChange never stalls gossip.
package gossip
