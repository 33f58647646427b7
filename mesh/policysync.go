package mesh

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/meshd/meshd/gossip"
	"github.com/meshd/meshd/mesh/policy"
)

// Where the traffic policy lives, without a control plane.
//
// An operator signs a policy document with the operator key (`meshd apply`)
// and hands it to any node's admin API. The node verifies it and runs it,
// and from then on every node that runs a version tells the others in its
// record (NodeRecord.Policy); a node that sees a member of one of its pools
// behind it sends that member the signed document as a gossip note, over
// TCP, and again every policyResend while the member's record still says it
// is behind. Gateways sit in both pools, so a policy applied anywhere
// reaches every region and every edge. Every node verifies what it
// receives against its own trust bundle and keeps the highest version: a
// node that lies in gossip can delay a policy, never forge or roll one back.
//
// The signed document is also kept on disk (--data-dir), so that a mesh
// whose every node restarted still runs it.

const (
	// policyResend is how long a node waits for a member's record to show
	// the version it sent before it sends it again.
	policyResend = 3 * time.Second
	// policySyncEvery is how often a node looks for members behind it.
	policySyncEvery = 250 * time.Millisecond
	// policyMaxSkew is how far in the future a policy's signing time may
	// be: a signature is checked against the operator certificate as it
	// was when it was made (so that an operator key minted for one apply
	// does not make the policy expire with it), which must not let a
	// clock far ahead sign for later.
	policyMaxSkew = 5 * time.Minute
)

// policyState is the policy a node runs: immutable, swapped whole.
type policyState struct {
	signed  *policy.Signed
	raw     []byte // signed, as JSON: what goes to peers and to disk
	doc     *policy.Document
	signer  string // the operator's SPIFFE ID
	sum     string // SHA-256 of the document, hex
	adopted time.Time
	source  string // "apply", "gossip from NODE", "disk"
}

func (p *policyState) version() uint64 {
	if p == nil {
		return 0
	}
	return p.signed.Version
}

// errPolicyOld refuses a policy that is not newer than the one the node
// runs.
var errPolicyOld = errors.New("not newer than the policy this node runs")

// adoptPolicy verifies a signed policy and runs it when it is newer than
// the node's. It returns the state the node runs afterwards.
func (n *Node) adoptPolicy(raw []byte, source string) (*policyState, error) {
	s, err := policy.Unmarshal(raw)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	if s.SignedAt.After(now.Add(policyMaxSkew)) {
		return nil, fmt.Errorf("policy: signed at %s, more than %v ahead of this node's clock", s.SignedAt.UTC().Format(time.RFC3339), policyMaxSkew)
	}
	roots, err := n.ids.BundlePool()
	if err != nil {
		return nil, err
	}
	doc, signer, err := s.Verify(roots, n.td, s.SignedAt)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(s.Document)
	st := &policyState{signed: s, raw: raw, doc: doc, signer: signer, sum: hex.EncodeToString(sum[:]),
		adopted: now, source: source}

	n.polMu.Lock()
	cur := n.pol.Load()
	if cur != nil && s.Version <= cur.version() {
		n.polMu.Unlock()
		if s.Version == cur.version() && st.sum != cur.sum {
			return cur, fmt.Errorf("policy version %d: a different document than the one this node runs has the same version", s.Version)
		}
		return cur, fmt.Errorf("policy version %d: %w (%d)", s.Version, errPolicyOld, cur.version())
	}
	n.pol.Store(st)
	n.table.Store(compileRoutes(doc))
	n.polMu.Unlock()

	if source != "disk" {
		n.policyDelay.Observe(max(now.Sub(s.SignedAt), 0).Seconds())
		n.savePolicy(st)
	}
	n.Logger.Info("policy: running a new version", "version", s.Version, "signer", signer,
		"services", len(doc.Services), "from", source, "signed", s.SignedAt.UTC().Format(time.RFC3339Nano))
	n.publish()
	n.kickRebuild()
	n.kickPolicySync()
	return st, nil
}

// onPolicyNote receives a signed policy a peer sent.
func (n *Node) onPolicyNote(pool string) func(from string, data []byte) {
	return func(from string, data []byte) {
		_, err := n.adoptPolicy(data, "gossip from "+from)
		if err != nil && !errors.Is(err, errPolicyOld) {
			n.policyRefused.Inc()
			n.polMu.Lock()
			key := pool + "/" + from
			last := n.polBad[key]
			n.polBad[key] = err.Error()
			n.polMu.Unlock()
			if last != err.Error() {
				n.Logger.Warn("policy: refused a policy from a peer", "member", from, "pool", pool, "err", err)
			}
		}
	}
}

// policyFiles are where the node keeps the policy it runs, under
// --data-dir, shared by the nodes of one host: one file per root of the
// node's trust bundle, named by its fingerprint, so that the nodes of
// another mesh on the host keep theirs apart, and a node restarted after a
// root rotation (`meshd ca rotate`) still finds a policy it saved while it
// trusted the new root beside the old one. A policy read back is verified
// again, like one from gossip.
func (n *Node) policyFiles() []string {
	if n.Config.DataDir == "" {
		return nil
	}
	var out []string
	for _, fp := range n.ids.Roots() {
		out = append(out, filepath.Join(n.Config.DataDir, "policy", fp+".json"))
	}
	return out
}

func (n *Node) savePolicy(st *policyState) {
	for _, p := range n.policyFiles() {
		if err := writeFileAtomic(p, st.raw); err != nil {
			n.Logger.Warn("policy: cannot keep the policy on disk; it runs, but a restart of every node would lose it", "file", p, "err", err)
		}
	}
}

func (n *Node) loadPolicy() {
	files := n.policyFiles()
	if len(files) > 0 && n.rootSum != "" {
		// Where meshd kept it before bundles had several roots: named by
		// the digest of the whole bundle.
		files = append(files, filepath.Join(n.Config.DataDir, "policy", n.rootSum+".json"))
	}
	for _, p := range files {
		raw, err := os.ReadFile(p)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err == nil {
			_, err = n.adoptPolicy(raw, "disk")
		}
		if err != nil && !errors.Is(err, errPolicyOld) {
			n.Logger.Warn("policy: ignored the policy kept on disk", "file", p, "err", err)
		}
	}
}

func writeFileAtomic(p string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(p), ".policy-*")
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(f.Name())
		return err
	}
	if err := f.Close(); err != nil {
		os.Remove(f.Name())
		return err
	}
	return os.Rename(f.Name(), p)
}

func (n *Node) kickPolicySync() {
	select {
	case n.polKick <- struct{}{}:
	default:
	}
}

// policySyncLoop sends the policy to members whose records say they run an
// older one.
func (n *Node) policySyncLoop(done <-chan struct{}) {
	defer n.wg.Done()
	t := time.NewTicker(policySyncEvery)
	defer t.Stop()
	sent := map[string]time.Time{} // pool/member → when the current version went
	var sentVersion uint64
	for {
		select {
		case <-done:
			return
		case <-t.C:
		case <-n.polKick:
		}
		cur := n.pol.Load()
		if cur == nil {
			continue
		}
		if cur.version() != sentVersion {
			clear(sent)
			sentVersion = cur.version()
		}
		now := time.Now()
		for _, pv := range n.peerPolicies() {
			if pv.version >= cur.version() {
				continue
			}
			key := pv.pool + "/" + pv.name
			if at, ok := sent[key]; ok && now.Sub(at) < policyResend {
				continue
			}
			sent[key] = now
			g := n.lan
			if pv.pool == poolGlobal {
				g = n.wan
			}
			if err := g.Send(pv.name, cur.raw); err != nil {
				n.Logger.Debug("policy: cannot send to member", "member", pv.name, "err", err)
			}
		}
	}
}

const (
	poolRegion = "region"
	poolGlobal = "global"
)

// peerPolicy is the policy version a member of one of the node's pools
// says it runs.
type peerPolicy struct {
	pool, name, role, region string
	version                  uint64
}

// peerPolicies lists the other members of the node's pools with the
// version their records name, as of the last rebuild.
func (n *Node) peerPolicies() []peerPolicy {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.polPeers
}

// collectPeerPolicies records, during a rebuild (n.mu held), which
// version every other member runs.
func (n *Node) collectPeerPolicies(lan, wan []member) {
	var out []peerPolicy
	for _, p := range []struct {
		name string
		ms   []member
	}{{poolRegion, lan}, {poolGlobal, wan}} {
		for _, m := range p.ms {
			if m.rec.Name == n.Config.Name {
				continue
			}
			out = append(out, peerPolicy{pool: p.name, name: m.rec.Name, role: m.rec.Role, region: m.rec.Region, version: m.rec.Policy})
		}
	}
	n.polPeers = out
}

// PolicyInfo is what /v1/policy answers: the version this node runs and
// the versions the members of its pools say they run.
type PolicyInfo struct {
	Version  uint64            `json:"version"`
	Signer   string            `json:"signer,omitempty"`
	SignedAt time.Time         `json:"signed_at,omitzero"`
	Adopted  time.Time         `json:"adopted_at,omitzero"`
	Source   string            `json:"source,omitempty"`
	SHA256   string            `json:"sha256,omitempty"`
	Services []string          `json:"services,omitempty"`
	Domains  map[string]string `json:"domains,omitempty"`
	Node     string            `json:"node"`
	Nodes    []NodePolicy      `json:"nodes"`
	Document string            `json:"document,omitempty"`
}

// NodePolicy is one member and the policy version its record names.
type NodePolicy struct {
	Name    string `json:"name"`
	Pool    string `json:"pool"`
	Role    string `json:"role"`
	Region  string `json:"region,omitempty"`
	Version uint64 `json:"version"`
}

func (n *Node) policyInfo(withDoc bool) PolicyInfo {
	cur := n.pol.Load()
	info := PolicyInfo{Node: n.Config.Name, Version: cur.version(), Nodes: []NodePolicy{}}
	info.Nodes = append(info.Nodes, NodePolicy{Name: n.Config.Name, Pool: "self", Role: n.Config.Role,
		Region: n.Config.Region, Version: cur.version()})
	for _, p := range n.peerPolicies() {
		info.Nodes = append(info.Nodes, NodePolicy{Name: p.name, Pool: p.pool, Role: p.role, Region: p.region, Version: p.version})
	}
	sort.SliceStable(info.Nodes[1:], func(i, j int) bool {
		a, b := info.Nodes[1+i], info.Nodes[1+j]
		if a.Pool != b.Pool {
			return a.Pool > b.Pool
		}
		return a.Name < b.Name
	})
	if cur == nil {
		return info
	}
	info.Signer, info.SignedAt, info.Adopted, info.Source, info.SHA256 = cur.signer, cur.signed.SignedAt, cur.adopted, cur.source, cur.sum
	for s := range cur.doc.Services {
		info.Services = append(info.Services, s)
	}
	sort.Strings(info.Services)
	info.Domains = cur.doc.Domains
	if withDoc {
		info.Document = string(cur.signed.Document)
	}
	return info
}

// attachPolicyNotes makes the node's pools hand it the policies peers
// send.
func (n *Node) attachPolicyNotes(g *gossip.Cluster, pool string) {
	g.OnNote = n.onPolicyNote(pool)
}

// ApplyResult is what POST /v1/policy answers.
type ApplyResult struct {
	Version uint64 `json:"version"`
	Signer  string `json:"signer"`
	Members int    `json:"members"` // other members of the node's pools, who get it next
}

// applyHandler takes a signed policy (`meshd apply`): the node verifies it,
// runs it and spreads it. A policy that fails is refused with 400 and the
// reason, an old version with 409; nothing changes either way.
func (n *Node) applyHandler(w http.ResponseWriter, r *http.Request) {
	raw, err := io.ReadAll(io.LimitReader(r.Body, policy.MaxSignedSize+1))
	if err != nil {
		http.Error(w, "meshd: read policy: "+err.Error(), http.StatusBadRequest)
		return
	}
	st, err := n.adoptPolicy(raw, "apply")
	if err != nil {
		code := http.StatusBadRequest
		if errors.Is(err, errPolicyOld) {
			code = http.StatusConflict
		}
		n.Logger.Warn("policy: refused an apply", "err", err)
		http.Error(w, "meshd: "+err.Error(), code)
		return
	}
	writeJSON(w, ApplyResult{Version: st.version(), Signer: st.signer, Members: len(n.peerPolicies())})
}
