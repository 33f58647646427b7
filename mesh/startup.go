package mesh

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"time"
)

// Start-up ordering. A sidecar that accepted its app's first call before
// it had an SVID or a catalog could only fail it (no identity to dial
// with, no instance known), and an orchestrator that starts the app once
// the sidecar's port is open would see those failures as the app's. So
// Start goes: admin API (only /healthz and /readyz, which says what the
// node waits for) → SVID (waiting up to svid-wait for a SPIRE agent or
// files not there yet) → listeners bound but not accepting → gossip → a
// first catalog → the listeners accept → the rest of the admin API.

// catalogWait bounds how long a sidecar whose seeds answered waits for
// their records before it serves with what it has.
const catalogWait = 2 * time.Second

// hold is the Server.Hold of a sidecar's listeners: they bind at Start and
// accept once the node has a first catalog. Other roles serve at once.
func (n *Node) hold() <-chan struct{} {
	if n.Config.Role != RoleSidecar {
		return nil
	}
	return n.serve
}

// startIdentity starts the node's SVID source, waiting up to svid-wait
// (or until ctx ends) for files that do not exist yet: ca.crt, or the
// SVID files another process writes (an init container, `meshd ca issue`
// run after the unit started). A SPIRE agent is waited for by tlsmgr
// itself, within the same bound. Any other error fails at once.
func (n *Node) startIdentity(ctx, bg context.Context) error {
	deadline := time.Now().Add(n.Config.SVIDWait)
	logged := false
	for {
		err := n.tryIdentity(bg)
		if err == nil || !errors.Is(err, fs.ErrNotExist) || n.Config.SPIFFESocket != "" {
			return err
		}
		if !time.Now().Before(deadline) {
			return fmt.Errorf("no SVID within svid-wait %v: %w", n.Config.SVIDWait, err)
		}
		if !logged {
			n.Logger.Info("waiting for the SVID", "err", err, "svid_wait", n.Config.SVIDWait)
			logged = true
		}
		t := time.NewTimer(100 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("identity: %w", ctx.Err())
		case <-t.C:
		}
	}
}

// awaitCatalog holds a sidecar's start until its region pool has told it
// about at least one other member (a first gossip sync), or it knows it
// is alone: no seeds (the first node), or no seed answered within
// gossip's own bounded first join. A pool that answered but whose records
// do not arrive within catalogWait is served as it is, with a warning.
func (n *Node) awaitCatalog(ctx context.Context) error {
	defer n.catalogUp.Store(true)
	if len(n.Config.Join) == 0 || !n.lan.Joined() {
		return nil
	}
	deadline := time.Now().Add(catalogWait)
	for {
		others := int64(0)
		for _, m := range n.snap.Load().Members {
			if m.Pool == poolRegion && m.Name != n.Config.Name {
				others++
			}
		}
		n.catalogMembers.Store(others)
		if others > 0 {
			return nil
		}
		if !time.Now().Before(deadline) {
			n.Logger.Warn("no member's record arrived after the join; serving with an empty catalog", "wait", catalogWait)
			return nil
		}
		t := time.NewTimer(20 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("waiting for the catalog: %w", ctx.Err())
		case <-t.C:
		}
		n.rebuild()
	}
}

// adminGate answers only /healthz and /readyz until Start is done: the
// rest of the admin API reads parts of the node that Start is still
// building. The others get 503 with the reason and Retry-After.
func (n *Node) adminGate(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !n.adminOpen.Load() && r.URL.Path != "/healthz" && r.URL.Path != "/readyz" {
			w.Header().Set("Retry-After", "1")
			http.Error(w, "meshd: starting: "+n.notReady(), http.StatusServiceUnavailable)
			return
		}
		h.ServeHTTP(w, r)
	})
}
