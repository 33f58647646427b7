package bgp

import (
	"context"
	"net/netip"
	"slices"
	"time"

	api "github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/packet/bgp"
)

// Status is the speaker's state for the admin endpoint /v1/bgp and for
// `meshd bgp`. It is a copy: holding it holds no lock.
type Status struct {
	// ASN and RouterID are the speaker's configured identity.
	ASN      uint32     `json:"asn"`
	RouterID netip.Addr `json:"router_id"`
	// Running is true between a successful Start and Stop.
	Running bool `json:"running"`
	// Error says why the speaker stopped on its own.
	Error string `json:"error,omitempty"`
	// Drain is "" until Drain is called, then "withdraw" or "prepend".
	Drain string `json:"drain,omitempty"`
	// Prefixes are the configured prefixes and what gobgp announces for them.
	Prefixes []PrefixStatus `json:"prefixes"`
	// Peers are the configured neighbors, in configuration order.
	Peers []PeerStatus `json:"peers"`
	// Announcements, Prepends and Withdrawals count the changes applied
	// since Start (route flaps as this speaker caused them).
	Announcements uint64 `json:"announcements"`
	Prepends      uint64 `json:"prepends"`
	Withdrawals   uint64 `json:"withdrawals"`
}

// PrefixStatus is one anycast prefix.
type PrefixStatus struct {
	Prefix netip.Prefix `json:"prefix"`
	// State is "announced", "prepended" (drain) or "withdrawn", as applied
	// to the local RIB; peers that are up have it within their MRAI.
	State string `json:"state"`
	// Since is when State last changed (Start for the initial "withdrawn").
	Since time.Time `json:"since,omitzero"`
}

// PeerStatus is one BGP neighbor.
type PeerStatus struct {
	Addr netip.Addr `json:"addr"`
	ASN  uint32     `json:"asn"`
	// State is the session state (RFC 4271 §8.2.2): "idle", "connect",
	// "active", "opensent", "openconfirm" or "established".
	State string `json:"state"`
	// Since is when State last changed.
	Since time.Time `json:"since,omitzero"`
	// UptimeSeconds is how long the session has been established, 0 if it
	// is not.
	UptimeSeconds float64 `json:"uptime_seconds"`
	// Flaps counts how often the session went down after being established.
	Flaps uint64 `json:"flaps"`
	// LastError is the reason the session last went down, if known.
	LastError string `json:"last_error,omitempty"`
	// BFD is the BFD session state ("down", "init", "up", "admin_down"),
	// "" when BFD is not enabled for this peer.
	BFD string `json:"bfd,omitempty"`
}

// Status returns a snapshot of the speaker's state. It never blocks on
// gobgp's event loop.
func (s *Speaker) Status() Status {
	st := Status{ASN: s.ASN, RouterID: s.RouterID}
	s.mu.Lock()
	if !s.started {
		s.mu.Unlock()
		for _, p := range s.Prefixes {
			st.Prefixes = append(st.Prefixes, PrefixStatus{Prefix: p, State: modeWithdrawn.String()})
		}
		for _, p := range s.Peers {
			st.Peers = append(st.Peers, PeerStatus{Addr: p.Addr, ASN: p.ASN, State: stateName(bgp.BGP_FSM_IDLE)})
		}
		return st
	}
	now := s.now()
	st.Running = !s.stopping
	if s.err != nil {
		st.Error = s.err.Error()
	}
	if s.drain != nil {
		st.Drain = s.drain.String()
	}
	applied := s.applied
	if s.stopping {
		applied = modeWithdrawn
	}
	for _, p := range s.Prefixes {
		st.Prefixes = append(st.Prefixes, PrefixStatus{Prefix: p, State: applied.String(), Since: s.routeSince})
	}
	st.Announcements, st.Prepends, st.Withdrawals = s.announces, s.prepend, s.withdraws
	for _, p := range s.Peers {
		ps := s.peers[p.Addr]
		out := PeerStatus{Addr: p.Addr, ASN: p.ASN, State: stateName(ps.state), Since: ps.since, Flaps: ps.flaps, LastError: ps.lastError}
		if !ps.established.IsZero() {
			out.UptimeSeconds = now.Sub(ps.established).Seconds()
		}
		st.Peers = append(st.Peers, out)
	}
	srv := s.bgp
	s.mu.Unlock()

	// ListBfdPeer reads gobgp's BFD table under its own lock and does not
	// go through the event loop, so it cannot block Status.
	bfdState := make(map[netip.Addr]string)
	srv.ListBfdPeer(context.Background(), func(addr string, ps *api.BfdPeerState) {
		if a, err := netip.ParseAddr(addr); err == nil && ps != nil {
			bfdState[a] = bfdName(ps.SessionState)
		}
	})
	for i, p := range s.Peers {
		if p.BFD == nil {
			continue
		}
		st.Peers[i].BFD = "down"
		if v, ok := bfdState[p.Addr]; ok {
			st.Peers[i].BFD = v
		}
	}
	return st
}

// Announced reports whether the prefixes are in the local RIB at full or
// prepended preference.
func (st Status) Announced() bool {
	return slices.ContainsFunc(st.Prefixes, func(p PrefixStatus) bool { return p.State != modeWithdrawn.String() })
}

func stateName(s bgp.FSMState) string {
	switch s {
	case bgp.BGP_FSM_CONNECT:
		return "connect"
	case bgp.BGP_FSM_ACTIVE:
		return "active"
	case bgp.BGP_FSM_OPENSENT:
		return "opensent"
	case bgp.BGP_FSM_OPENCONFIRM:
		return "openconfirm"
	case bgp.BGP_FSM_ESTABLISHED:
		return "established"
	}
	return "idle"
}

func bfdName(s api.BfdSessionState) string {
	switch s {
	case api.BfdSessionState_BFD_SESSION_STATE_UP:
		return "up"
	case api.BfdSessionState_BFD_SESSION_STATE_INIT:
		return "init"
	case api.BfdSessionState_BFD_SESSION_STATE_ADMIN_DOWN:
		return "admin_down"
	}
	return "down"
}
