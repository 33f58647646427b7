package mesh

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
)

// Root rotation as the mesh sees it. tlsmgr follows `meshd ca rotate`
// steps in each node's CA directory; every node publishes in its gossip
// records which roots it trusts and which root its SVID chains to (short
// fingerprints), and `meshd ca status` reads them from one node's admin
// API (/v1/ca) to tell whether every node has taken the latest step. The
// records are signed (signedrec.go), so a node speaks only for itself; a
// node whose record no longer verifies (it is left on a root the others
// dropped) shows among the refused records, with the reason.

// maxRecordRoots bounds the root fingerprints of a record (tlsmgr bounds a
// bundle to 8 roots).
const maxRecordRoots = 8

// validFingerprint: tlsmgr.Fingerprint's form, 16 lowercase hex digits.
func validFingerprint(s string) bool {
	if len(s) != 16 {
		return false
	}
	for _, c := range []byte(s) {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// caClaims fills what a record says about the node's roots. Called
// under n.mu.
func (n *Node) caClaims(r *NodeRecord) {
	r.Roots = n.ids.Roots()
	r.SVIDRoot = n.ids.SVIDRoot()
	r.PeerRoots = n.peerRootsLocked()
}

// peerRootsLocked returns, sorted, the roots that signed the records of
// other members the node believes now. After `switch` a step is complete
// only when it is the new root alone everywhere: every node has received
// every other node's record signed with its new SVID. Were `finish` run
// before, a node would refuse the old-signed record it still holds of a
// peer and lose that peer from its catalog until the new one arrives
// (gossip brings a large record, a gateway's, by request, seconds later).
func (n *Node) peerRootsLocked() []string {
	var out []string
	for _, pool := range n.accepted {
		for name, o := range pool {
			if name != n.Config.Name && o.root != "" && !slices.Contains(out, o.root) {
				out = append(out, o.root)
			}
		}
	}
	slices.Sort(out)
	return out
}

// RefusedRecord is a member whose gossip record the node refused.
type RefusedRecord struct {
	Pool   string `json:"pool"`
	Name   string `json:"name"`
	Reason string `json:"reason"`
}

// CAView is what /v1/ca reports: the node's own roots, every member's as
// its record claims, and the members whose records were refused.
type CAView struct {
	Self    MemberInfo      `json:"self"`
	Members []MemberInfo    `json:"members"`
	Refused []RefusedRecord `json:"refused"`
}

func (n *Node) caView() CAView {
	v := CAView{Self: MemberInfo{Name: n.Config.Name, Role: n.Config.Role, Region: n.Config.Region,
		Roots: n.ids.Roots(), SVIDRoot: n.ids.SVIDRoot()}}
	v.Members = nonNil(n.snap.Load().Members)
	n.mu.Lock()
	for _, pool := range []string{poolRegion, poolGlobal} {
		v.Refused = append(v.Refused, n.refusedRecs[pool]...)
	}
	n.mu.Unlock()
	v.Refused = nonNil(v.Refused)
	return v
}

func (n *Node) caHandler(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, n.caView())
}

// CATarget is where a rotation is: the roots every node should trust and
// the root every SVID should chain to ("" when unknown: only the bundle is
// compared).
type CATarget struct {
	Roots   []string
	Issuing string
	From    string // where the target was read, for the report
}

// CAStatusLine is one node in a `meshd ca status` report.
type CAStatusLine struct {
	Pool, Name, Role, Region string
	Roots                    []string
	SVIDRoot                 string
	Behind                   string // "" when the node is at the target
}

// CAStatus compares what views (one per admin API asked) report with
// target: every member once (by name, as the first view lists it), then
// the refused records. ok is true only when every member is at the target
// and no record was refused for its chain.
func CAStatus(views []CAView, target CATarget) (lines []CAStatusLine, refused []RefusedRecord, ok bool) {
	ok = true
	seen := map[string]bool{}
	for _, v := range views {
		for _, m := range v.Members {
			if seen[m.Name] {
				continue
			}
			seen[m.Name] = true
			l := CAStatusLine{Pool: m.Pool, Name: m.Name, Role: m.Role, Region: m.Region, Roots: m.Roots, SVIDRoot: m.SVIDRoot}
			l.Behind = behind(m.Roots, m.SVIDRoot, m.PeerRoots, target)
			if l.Behind != "" {
				ok = false
			}
			lines = append(lines, l)
		}
	}
	for _, v := range views {
		for _, r := range v.Refused {
			if seen["refused/"+r.Name] || seen[r.Name] {
				continue
			}
			seen["refused/"+r.Name] = true
			refused = append(refused, r)
			if strings.Contains(r.Reason, "chain not to the bundle") {
				ok = false
			}
		}
	}
	return lines, refused, ok
}

// behind says how a node's roots differ from target, or "".
func behind(roots []string, svidRoot string, peerRoots []string, target CATarget) string {
	if len(roots) == 0 {
		return "its record names no roots (a meshd from before root rotation?)"
	}
	var why []string
	for _, want := range target.Roots {
		if !slices.Contains(roots, want) {
			why = append(why, "does not trust "+want)
		}
	}
	for _, have := range roots {
		if !slices.Contains(target.Roots, have) {
			why = append(why, "still trusts "+have)
		}
	}
	if target.Issuing != "" && svidRoot != target.Issuing {
		if svidRoot == "" {
			why = append(why, "its SVID chains to none of its roots")
		} else {
			why = append(why, fmt.Sprintf("SVID from %s, not %s", svidRoot, target.Issuing))
		}
	}
	if target.Issuing != "" {
		for _, r := range peerRoots {
			if r != target.Issuing {
				why = append(why, "holds peers' records signed from "+r)
			}
		}
	}
	return strings.Join(why, "; ")
}
