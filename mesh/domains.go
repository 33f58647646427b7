package mesh

import (
	"cmp"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"
)

// Which service owns a public host name, and what a node remembers of a
// service that is gone.
//
// meshd has no control plane: each sidecar says in gossip which public host
// names its service answers for (--domains), gateways pass those claims on,
// and every node decides for itself. Identity does not help here: a sidecar
// of api that claims web's host name would receive web's requests (and
// cookies) with api's own, valid SVID. So the decision follows rules that
// give the same answer on every edge whatever the order gossip delivers
// records in:
//
//  1. <service>.<public-domain> is that service's name: a claim on it by
//     another service is refused, whether the named service runs or not
//     (otherwise a claim made while it is away would take it over).
//  2. Otherwise the claim this node has seen longest owns the name. A host
//     name served by one service is never taken by a second claim: the
//     node remembers, across snapshot rebuilds (in nameBook, not in the
//     immutable Snapshot), when it first saw each (host, service) claim,
//     and it keeps the claims of a tombstoned service (--service-tombstone)
//     so an owner whose instances all restart, or are down for a while,
//     keeps its names.
//  3. Claims first seen together, in one rebuild or while the node's own
//     view of gossip is still filling (claimSettle after it started), are
//     ordered by the Since of their records (when the claiming service's
//     oldest instance started), then by service name. A node that starts
//     and sees both claims at once thus picks what the nodes that watched
//     them arrive picked, as long as the owner has run longer than the
//     newcomer.
//
// Claims by several instances of one service on one name are one claim,
// never a conflict. A refused claim is logged once (both services and the
// nodes that carry each claim) and shown in /v1/routes and the dashboard.
//
// All of this is first come, first served from gossip, which every holder
// of the gossip key can write. The traffic-policy work binds domains to
// services in the signed policy document; these rules will then only
// decide names the policy does not mention.

// claimSettle is how long after a node starts its first-seen times of
// claims all count as equal: the first rebuilds may hold only part of the
// pools, in whatever order push/pull delivered them.
const claimSettle = 10 * time.Second

// downRetryAfter is the Retry-After of a 503 for a service without a
// healthy instance: about the time gossip takes to spread the record of an
// instance that comes back, so clients neither hammer nor wait long.
const downRetryAfter = 5 * time.Second

// claim is one service's claim on one host name.
type claim struct {
	nodes []string // members whose records carry it
	since int64    // oldest Since of those records (Unix ms), 0 unknown
}

// domainClaims: host name → service → its claim, as read from one set of
// records.
type domainClaims map[string]map[string]*claim

func (c domainClaims) add(svc, node string, since int64, domains []string) {
	for _, d := range domains {
		by := c[d]
		if by == nil {
			by = map[string]*claim{}
			c[d] = by
		}
		cl := by[svc]
		if cl == nil {
			cl = &claim{}
			by[svc] = cl
		}
		if !slices.Contains(cl.nodes, node) {
			cl.nodes = append(cl.nodes, node)
		}
		if since > 0 && (cl.since == 0 || since < cl.since) {
			cl.since = since
		}
	}
}

// DomainConflict is a refused claim on a public host name.
type DomainConflict struct {
	Domain string `json:"domain"`
	// Owner keeps the name; OwnerNodes carry its claim (none when the
	// name is Owner's by rule 1 and Owner makes no claim of its own).
	Owner      string   `json:"owner"`
	OwnerNodes []string `json:"owner_nodes,omitempty"`
	// Refused is the service whose claim is refused, RefusedNodes the
	// members whose records carry it.
	Refused      string   `json:"refused"`
	RefusedNodes []string `json:"refused_nodes"`
	// Reason says which rule decided.
	Reason string `json:"reason"`
}

// serviceDown is what a node knows of a service it cannot send to.
type serviceDown struct {
	last  []string  // last healthy instances ("in region r" when only a region count is known); sorted
	since time.Time // when the node saw the last of them go
	gone  time.Time // when the service left the records; zero while a record names it
	until time.Time // gone + tombstone: from then on the service is unknown
}

// downFor returns what the node knows of svc having no healthy instance,
// or nil when it knows nothing: never seen, healthy, or its tombstone is
// over (the snapshot may be older than now).
func (s *Snapshot) downFor(svc string, now time.Time) *serviceDown {
	d := s.down[svc]
	if d == nil || (!d.gone.IsZero() && !now.Before(d.until)) {
		return nil
	}
	return d
}

// publishes reports whether the node answers for svc: a service some
// record names, or one that left less than --service-tombstone ago (its
// requests get 503, not 404). The clock is read only for a service no
// record names: the host gate runs this on every public request.
func (s *Snapshot) publishes(svc string, now func() time.Time) bool {
	return s.known[svc] || s.downFor(svc, now()) != nil
}

// reason is the parenthesis of the 503 message, "" when the node never saw
// the service healthy.
func (d *serviceDown) reason(now time.Time) string {
	if d == nil || len(d.last) == 0 {
		return ""
	}
	ago := now.Sub(d.since).Truncate(time.Second)
	if ago < 0 {
		ago = 0
	}
	one := "last one"
	if len(d.last) > 1 {
		one = "last ones"
	}
	if d.gone.IsZero() {
		return fmt.Sprintf("%s, %s, healthy until %v ago", one, strings.Join(d.last, ", "), ago)
	}
	return fmt.Sprintf("%s, %s, left %v ago", one, strings.Join(d.last, ", "), ago)
}

// serviceMemory is what a node remembers of one service across rebuilds.
type serviceMemory struct {
	last   []string          // healthy instances at the last rebuild that had any
	down   time.Time         // since when none is healthy; zero while one is
	gone   time.Time         // since when no record names it; zero while one does
	claims map[string]*claim // its host name claims as last published
}

type domainService struct{ domain, service string }

// nameBook is the node's memory of services and host name claims; only
// the rebuild path uses it, under Node.mu.
type nameBook struct {
	tombstone    time.Duration
	publicDomain string
	settled      time.Time // start + claimSettle
	services     map[string]*serviceMemory
	firstSeen    map[domainService]time.Time
	logged       map[string]bool // conflicts already logged
	policyLogged map[string]bool // claims against the policy already logged
}

func newNameBook(tombstone time.Duration, publicDomain string, start time.Time) *nameBook {
	return &nameBook{tombstone: tombstone, publicDomain: publicDomain, settled: start.Add(claimSettle),
		services: map[string]*serviceMemory{}, firstSeen: map[domainService]time.Time{}, logged: map[string]bool{}}
}

// apply completes a freshly built snapshot with what the node remembers:
// tombstones, the owner of every host name, the refused claims (logging
// new ones once). s is not yet published, so it may be written.
func (b *nameBook) apply(s *Snapshot, now time.Time, log *slog.Logger) {
	healthy := map[string][]string{}
	for _, in := range s.Services {
		switch {
		case len(in.Instances) > 0:
			healthy[in.Service] = append(healthy[in.Service], in.Instances...)
		case in.Healthy > 0 && len(in.Gateways) > 0:
			// The global pool carries counts, not instance names.
			healthy[in.Service] = append(healthy[in.Service], "in region "+in.Region)
		}
	}
	bySvc := map[string]map[string]*claim{}
	for d, by := range s.claims {
		for svc, cl := range by {
			if bySvc[svc] == nil {
				bySvc[svc] = map[string]*claim{}
			}
			bySvc[svc][d] = cl
		}
	}
	for svc := range s.known {
		m := b.services[svc]
		if m == nil {
			m = &serviceMemory{}
			b.services[svc] = m
		}
		m.gone = time.Time{}
		m.claims = bySvc[svc] // a name the service no longer claims is released
		if h := healthy[svc]; len(h) > 0 {
			slices.Sort(h)
			m.last, m.down = h, time.Time{}
		} else if m.down.IsZero() {
			m.down = now
		}
	}
	for svc, m := range b.services {
		if s.known[svc] {
			continue
		}
		if m.gone.IsZero() {
			m.gone = now
			if m.down.IsZero() {
				m.down = now
			}
		}
		if now.Sub(m.gone) >= b.tombstone {
			delete(b.services, svc)
			continue
		}
		// A tombstoned service keeps its names: its host gives 503,
		// and nobody else takes it while the tombstone lasts.
		for d, cl := range m.claims {
			if s.claims[d] == nil {
				s.claims[d] = map[string]*claim{}
			}
			s.claims[d][svc] = cl
		}
	}
	s.down = map[string]*serviceDown{}
	for svc, m := range b.services {
		if m.down.IsZero() {
			continue
		}
		d := &serviceDown{last: m.last, since: m.down, gone: m.gone}
		if !m.gone.IsZero() {
			d.until = m.gone.Add(b.tombstone)
		}
		s.down[svc] = d
	}
	b.resolve(s, now, log)
}

// resolve fills s.domains and s.Conflicts from s.claims by the rules at
// the top of this file.
func (b *nameBook) resolve(s *Snapshot, now time.Time, log *slog.Logger) {
	first := now
	if first.Before(b.settled) {
		first = b.settled
	}
	seen := map[domainService]time.Time{}
	for d, by := range s.claims {
		for svc := range by {
			k := domainService{d, svc}
			t, ok := b.firstSeen[k]
			if !ok {
				t = first
			}
			seen[k] = t
		}
	}
	b.firstSeen = seen // a claim nobody makes any more is forgotten

	s.domains = map[string]string{}
	s.Conflicts = nil
	for d, by := range s.claims {
		svcs := make([]string, 0, len(by))
		for svc := range by {
			svcs = append(svcs, svc)
		}
		order := func(a, b string) int {
			ta, tb := seen[domainService{d, a}], seen[domainService{d, b}]
			if c := ta.Compare(tb); c != 0 {
				return c
			}
			sa, sb := by[a].since, by[b].since
			if (sa == 0) != (sb == 0) {
				return cmp.Compare(sb, sa) // a known age before an unknown one
			}
			return cmp.Or(cmp.Compare(sa, sb), cmp.Compare(a, b))
		}
		slices.SortFunc(svcs, order)
		owner, byName := svcs[0], false
		if x, ok := serviceUnder(d, b.publicDomain); ok {
			owner, byName = x, true
		}
		if by[owner] != nil {
			s.domains[d] = owner
		}
		for _, svc := range svcs {
			if svc == owner {
				continue
			}
			c := DomainConflict{Domain: d, Owner: owner, Refused: svc, RefusedNodes: sortedNodes(by[svc])}
			if cl := by[owner]; cl != nil {
				c.OwnerNodes = sortedNodes(cl)
			}
			to, ts := seen[domainService{d, owner}], seen[domainService{d, svc}]
			switch {
			case byName:
				c.Reason = fmt.Sprintf("%s is the name of service %s under the public domain %s", d, owner, b.publicDomain)
			case to.Before(ts):
				c.Reason = fmt.Sprintf("%s has held it since %s as this node saw it", owner, to.UTC().Format(time.RFC3339))
			case by[owner].since != by[svc].since:
				c.Reason = fmt.Sprintf("both first seen together; %s's claim is older (since %s)",
					owner, time.UnixMilli(by[owner].since).UTC().Format(time.RFC3339Nano))
			default:
				c.Reason = fmt.Sprintf("both first seen together; %s comes first by name", owner)
			}
			s.Conflicts = append(s.Conflicts, c)
		}
	}
	slices.SortFunc(s.Conflicts, func(a, b DomainConflict) int {
		return cmp.Or(cmp.Compare(a.Domain, b.Domain), cmp.Compare(a.Refused, b.Refused))
	})

	// Log each conflict once while it lasts; one that ends and comes
	// back is logged again.
	logged := make(map[string]bool, len(s.Conflicts))
	for _, c := range s.Conflicts {
		k := c.Domain + "\x00" + c.Owner + "\x00" + c.Refused
		logged[k] = true
		if !b.logged[k] && log != nil {
			log.Warn("refused a claim on a public host name", "domain", c.Domain,
				"owner", c.Owner, "owner_nodes", c.OwnerNodes, "refused", c.Refused,
				"refused_nodes", c.RefusedNodes, "reason", c.Reason)
		}
	}
	b.logged = logged
}

func sortedNodes(c *claim) []string {
	out := slices.Clone(c.nodes)
	slices.Sort(out)
	return out
}

// nextExpiry is how long until the next tombstone ends, false when none
// is pending.
func (b *nameBook) nextExpiry(now time.Time) (time.Duration, bool) {
	var next time.Time
	for _, m := range b.services {
		if m.gone.IsZero() {
			continue
		}
		if u := m.gone.Add(b.tombstone); next.IsZero() || u.Before(next) {
			next = u
		}
	}
	if next.IsZero() {
		return 0, false
	}
	return max(next.Sub(now), 0), true
}

// scheduleExpiryLocked makes the node rebuild when the next tombstone ends, so
// the names of a service gone for good are released without waiting for
// a gossip change. Caller holds n.mu.
func (n *Node) scheduleExpiryLocked(now time.Time) {
	if n.expiry != nil {
		n.expiry.Stop()
		n.expiry = nil
	}
	if d, ok := n.names.nextExpiry(now); ok && !n.stopped {
		n.expiry = time.AfterFunc(d+time.Millisecond, n.kickRebuild)
	}
}

// applyPolicy makes the policy's domains decide the names it names: the
// nameBook's verdicts on those names give way (s.domains keeps what the
// claims say, but publicServiceOf asks the policy first), and every claim
// on such a name by a service the policy does not give it to is a refused
// claim, shown by meshd routes and logged once while it lasts.
func (b *nameBook) applyPolicy(s *Snapshot, t *routeTable, log *slog.Logger) {
	if t == nil || len(t.domains) == 0 {
		b.policyLogged = nil
		return
	}
	kept := s.Conflicts[:0]
	for _, c := range s.Conflicts {
		if _, ok := t.domains[c.Domain]; !ok {
			kept = append(kept, c)
		}
	}
	s.Conflicts = kept
	for d, by := range s.claims {
		owner, ok := t.domains[d]
		if !ok {
			continue
		}
		for svc, cl := range by {
			if svc == owner {
				continue
			}
			c := DomainConflict{Domain: d, Owner: owner, Refused: svc, RefusedNodes: sortedNodes(cl),
				Reason: fmt.Sprintf("the traffic policy (version %d) gives it to %s", t.version, owner)}
			if ocl := by[owner]; ocl != nil {
				c.OwnerNodes = sortedNodes(ocl)
			}
			s.Conflicts = append(s.Conflicts, c)
			k := "policy\x00" + d + "\x00" + svc
			if !b.policyLogged[k] && log != nil {
				log.Warn("refused a claim on a public host name", "domain", d, "owner", owner,
					"refused", svc, "refused_nodes", c.RefusedNodes, "reason", c.Reason)
			}
		}
	}
	slices.SortFunc(s.Conflicts, func(a, b DomainConflict) int {
		return cmp.Or(cmp.Compare(a.Domain, b.Domain), cmp.Compare(a.Refused, b.Refused))
	})
	logged := map[string]bool{}
	for _, c := range s.Conflicts {
		if c.Owner == t.domains[c.Domain] {
			logged["policy\x00"+c.Domain+"\x00"+c.Refused] = true
		}
	}
	b.policyLogged = logged
}
