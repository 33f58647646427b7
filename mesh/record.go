package mesh

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
)

// Node states published in records.
const (
	StateReady    = "ready"
	StateDraining = "draining"
)

// recordVersion is the wire version of NodeRecord; a node that sees a newer
// one ignores fields it does not know and keeps routing on what it does.
const recordVersion = 1

// maxRecordBytes bounds a record. It matches the gossip layer's limit.
const maxRecordBytes = 64 << 10

// NodeRecord is what a node publishes about itself in one gossip pool.
// In the region pool a sidecar lists its one service with Healthy 0 or 1;
// in the global pool a gateway lists every service of its region with the
// count of healthy instances.
type NodeRecord struct {
	V        int             `json:"v"`
	Name     string          `json:"name"`
	Role     string          `json:"role"`
	Region   string          `json:"region,omitempty"`
	MeshAddr string          `json:"addr,omitempty"`
	State    string          `json:"state"`
	Services []ServiceRecord `json:"services,omitempty"`
	Prefixes []string        `json:"prefixes,omitempty"`
	Purges   []PurgeRecord   `json:"purges,omitempty"` // edge: recent cache purges for the other edges
	Load     float64         `json:"load,omitempty"`
	// Policy is the version of the signed traffic policy the node runs
	// (0: none), so that any node can tell who has not got the newest
	// yet (policysync.go).
	Policy uint64 `json:"policy,omitempty"`
	// Global holds, in a gateway's region-pool record, the healthy
	// instances mesh-wide of each service the policy rate-limits
	// globally, so that the region's sidecars, which see only their
	// region, can take their share of the limit (limits.go).
	Global map[string]int `json:"global,omitempty"`
	// Roots are the fingerprints (tlsmgr.Fingerprint) of the roots the
	// node trusts, and SVIDRoot that of the root its SVID chains to, so
	// that `meshd ca status` can tell from any node how far a root
	// rotation has reached (rotation.go).
	Roots    []string `json:"roots,omitempty"`
	SVIDRoot string   `json:"svid_root,omitempty"`
	// PeerRoots are the roots that signed the other members' records the
	// node believes (peerRootsLocked).
	PeerRoots []string `json:"peer_roots,omitempty"`
}

// ServiceRecord is one service in a NodeRecord.
type ServiceRecord struct {
	Name    string   `json:"name"`
	Domains []string `json:"domains,omitempty"`
	Healthy int      `json:"healthy"`
	// Draining counts healthy instances that are draining: they still
	// serve until their drain delay ends, so a region that has nothing
	// else is a last resort, not dead (a gateway's summary; 0 elsewhere).
	Draining int `json:"draining,omitempty"`
	// Total counts the region's instances of the service whatever their
	// health, draining and ejected ones included (a gateway's summary;
	// 0 elsewhere, and from gateways older than the field): Healthy/Total
	// is the region's health that graded failover reads.
	Total  int `json:"total,omitempty"`
	Weight int `json:"weight,omitempty"`
	// Since is when the oldest record behind this one started claiming
	// the service and its Domains, in Unix milliseconds (a sidecar: when it
	// started; a gateway: the oldest of its region's instances); 0 when
	// unknown. It only breaks ties between domain claims a node sees for
	// the first time at once (see nameBook); it is a hint from gossip, not
	// an authority.
	Since int64 `json:"since,omitempty"`
	// Subset is the instance's label (--subset, e.g. "v2") that a
	// policy's splits and rules pick by; "" for none (a sidecar's record).
	Subset string `json:"subset,omitempty"`
	// Ports are the TCP and UDP ports the app publishes besides HTTP
	// (a sidecar's record; --tcp).
	Ports []PortRecord `json:"ports,omitempty"`
}

// PortRecord is one published port of a service.
type PortRecord struct {
	Name  string `json:"name"`
	Proto string `json:"proto"`          // "tcp" or "udp"
	Port  int    `json:"port,omitempty"` // the app's port number
}

// Encode renders the record for gossip.
func (r *NodeRecord) Encode() ([]byte, error) {
	cp := *r
	cp.V = recordVersion
	b, err := json.Marshal(&cp)
	if err != nil {
		return nil, err
	}
	if len(b) > maxRecordBytes {
		return nil, fmt.Errorf("node record is %d bytes, over the %d byte limit", len(b), maxRecordBytes)
	}
	return b, nil
}

// DecodeRecord parses and validates a record received from gossip. Gossip
// input comes from any key holder, so every field is checked before the
// catalog trusts it: names must be valid labels, the address a host:port,
// counts non-negative. A record that fails is refused whole.
func DecodeRecord(b []byte) (*NodeRecord, error) {
	if len(b) == 0 {
		return nil, errors.New("empty record")
	}
	if len(b) > maxRecordBytes {
		return nil, fmt.Errorf("record of %d bytes is over the %d byte limit", len(b), maxRecordBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	var r NodeRecord
	if err := dec.Decode(&r); err != nil {
		return nil, fmt.Errorf("record: %w", err)
	}
	if dec.More() {
		return nil, errors.New("record: trailing data")
	}
	if r.V < 1 {
		return nil, fmt.Errorf("record: version %d unknown", r.V)
	}
	if err := validLabel(r.Name); err != nil {
		return nil, fmt.Errorf("record name: %w", err)
	}
	switch r.Role {
	case RoleEdge, RoleGateway, RoleSidecar:
	default:
		return nil, fmt.Errorf("record %s: unknown role %q", r.Name, r.Role)
	}
	if r.Region != "" || r.Role != RoleEdge {
		if err := validLabel(r.Region); err != nil {
			return nil, fmt.Errorf("record %s region: %w", r.Name, err)
		}
	}
	switch r.State {
	case StateReady, StateDraining:
	default:
		return nil, fmt.Errorf("record %s: unknown state %q", r.Name, r.State)
	}
	if r.Role != RoleEdge {
		ap, err := netip.ParseAddrPort(r.MeshAddr)
		if err != nil || ap.Port() == 0 || ap.Addr().IsUnspecified() {
			return nil, fmt.Errorf("record %s: bad mesh address %q", r.Name, r.MeshAddr)
		}
	}
	seen := make(map[string]bool, len(r.Services))
	for _, s := range r.Services {
		if err := validLabel(s.Name); err != nil {
			return nil, fmt.Errorf("record %s service: %w", r.Name, err)
		}
		if seen[s.Name] {
			return nil, fmt.Errorf("record %s: service %s listed twice", r.Name, s.Name)
		}
		seen[s.Name] = true
		if s.Subset != "" {
			if err := validLabel(s.Subset); err != nil {
				return nil, fmt.Errorf("record %s service %s subset: %w", r.Name, s.Name, err)
			}
		}
		if s.Healthy < 0 || s.Draining < 0 || s.Total < 0 || s.Weight < 0 || s.Since < 0 {
			return nil, fmt.Errorf("record %s service %s: negative count", r.Name, s.Name)
		}
		for _, d := range s.Domains {
			if err := validDomain(d); err != nil {
				return nil, fmt.Errorf("record %s service %s domain: %w", r.Name, s.Name, err)
			}
		}
		if len(s.Ports) > 2*maxPorts {
			return nil, fmt.Errorf("record %s service %s: %d ports, over the limit", r.Name, s.Name, len(s.Ports))
		}
		for _, p := range s.Ports {
			if err := validLabel(p.Name); err != nil {
				return nil, fmt.Errorf("record %s service %s port: %w", r.Name, s.Name, err)
			}
			if p.Proto != "tcp" && p.Proto != "udp" || p.Port < 0 || p.Port > 65535 {
				return nil, fmt.Errorf("record %s service %s port %s: bad protocol or number", r.Name, s.Name, p.Name)
			}
		}
	}
	for _, p := range r.Prefixes {
		if _, err := netip.ParsePrefix(p); err != nil {
			return nil, fmt.Errorf("record %s: bad prefix %q", r.Name, p)
		}
	}
	if len(r.Global) > maxGlobalLimited {
		return nil, fmt.Errorf("record %s: %d globally limited services, over the limit", r.Name, len(r.Global))
	}
	for svc, c := range r.Global {
		if err := validLabel(svc); err != nil || c < 0 {
			return nil, fmt.Errorf("record %s: bad global count for service %q", r.Name, truncate(svc, 64))
		}
	}
	if len(r.Purges) > 2*maxPurges {
		return nil, fmt.Errorf("record %s: %d purges, over the limit", r.Name, len(r.Purges))
	}
	if len(r.Roots) > maxRecordRoots {
		return nil, fmt.Errorf("record %s: %d roots, over the limit of %d", r.Name, len(r.Roots), maxRecordRoots)
	}
	if len(r.PeerRoots) > maxRecordRoots {
		return nil, fmt.Errorf("record %s: %d peer roots, over the limit of %d", r.Name, len(r.PeerRoots), maxRecordRoots)
	}
	for _, fp := range append(slices.Clip(r.Roots), r.PeerRoots...) {
		if !validFingerprint(fp) {
			return nil, fmt.Errorf("record %s: root fingerprint %q is not 16 lowercase hex digits", r.Name, truncate(fp, 64))
		}
	}
	if r.SVIDRoot != "" && !validFingerprint(r.SVIDRoot) {
		return nil, fmt.Errorf("record %s: svid_root %q is not 16 lowercase hex digits", r.Name, truncate(r.SVIDRoot, 64))
	}
	if r.Load < 0 || r.Load != r.Load {
		return nil, fmt.Errorf("record %s: bad load", r.Name)
	}
	return &r, nil
}
