package mesh

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"reflect"
	"slices"
	"strings"

	"github.com/meshd/meshd/proxy"
)

// Reload without a restart (SIGHUP, `meshd reload`, POST /v1/reload).
//
// What a reload may change is what the node reads per request or per
// check, never what it bound or announced: a sidecar's app address and
// protocol (the route of its inbound requests), its health check path, its
// public host names (republished in its record), who may connect to its
// mesh listener, an edge's body limits, the log level; besides the file,
// the edge's public certificate files and the policy kept in --data-dir
// are read again. Listeners, connections and streams are left alone: a
// WebSocket or gRPC stream open through the node keeps going on the route
// it was given. Every other changed field is reported as needing a
// restart, and the node keeps running its old value.

// liveFields are the keys a reload applies (for their roles).
var liveFields = map[string]bool{
	"upstream": true, "upstream-protocol": true, "health-path": true, "domains": true,
	"allow-callers": true, "max-body": true, "min-body-rate": true, "log-level": true,
}

// ReloadResult is what a reload did.
type ReloadResult struct {
	// Applied lists the keys that changed and are now in force.
	Applied []string `json:"applied"`
	// Restart lists the keys that changed and take a restart; the node
	// runs their old values until then.
	Restart []string `json:"restart"`
	// Certificates says what was done with the public certificate files
	// (edge with --tls files): "reloaded", or "" when there are none.
	Certificates string `json:"certificates,omitempty"`
	// Policy is the version of the policy the node runs afterwards.
	Policy uint64 `json:"policy"`
}

// running is the configuration the node runs now: Config as started, with
// what reloads applied. Read it, never n.Config, for a live field.
func (n *Node) running() *Config {
	if c := n.cur.Load(); c != nil {
		return c
	}
	return &n.Config
}

// Reload reads the configuration again with LoadConfig, applies what can
// change while serving, re-reads the public certificates and the policy
// on disk, and reports what changed and what needs a restart. A
// configuration that does not load or validate is refused, its error
// naming the field (and the file position), and nothing changes.
func (n *Node) Reload() (*ReloadResult, error) {
	if !n.adminOpen.Load() {
		return nil, errors.New("reload: the node is still starting")
	}
	n.reloadMu.Lock()
	defer n.reloadMu.Unlock()
	old := n.running()
	next := *old
	res := &ReloadResult{Applied: []string{}, Restart: []string{}}
	if n.LoadConfig != nil {
		c, err := n.LoadConfig()
		if err != nil {
			return nil, err
		}
		c.SetDefaults()
		if err := c.Validate(); err != nil {
			return nil, err
		}
		for _, key := range changedKeys(old, &c) {
			if liveFields[key] && (key != "log-level" || n.LogLevel != nil) {
				res.Applied = append(res.Applied, key)
				setKey(&next, &c, key)
			} else {
				res.Restart = append(res.Restart, key)
			}
		}
	}
	if n.certs != nil && len(n.Config.TLSCert) > 0 {
		// First, so that a pair that does not load refuses the whole
		// reload; the certificates in use are kept then too.
		if err := n.certs.Reload(); err != nil {
			return nil, &FieldError{Field: "tls-cert", Err: err}
		}
		res.Certificates = "reloaded"
	}
	n.applyLive(old, &next)
	n.loadPolicy()
	res.Policy = n.pol.Load().version()
	n.Logger.Info("reloaded", "applied", res.Applied, "restart_needed", res.Restart, "policy", res.Policy)
	return res, nil
}

// applyLive puts next in force where it differs from old.
func (n *Node) applyLive(old, next *Config) {
	if next.LogLevel != old.LogLevel && n.LogLevel != nil {
		var lv slog.Level
		_ = lv.UnmarshalText([]byte(next.LogLevel)) // validated
		n.LogLevel.Set(lv)
	}
	if next.Role == RoleSidecar && (next.Upstream != old.Upstream || next.UpstreamProtocol != old.UpstreamProtocol) {
		n.app.Store(appUpstream(next))
	}
	if n.Config.Role == RoleEdge && (next.MaxBody != old.MaxBody || next.MinBodyRate != old.MinBodyRate) {
		for _, s := range []*proxy.Server{n.publicSrv, n.httpsSrv} {
			if s != nil {
				s.SetBodyLimits(sizeFlag(next.MaxBody), sizeFlag(next.MinBodyRate))
			}
		}
	}
	n.cur.Store(next)
	if !slices.Equal(next.Domains, old.Domains) {
		n.publish()
	}
}

// appUpstream is a sidecar's app as an upstream; nil for an app without
// HTTP (TCP ports only).
func appUpstream(c *Config) *proxy.Upstream {
	if c.Upstream == "" {
		return nil
	}
	return &proxy.Upstream{Key: "app|" + c.Upstream, Addr: c.Upstream, Name: "app", Region: c.Region, H2C: c.UpstreamProtocol == UpstreamH2C}
}

// changedKeys lists the keys whose values differ between a and b.
func changedKeys(a, b *Config) []string {
	va, vb := reflect.ValueOf(a).Elem(), reflect.ValueOf(b).Elem()
	var out []string
	for i := 0; i < va.NumField(); i++ {
		if key := va.Type().Field(i).Tag.Get("yaml"); key != "" && !reflect.DeepEqual(va.Field(i).Interface(), vb.Field(i).Interface()) {
			out = append(out, key)
		}
	}
	return out
}

// setKey copies the field of key from src to dst.
func setKey(dst, src *Config, key string) {
	vd, vs := reflect.ValueOf(dst).Elem(), reflect.ValueOf(src).Elem()
	for i := 0; i < vd.NumField(); i++ {
		if vd.Type().Field(i).Tag.Get("yaml") == key {
			vd.Field(i).Set(vs.Field(i))
		}
	}
}

// reloadHandler serves POST /v1/reload: the answer is the ReloadResult,
// or 400 with the reason the configuration was refused.
func (n *Node) reloadHandler(w http.ResponseWriter, r *http.Request) {
	res, err := n.Reload()
	if err != nil {
		n.Logger.Warn("reload refused; still serving the previous configuration", "err", err)
		http.Error(w, "meshd: reload refused, nothing changed: "+err.Error(), http.StatusBadRequest)
		return
	}
	writeJSON(w, res)
}

// String is a ReloadResult as `meshd reload` prints it.
func (r *ReloadResult) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "applied: %s\n", dashList(r.Applied))
	if len(r.Restart) > 0 {
		fmt.Fprintf(&b, "needs a restart (running the old values): %s\n", strings.Join(r.Restart, ", "))
	}
	if r.Certificates != "" {
		fmt.Fprintf(&b, "public certificates: %s\n", r.Certificates)
	}
	fmt.Fprintf(&b, "policy: version %d\n", r.Policy)
	return b.String()
}

func dashList(s []string) string {
	if len(s) == 0 {
		return "nothing changed"
	}
	return strings.Join(s, ", ")
}
