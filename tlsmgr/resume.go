package tlsmgr

import (
	"container/list"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Session resumption between mesh hops.
//
// crypto/tls calls VerifyPeerCertificate, where the peer is verified and
// authorized, only on full handshakes. A resumed session is therefore
// re-authorized here:
//
//   - server, WrapSession (each handshake ends with a new ticket): the
//     ticket records what the verification of the peer found (its SPIFFE
//     ID, the roots its chain ended in, the earliest NotAfter of the
//     chain). A peer that does not verify or is not authorized gets a
//     ticket no key decrypts.
//   - server, UnwrapSession (before crypto/tls accepts the ticket): the
//     session is resumed only while one of those roots is still in the
//     current trust bundle, no certificate of the chain has expired, and
//     the authorizer still accepts the ID. Otherwise the ticket is ignored
//     and the handshake falls back to a full one, which verifies the
//     peer's current certificate from scratch.
//   - client, ClientSessionCache.Get: a session is offered only while the
//     trust bundle is the one it was stored under (crypto/tls itself drops
//     a session whose server certificate expired).
//   - both sides, VerifyConnection on every resumed handshake: the chain
//     restored from the session is verified again by go-spiffe against the
//     current bundle at the current time, and the same authorizer runs.
//     This is the authoritative check; the ones above make a stale session
//     fall back to a full handshake instead of failing.
//
// Verifying a chain costs an ECDSA verification per certificate; the result
// is remembered per presented chain and bundle value (Manager.verify), so
// a resumed handshake costs the key exchange and no signature.
//
// Tickets are encrypted with keys the Manager rotates (Manager.tickets).

const (
	// TicketKeyRotation is how often a Manager replaces the key that
	// encrypts new session tickets. The previous key still decrypts for
	// one more period, so a key, and a ticket, is usable for less than
	// twice this; the session a ticket carries also ends when a
	// certificate of the peer's chain expires, whichever comes first.
	TicketKeyRotation = time.Hour
	// clientSessionCacheSize bounds the sessions one ClientTLS config
	// keeps. meshd builds one config per upstream (address and SPIFFE ID),
	// and crypto/tls keys the cache by server name or address, so one
	// entry is used per upstream; a few allow for a config shared between
	// addresses.
	clientSessionCacheSize = 8
)

// extraTag starts the entry meshd appends to SessionState.Extra (crypto/tls
// asks that entries be recognizable by a prefix).
var extraTag = []byte("meshd/tlsmgr/session/1\x00")

// sessionSummary is what a ticket records about the peer, from the
// verification of its chain when the ticket was issued.
type sessionSummary struct {
	id       spiffeid.ID
	notAfter time.Time  // earliest NotAfter of the verified chains, roots included
	roots    [][32]byte // SHA-256 of the root of each verified chain
}

// verifiedChain is the result of go-spiffe's verification of one
// presented chain against one trust bundle value.
type verifiedChain struct {
	bundle    *x509bundle.Bundle
	id        spiffeid.ID
	chains    [][]*x509.Certificate
	notBefore time.Time // the latest NotBefore of the verified chains
	summary   sessionSummary
}

// maxVerified bounds the verification memo: past it the memo starts over.
// It holds one entry per certificate of a peer that is still valid.
const maxVerified = 1024

// verify verifies the chain a peer presented (leaf first) with go-spiffe,
// against the current trust bundle at time now, as a full handshake does.
//
// The result is remembered per chain and bundle value: verifying the same
// certificates against the same roots gives the same answer at any time
// inside their validity, so a later verification of that chain against
// that bundle (the resumption of a session, the ticket issued after a
// full handshake) checks only that now is still inside the validity of
// every certificate of the chain, root included. A new bundle value (a
// reload, a rotation) is a new verification.
func (m *Manager) verify(certs []*x509.Certificate, now time.Time) (*verifiedChain, error) {
	cur := m.cur.Load()
	if cur == nil {
		return nil, errors.New("tlsmgr: manager not started: no bundle")
	}
	if len(certs) == 0 {
		return nil, errors.New("tlsmgr: peer presented no certificate")
	}
	key := chainKey(certs)
	m.verifiedMu.Lock()
	v := m.verified[key]
	m.verifiedMu.Unlock()
	if v != nil && v.bundle == cur.bundle && !now.Before(v.notBefore) && !now.After(v.summary.notAfter) {
		return v, nil
	}
	id, chains, err := x509svid.Verify(certs, cur.bundle, x509svid.WithTime(now))
	if err != nil {
		return nil, err
	}
	v = &verifiedChain{bundle: cur.bundle, id: id, chains: chains, summary: sessionSummary{id: id}}
	for _, chain := range chains {
		if len(chain) == 0 {
			continue
		}
		v.summary.roots = append(v.summary.roots, sha256.Sum256(chain[len(chain)-1].Raw))
		for _, c := range chain {
			if v.summary.notAfter.IsZero() || c.NotAfter.Before(v.summary.notAfter) {
				v.summary.notAfter = c.NotAfter
			}
			if c.NotBefore.After(v.notBefore) {
				v.notBefore = c.NotBefore
			}
		}
	}
	if len(v.summary.roots) == 0 {
		return nil, errors.New("tlsmgr: no verified chain")
	}
	m.verifiedMu.Lock()
	defer m.verifiedMu.Unlock()
	if m.verified == nil {
		m.verified = make(map[[32]byte]*verifiedChain)
	}
	// A new chain is rare (a new peer, a renewed certificate): forget the
	// results no handshake can use any more, and start over if the memo
	// is still full.
	for k, old := range m.verified {
		if old.bundle != cur.bundle || now.After(old.summary.notAfter) {
			delete(m.verified, k)
		}
	}
	if len(m.verified) >= maxVerified {
		clear(m.verified)
	}
	m.verified[key] = v
	return v, nil
}

// chainKey identifies a presented chain by the SHA-256 of its certificates.
func chainKey(certs []*x509.Certificate) [32]byte {
	h := sha256.New()
	var n [4]byte
	for _, c := range certs {
		binary.BigEndian.PutUint32(n[:], uint32(len(c.Raw)))
		h.Write(n[:])
		h.Write(c.Raw)
	}
	var k [32]byte
	h.Sum(k[:0])
	return k
}

// authorized verifies certs (see verify) and runs authorize on the result.
func (m *Manager) authorized(certs []*x509.Certificate, now time.Time, authorize tlsconfig.Authorizer) (*verifiedChain, error) {
	v, err := m.verify(certs, now)
	if err != nil {
		return nil, err
	}
	if err := authorize(v.id, v.chains); err != nil {
		return nil, err
	}
	return v, nil
}

func (s sessionSummary) encode() []byte {
	idb := s.id.String()
	b := make([]byte, 0, len(extraTag)+8+1+32*len(s.roots)+len(idb))
	b = append(b, extraTag...)
	b = binary.BigEndian.AppendUint64(b, uint64(s.notAfter.Unix()))
	b = append(b, byte(len(s.roots)))
	for _, r := range s.roots {
		b = append(b, r[:]...)
	}
	return append(b, idb...)
}

// findSummary returns meshd's entry of a session's Extra.
func findSummary(extra [][]byte) (sessionSummary, bool) {
	for _, e := range extra {
		b, ok := cutPrefix(e, extraTag)
		if !ok || len(b) < 9 {
			continue
		}
		var s sessionSummary
		s.notAfter = time.Unix(int64(binary.BigEndian.Uint64(b)), 0)
		n := int(b[8])
		b = b[9:]
		if n == 0 || len(b) < 32*n {
			return sessionSummary{}, false
		}
		for i := range n {
			s.roots = append(s.roots, [32]byte(b[32*i:32*i+32]))
		}
		id, err := spiffeid.FromString(string(b[32*n:]))
		if err != nil {
			return sessionSummary{}, false
		}
		s.id = id
		return s, true
	}
	return sessionSummary{}, false
}

func cutPrefix(b, prefix []byte) ([]byte, bool) {
	if len(b) < len(prefix) || string(b[:len(prefix)]) != string(prefix) {
		return nil, false
	}
	return b[len(prefix):], true
}

// withoutSummary drops meshd's entries from extra, keeping other layers'.
func withoutSummary(extra [][]byte) [][]byte {
	return slices.DeleteFunc(slices.Clone(extra), func(e []byte) bool {
		_, ok := cutPrefix(e, extraTag)
		return ok
	})
}

// bundleDigest identifies the contents of one trust bundle.
type bundleDigest struct {
	bundle *x509bundle.Bundle
	sum    [32]byte   // over the sorted root digests
	roots  [][32]byte // SHA-256 of each root, sorted
}

// digest returns the digest of the current trust bundle, computed once per
// bundle value (bundles are replaced, never modified, by the Manager).
func (m *Manager) digest() *bundleDigest {
	cur := m.cur.Load()
	if cur == nil {
		return &bundleDigest{}
	}
	if d := m.bundleSum.Load(); d != nil && d.bundle == cur.bundle {
		return d
	}
	d := &bundleDigest{bundle: cur.bundle}
	for _, c := range cur.bundle.X509Authorities() {
		d.roots = append(d.roots, sha256.Sum256(c.Raw))
	}
	slices.SortFunc(d.roots, func(a, b [32]byte) int { return slices.Compare(a[:], b[:]) })
	h := sha256.New()
	for _, r := range d.roots {
		h.Write(r[:])
	}
	h.Sum(d.sum[:0])
	m.bundleSum.Store(d)
	return d
}

func (d *bundleDigest) trusts(root [32]byte) bool {
	_, ok := slices.BinarySearchFunc(d.roots, root, func(a, b [32]byte) int { return slices.Compare(a[:], b[:]) })
	return ok
}

// ticketKeys is one generation of the session ticket keys: a config that
// exists only to hold them for EncryptTicket and DecryptTicket.
type ticketKeys struct {
	cfg      *tls.Config
	keys     [][32]byte // keys[0] encrypts; all decrypt
	rotateAt time.Time
}

// tickets returns the current ticket keys, rotating them when due: every
// TicketKeyRotation a new key encrypts, the one before it still decrypts,
// older ones are forgotten. Rotation follows the Manager's clock and needs
// no goroutine: it happens on the first handshake that finds the keys due.
//
// meshd rotates the keys itself rather than leaving it to crypto/tls's
// automatic keys (a new key every 24 hours, each accepted for 7 days) so
// that a ticket key lives for two hours, not a week: a TLS 1.2 ticket holds
// the session's master secret, and whoever has the key can decrypt the
// sessions it protects. One set of keys serves every config the Manager
// builds, and the rotation follows Manager.Now, as certificate validity
// does.
func (m *Manager) tickets(now time.Time) *ticketKeys {
	if t := m.tkeys.Load(); t != nil && now.Before(t.rotateAt) {
		return t
	}
	m.tkeysMu.Lock()
	defer m.tkeysMu.Unlock()
	old := m.tkeys.Load()
	if old != nil && now.Before(old.rotateAt) {
		return old
	}
	var k [32]byte
	if _, err := rand.Read(k[:]); err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	t := &ticketKeys{cfg: &tls.Config{}, keys: [][32]byte{k}, rotateAt: now.Add(TicketKeyRotation)}
	if old != nil && now.Before(old.rotateAt.Add(TicketKeyRotation)) {
		// On the old schedule, so that no key decrypts for longer than
		// two periods, however late the handshake that rotates it.
		t.keys = append(t.keys, old.keys[0])
		t.rotateAt = old.rotateAt.Add(TicketKeyRotation)
	}
	t.cfg.SetSessionTicketKeys(t.keys)
	m.tkeys.Store(t)
	return t
}

// wrapSession is the server's Config.WrapSession: it records in the ticket
// what the verification of the peer found, and encrypts it with the
// Manager's ticket keys. A peer that does not verify or is not authorized
// now (its handshake is about to fail in VerifyConnection) gets a ticket
// that decrypts with no key, so its next connection is a full handshake
// rather than another attempt with this session.
func (m *Manager) wrapSession(authorize tlsconfig.Authorizer) func(tls.ConnectionState, *tls.SessionState) ([]byte, error) {
	return func(cs tls.ConnectionState, ss *tls.SessionState) ([]byte, error) {
		now := m.now()
		v, err := m.authorized(cs.PeerCertificates, now, authorize)
		if err != nil {
			dud := make([]byte, 64)
			_, _ = rand.Read(dud)
			return dud, nil
		}
		ss.Extra = append(withoutSummary(ss.Extra), v.summary.encode())
		return m.tickets(now).cfg.EncryptTicket(cs, ss)
	}
}

// unwrapSession is the server's Config.UnwrapSession. It returns nil (no
// resumption, a full handshake follows) for a ticket it cannot decrypt,
// one without meshd's record, and one whose peer is no longer acceptable:
// a certificate of its chain has expired, its root is no longer in the
// trust bundle, or the authorizer refuses its SPIFFE ID.
func (m *Manager) unwrapSession(authorize tlsconfig.Authorizer) func([]byte, tls.ConnectionState) (*tls.SessionState, error) {
	return func(identity []byte, cs tls.ConnectionState) (*tls.SessionState, error) {
		now := m.now()
		ss, err := m.tickets(now).cfg.DecryptTicket(identity, cs)
		if err != nil || ss == nil {
			return nil, nil
		}
		if !m.stillAcceptable(ss, now, authorize) {
			return nil, nil
		}
		return ss, nil
	}
}

func (m *Manager) stillAcceptable(ss *tls.SessionState, now time.Time, authorize tlsconfig.Authorizer) bool {
	s, ok := findSummary(ss.Extra)
	if !ok || now.After(s.notAfter) {
		return false
	}
	d := m.digest()
	if !slices.ContainsFunc(s.roots, d.trusts) {
		return false
	}
	return authorize(s.id, nil) == nil
}

// sessionCache is a ClientTLS config's ClientSessionCache: a small LRU
// whose entries remember the trust bundle they were verified against. A
// session is not offered once the bundle has changed (a root added or
// removed): the next handshake is a full one, verified against the new
// bundle.
type sessionCache struct {
	m   *Manager
	max int

	mu    sync.Mutex
	ll    *list.List // of *cacheEntry, most recent first
	items map[string]*list.Element
}

type cacheEntry struct {
	key    string
	cs     *tls.ClientSessionState
	bundle [32]byte
}

func newSessionCache(m *Manager, max int) *sessionCache {
	return &sessionCache{m: m, max: max, ll: list.New(), items: make(map[string]*list.Element)}
}

func (c *sessionCache) Get(key string) (*tls.ClientSessionState, bool) {
	sum := c.m.digest().sum
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.items[key]
	if !ok {
		return nil, false
	}
	e := el.Value.(*cacheEntry)
	if e.bundle != sum {
		c.ll.Remove(el)
		delete(c.items, key)
		return nil, false
	}
	c.ll.MoveToFront(el)
	return e.cs, true
}

func (c *sessionCache) Put(key string, cs *tls.ClientSessionState) {
	sum := c.m.digest().sum
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[key]; ok {
		if cs == nil {
			c.ll.Remove(el)
			delete(c.items, key)
			return
		}
		e := el.Value.(*cacheEntry)
		e.cs, e.bundle = cs, sum
		c.ll.MoveToFront(el)
		return
	}
	if cs == nil {
		return
	}
	c.items[key] = c.ll.PushFront(&cacheEntry{key: key, cs: cs, bundle: sum})
	for c.ll.Len() > c.max {
		last := c.ll.Back()
		c.ll.Remove(last)
		delete(c.items, last.Value.(*cacheEntry).key)
	}
}

// flush forgets every session.
func (c *sessionCache) flush() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ll.Init()
	clear(c.items)
}

func (c *sessionCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ll.Len()
}
