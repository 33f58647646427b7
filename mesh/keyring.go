package mesh

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"

	"github.com/meshd/meshd/gossip"
)

// The gossip keyring: rotating gossip.key without a restart, as Consul's
// `keyring` does. On every node, in three steps: install the new key (it
// is accepted, the old one still sent), use it (sent, the old one still
// accepted), remove the old one. At no step does one node refuse what
// another sends, so no pool splits. `meshd gossip keyring` runs a step on
// the nodes it is given; /v1/gossip/keyring is the admin API under it.
//
// The keyring a node has after a step is kept in DataDir/gossip-NAME.keyring
// (mode 0600) and replaces gossip.key at its next start, so a node that
// restarts mid-rotation comes back with the keys of its pools. Keys never
// leave the node through the admin API: it lists their fingerprints, the
// first 8 bytes of their SHA-256 in hex.

// keyringFile is what a node keeps of its keyring.
type keyringFile struct {
	Primary []byte   `json:"primary"` // base64 in JSON
	Keys    [][]byte `json:"keys"`
}

func (n *Node) keyringPath() string {
	if n.Config.DataDir == "" {
		return ""
	}
	return filepath.Join(n.Config.DataDir, "gossip-"+n.Config.Name+".keyring")
}

// gossipKeys returns the key to send with and the others to accept: the
// kept keyring when there is one, else gossip.key alone.
func (n *Node) gossipKeys(fromCADir []byte) (primary []byte, others [][]byte, err error) {
	p := n.keyringPath()
	if p == "" {
		return fromCADir, nil, nil
	}
	b, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return fromCADir, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("gossip keyring %s: %w", p, err)
	}
	var kf keyringFile
	if err := json.Unmarshal(b, &kf); err != nil || len(kf.Primary) == 0 {
		return nil, nil, fmt.Errorf("gossip keyring %s: not a keyring (%v); remove it to start from gossip.key", p, err)
	}
	for _, k := range kf.Keys {
		if !bytes.Equal(k, kf.Primary) {
			others = append(others, k)
		}
	}
	return kf.Primary, others, nil
}

func (n *Node) saveKeyring(g *gossip.Cluster) error {
	p := n.keyringPath()
	if p == "" {
		return nil
	}
	primary, keys := g.KeyringKeys()
	b, _ := json.Marshal(keyringFile{Primary: primary, Keys: keys})
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return err
	}
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}

// KeyFingerprint names a gossip key without showing it.
func KeyFingerprint(k []byte) string {
	h := sha256.Sum256(k)
	return hex.EncodeToString(h[:8])
}

// KeyringInfo is what /v1/gossip/keyring answers: per pool, the key in
// use and every key accepted, by fingerprint.
type KeyringInfo struct {
	Node  string                 `json:"node"`
	Pools map[string]PoolKeyring `json:"pools"`
}

// PoolKeyring is one pool's keys.
type PoolKeyring struct {
	Primary string   `json:"primary"`
	Keys    []string `json:"keys"`
}

// KeyringOp is the body of POST /v1/gossip/keyring.
type KeyringOp struct {
	Op  string `json:"op"`  // install, use or remove
	Key string `json:"key"` // standard base64 of 16, 24 or 32 bytes
}

func (n *Node) pools() map[string]*gossip.Cluster {
	out := map[string]*gossip.Cluster{}
	if n.lan != nil {
		out[poolRegion] = n.lan
	}
	if n.wan != nil {
		out[poolGlobal] = n.wan
	}
	return out
}

func (n *Node) keyringInfo() KeyringInfo {
	info := KeyringInfo{Node: n.Config.Name, Pools: map[string]PoolKeyring{}}
	for name, g := range n.pools() {
		primary, keys := g.KeyringKeys()
		pk := PoolKeyring{Primary: KeyFingerprint(primary), Keys: []string{}}
		for _, k := range keys {
			pk.Keys = append(pk.Keys, KeyFingerprint(k))
		}
		info.Pools[name] = pk
	}
	return info
}

func (n *Node) keyringHandler(w http.ResponseWriter, r *http.Request) {
	var op KeyringOp
	if err := json.NewDecoder(io.LimitReader(r.Body, 4<<10)).Decode(&op); err != nil {
		http.Error(w, "meshd: want {\"op\": \"install|use|remove\", \"key\": \"BASE64\"}", http.StatusBadRequest)
		return
	}
	key, err := base64.StdEncoding.DecodeString(op.Key)
	if err == nil && len(key) != 16 && len(key) != 24 && len(key) != 32 {
		err = fmt.Errorf("decodes to %d bytes, want 16, 24 or 32", len(key))
	}
	if err != nil {
		http.Error(w, "meshd: key: "+err.Error(), http.StatusBadRequest)
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	for name, g := range n.pools() {
		switch op.Op {
		case "install":
			err = g.InstallKey(key)
		case "use":
			err = g.UseKey(key)
		case "remove":
			err = g.RemoveKey(key)
		default:
			err = fmt.Errorf("unknown op %q (want install, use or remove)", op.Op)
		}
		if err != nil {
			http.Error(w, fmt.Sprintf("meshd: %s pool: %v", name, err), http.StatusBadRequest)
			return
		}
		if err := n.saveKeyring(g); err != nil {
			n.Logger.Error("gossip keyring: cannot keep it", "err", err)
		}
	}
	n.Logger.Info("gossip keyring changed", "op", op.Op, "key", KeyFingerprint(key))
	writeJSON(w, n.keyringInfo())
}
