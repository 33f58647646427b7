package mesh

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/meshd/meshd/cache"
	"github.com/meshd/meshd/proxy"
)

// edgeCacheStore is the edge's cache as the configuration asks for it;
// size is CacheSize in bytes, already known to be more than 0.
func edgeCacheStore(c *Config, size int64, logger *slog.Logger) *cache.Store {
	maxObj, _ := parseSize(c.CacheMaxObject)
	return &cache.Store{MaxBytes: size, MaxObject: maxObj, StoreSetCookie: c.CacheSetCookie, Logger: logger}
}

// Purges travel between edges in the edges' global records: each edge
// lists the purges it accepted recently, and every other edge applies the
// ones it has not applied yet. Records are gossip's replicated state
// (broadcast at once, repaired by push/pull), so a purge reaches an edge
// that was briefly unreachable too. A purge older than purgeKeep is dropped
// from the record: by then every live edge has applied it.
const (
	purgeKeep = 10 * time.Minute
	maxPurges = 128 // most recent purges kept in a record
)

// PurgeRecord is one purge in an edge's global record.
type PurgeRecord struct {
	ID    string `json:"id"`
	Kind  string `json:"kind"` // url, prefix or tag
	Value string `json:"value"`
	At    int64  `json:"at"` // unix seconds
}

// PurgeRequest is the body of POST /v1/cache/purge: exactly one of the
// three.
type PurgeRequest struct {
	URL    string `json:"url,omitempty"`
	Prefix string `json:"prefix,omitempty"`
	Tag    string `json:"tag,omitempty"`
}

// PurgeResult is the answer of POST /v1/cache/purge.
type PurgeResult struct {
	ID      string `json:"id"`
	Removed int    `json:"removed"` // entries removed at this edge
	Edges   int    `json:"edges"`   // edges the purge is sent to, this one included
}

func (p PurgeRequest) record(now time.Time) (PurgeRecord, error) {
	var r PurgeRecord
	n := 0
	for kind, v := range map[string]string{"url": p.URL, "prefix": p.Prefix, "tag": p.Tag} {
		if v != "" {
			r.Kind, r.Value = kind, v
			n++
		}
	}
	if n != 1 {
		return r, errors.New(`give exactly one of "url", "prefix" or "tag"`)
	}
	if err := r.validate(); err != nil {
		return r, err
	}
	var id [8]byte
	rand.Read(id[:])
	r.ID, r.At = hex.EncodeToString(id[:]), now.Unix()
	return r, nil
}

func (r PurgeRecord) validate() error {
	if len(r.Value) > 2048 {
		return errors.New("purge value longer than 2048 bytes")
	}
	switch r.Kind {
	case "url":
		if _, err := cache.NormalizeURL(r.Value); err != nil {
			return fmt.Errorf("purge url %q: %w", truncate(r.Value, 100), err)
		}
	case "prefix":
		if !strings.HasPrefix(r.Value, "http://") && !strings.HasPrefix(r.Value, "https://") && !strings.Contains(r.Value, "/") {
			return fmt.Errorf("purge prefix %q: want http(s)://host/path or host/path", truncate(r.Value, 100))
		}
	case "tag":
		if strings.ContainsAny(r.Value, " ,\t\r\n") {
			return fmt.Errorf("purge tag %q: one tag, no spaces or commas", truncate(r.Value, 100))
		}
	default:
		return fmt.Errorf("unknown purge kind %q", r.Kind)
	}
	return nil
}

// applyPurge removes the entries a purge names from this edge's cache.
func (n *Node) applyPurge(r PurgeRecord) int {
	if n.cache == nil {
		return 0
	}
	switch r.Kind {
	case "url":
		return n.cache.PurgeURL(r.Value)
	case "prefix":
		return n.cache.PurgePrefix(r.Value)
	case "tag":
		return n.cache.PurgeTag(r.Value)
	}
	return 0
}

// purge accepts a purge at this edge: applied here at once, then
// published in the edge's global record for the other edges.
func (n *Node) purge(req PurgeRequest) (PurgeResult, error) {
	r, err := req.record(time.Now())
	if err != nil {
		return PurgeResult{}, err
	}
	removed := n.applyPurge(r)
	n.mu.Lock()
	n.applied[r.ID] = r.At
	n.purges = append(n.purges, r)
	n.mu.Unlock()
	n.publish()
	edges := 0
	for _, m := range n.snap.Load().Members {
		if m.Pool == "global" && m.Role == RoleEdge {
			edges++
		}
	}
	n.Logger.Info("cache purge", "kind", r.Kind, "value", r.Value, "id", r.ID, "removed", removed)
	return PurgeResult{ID: r.ID, Removed: removed, Edges: edges}, nil
}

// recentPurgesLocked trims the purge log to what other edges still need
// and returns it for the record.
func (n *Node) recentPurgesLocked(now time.Time) []PurgeRecord {
	cut := 0
	for cut < len(n.purges) && (now.Unix()-n.purges[cut].At > int64(purgeKeep/time.Second) || len(n.purges)-cut > maxPurges) {
		cut++
	}
	n.purges = n.purges[cut:]
	return n.purges
}

// applyRemotePurgesLocked applies the purges other edges published that
// this edge has not applied yet. Called on every snapshot rebuild.
func (n *Node) applyRemotePurgesLocked(wan []member) {
	if n.cache == nil {
		return
	}
	now := time.Now().Unix()
	for _, m := range wan {
		if m.rec.Role != RoleEdge || m.rec.Name == n.Config.Name {
			continue
		}
		for _, p := range m.rec.Purges {
			if _, done := n.applied[p.ID]; done {
				continue
			}
			n.applied[p.ID] = now
			if err := p.validate(); err != nil {
				n.Logger.Warn("refused a purge from gossip", "edge", m.rec.Name, "err", err)
				continue
			}
			removed := n.applyPurge(p)
			n.Logger.Info("cache purge from another edge", "edge", m.rec.Name, "kind", p.Kind, "value", p.Value, "removed", removed)
		}
	}
	// Forget applied IDs long after every record dropped them.
	for id, at := range n.applied {
		if now-at > int64(2*purgeKeep/time.Second) {
			delete(n.applied, id)
		}
	}
}

// purgeHandler serves POST /v1/cache/purge with a JSON body
// {"url":...}, {"prefix":...} or {"tag":...}.
func (n *Node) purgeHandler(w http.ResponseWriter, r *http.Request) {
	if n.cache == nil {
		http.Error(w, "this node has no cache (only edges cache)", http.StatusNotFound)
		return
	}
	var req PurgeRequest
	dec := json.NewDecoder(io.LimitReader(r.Body, 16<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		http.Error(w, "bad purge request: "+err.Error(), http.StatusBadRequest)
		return
	}
	res, err := n.purge(req)
	if err != nil {
		http.Error(w, "bad purge request: "+err.Error(), http.StatusBadRequest)
		return
	}
	writeJSON(w, res)
}

func writeStatusError(w http.ResponseWriter, e *proxy.StatusError) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(e.Code)
	io.WriteString(w, e.Msg+"\n")
}

// parseSize reads a byte size such as 256MiB, 8MB, 64k or 1048576.
func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		m      int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1000}, {"MB", 1000 * 1000}, {"GB", 1000 * 1000 * 1000},
		{"k", 1 << 10}, {"K", 1 << 10}, {"m", 1 << 20}, {"M", 1 << 20}, {"g", 1 << 30}, {"G", 1 << 30}, {"B", 1}} {
		if v, ok := strings.CutSuffix(t, u.suffix); ok {
			t, mult = strings.TrimSpace(v), u.m
			break
		}
	}
	v, err := strconv.ParseInt(t, 10, 64)
	if err != nil || v < 0 || v > (1<<50)/mult {
		return 0, fmt.Errorf("%q is not a size such as 256MiB", s)
	}
	return v * mult, nil
}
