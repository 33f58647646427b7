package tlsmgr

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Staged root rotation. A root CA cannot be replaced in one step without an
// outage: a node that trusts only the new root refuses every SVID of the
// old one, and the other way round. So `meshd ca rotate` replaces it in
// three steps, each of which reaches every node (they watch their CA
// directory, see watchCA) before the next one runs:
//
//	begin   ca.crt: old + new root   ca.key: old    ca.next.{crt,key}: new
//	        every node trusts both roots; SVIDs still come from the old one
//	switch  ca.crt: old + new root   ca.key: new    ca.prev.{crt,key}: old
//	        nodes re-mint from the new root (after a random RemintJitter);
//	        an SVID of either root verifies everywhere
//	finish  ca.crt: new root         ca.key: new
//	        the old root is trusted nowhere any more
//
// ca.crt is the trust bundle every node reads; ca.key is the key of the
// root that issues (whichever root of ca.crt it belongs to); ca.next.* and
// ca.prev.* are kept beside them and name the step the directory is at, so
// each step can refuse to run out of order. Open connections are never
// dropped: crypto/tls verifies a peer once, at the handshake, and each step
// keeps every SVID in use verifiable by every node that took the step
// before.

// Files of a CA directory during a rotation.
const (
	CANextCertFile = "ca.next.crt"
	CANextKeyFile  = "ca.next.key"
	CAPrevCertFile = "ca.prev.crt"
	CAPrevKeyFile  = "ca.prev.key"
)

// Steps of a rotation (Rotation.Step).
const (
	StepNone     = "none"     // one root (or a bundle) and no rotation under way
	StepBegun    = "begun"    // the new root is trusted, the old one issues
	StepSwitched = "switched" // the new root issues, the old one is still trusted
)

// Rotation is the state of a CA directory's root rotation.
type Rotation struct {
	Step string
	CA   *CA               // ca.crt and ca.key
	Next *x509.Certificate // StepBegun: the root that `switch` makes issue
	Prev *x509.Certificate // StepSwitched: the root that `finish` drops
}

// ReadRotation reads dir and tells which step of a rotation it is at. The
// directory must hold ca.key: only the machine that keeps the CA key can
// rotate the root.
func ReadRotation(dir string) (*Rotation, error) {
	ca, err := LoadCA(dir)
	if err != nil {
		return nil, err
	}
	if ca.Key == nil {
		return nil, fmt.Errorf("%s not found in %s: rotating the root needs the CA key", CAKeyFile, dir)
	}
	next, err := exists(filepath.Join(dir, CANextCertFile))
	if err != nil {
		return nil, err
	}
	prev, err := exists(filepath.Join(dir, CAPrevCertFile))
	if err != nil {
		return nil, err
	}
	r := &Rotation{Step: StepNone, CA: ca}
	switch {
	case next && prev:
		return nil, fmt.Errorf("%s holds both %s and %s: an interrupted `meshd ca rotate switch`; if ca.key is the key of %s, remove %s and %s to complete it",
			dir, CANextCertFile, CAPrevCertFile, CANextCertFile, CANextCertFile, CANextKeyFile)
	case next:
		r.Step = StepBegun
		p := filepath.Join(dir, CANextCertFile)
		if r.Next, err = loadOneRoot(p, ca); err != nil {
			return nil, err
		}
		if r.Next.Equal(ca.Cert) {
			return nil, fmt.Errorf("%s is the root ca.key belongs to: an interrupted `meshd ca rotate switch`; remove %s and %s to complete it", p, CANextCertFile, CANextKeyFile)
		}
		keyPath := filepath.Join(dir, CANextKeyFile)
		data, err := readSmallFile(keyPath)
		if err != nil {
			return nil, err
		}
		key, err := parsePrivateKey(data)
		if err != nil {
			return nil, fmt.Errorf("next ca key %s: %w", keyPath, err)
		}
		if !publicKeysEqual(key.Public(), r.Next.PublicKey) {
			return nil, fmt.Errorf("next ca key %s: does not match the certificate in %s", keyPath, p)
		}
	case prev:
		r.Step = StepSwitched
		p := filepath.Join(dir, CAPrevCertFile)
		if r.Prev, err = loadOneRoot(p, ca); err != nil {
			return nil, err
		}
		if r.Prev.Equal(ca.Cert) {
			return nil, fmt.Errorf("%s is the root ca.key belongs to: an interrupted `meshd ca rotate switch`; put %s back as ca.key", p, CAPrevKeyFile)
		}
	}
	return r, nil
}

// loadOneRoot reads a file holding one root, which must be in ca's bundle.
func loadOneRoot(p string, ca *CA) (*x509.Certificate, error) {
	data, err := readSmallFile(p)
	if err != nil {
		return nil, err
	}
	roots, _, err := parseBundle(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	if len(roots) != 1 {
		return nil, fmt.Errorf("%s: holds %d certificates, want one root", p, len(roots))
	}
	for _, c := range ca.Roots {
		if c.Equal(roots[0]) {
			return roots[0], nil
		}
	}
	return nil, fmt.Errorf("%s: its root (%s) is not in %s: the directory was changed by hand; put it back or remove %s",
		p, Fingerprint(roots[0]), CACertFile, p)
}

func exists(p string) (bool, error) {
	_, err := os.Lstat(p)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	}
	return false, fmt.Errorf("check %s: %w", p, err)
}

// outOfOrder is the error of a step run at the wrong time: what the
// directory is at, and what to run instead.
func outOfOrder(step string, r *Rotation) error {
	var at, next string
	switch r.Step {
	case StepNone:
		at, next = "no rotation is under way", "`meshd ca rotate begin` starts one"
	case StepBegun:
		at, next = "the rotation has begun (the new root "+Fingerprint(r.Next)+" is trusted, the old one still issues)",
			"`meshd ca rotate switch` is next, once `meshd ca status` shows every node trusting both roots"
	case StepSwitched:
		at, next = "the rotation has switched (the new root "+Fingerprint(r.CA.Cert)+" issues, the old one "+Fingerprint(r.Prev)+" is still trusted)",
			"`meshd ca rotate finish` is next, once `meshd ca status` shows every SVID from the new root"
	}
	return fmt.Errorf("cannot %s: %s; %s", step, at, next)
}

// RotateBegin creates a new root beside the current one: ca.next.crt and
// ca.next.key, and ca.crt becomes the bundle of both. ca.key is untouched,
// so SVIDs still come from the old root. It refuses unless dir holds one
// root and no rotation is under way.
func RotateBegin(dir string) (*Rotation, error) {
	return rotateBegin(dir, time.Now())
}

func rotateBegin(dir string, now time.Time) (*Rotation, error) {
	r, err := ReadRotation(dir)
	if err != nil {
		return nil, err
	}
	if r.Step != StepNone {
		return nil, outOfOrder("begin", r)
	}
	if len(r.CA.Roots) != 1 {
		return nil, fmt.Errorf("cannot begin: %s holds %d roots but no rotation is under way (no %s or %s); leave one root in it first",
			filepath.Join(dir, CACertFile), len(r.CA.Roots), CANextCertFile, CAPrevCertFile)
	}
	td, err := parseTrustDomain(r.CA.TrustDomain)
	if err != nil {
		return nil, err
	}
	certPEM, keyPEM, err := newRoot(td, now, " "+now.UTC().Format("20060102T150405Z"))
	if err != nil {
		return nil, err
	}
	nextKey, nextCert := filepath.Join(dir, CANextKeyFile), filepath.Join(dir, CANextCertFile)
	if err := writeExclusive(nextKey, keyPEM, 0o600); err != nil {
		return nil, err
	}
	if err := writeExclusive(nextCert, certPEM, 0o644); err != nil {
		os.Remove(nextKey)
		return nil, err
	}
	// The bundle is written last: a node never trusts a root whose files
	// are not complete beside it.
	if err := writeAtomic(filepath.Join(dir, CACertFile), append(encodeRoots(r.CA.Roots), certPEM...), 0o644); err != nil {
		os.Remove(nextCert)
		os.Remove(nextKey)
		return nil, err
	}
	return ReadRotation(dir)
}

// RotateSwitch makes the new root issue: the old ca.crt root and ca.key go
// to ca.prev.crt and ca.prev.key, ca.next.key becomes ca.key, and ca.next.*
// are removed; ca.crt (both roots) is untouched. An operator certificate
// in dir (operator.crt) is issued again from the new root, so that what
// `meshd apply` signs still verifies after `finish`. It refuses unless
// `begin` ran last.
func RotateSwitch(dir string) (*Rotation, error) {
	r, err := ReadRotation(dir)
	if err != nil {
		return nil, err
	}
	if r.Step != StepBegun {
		return nil, outOfOrder("switch", r)
	}
	keyPath := filepath.Join(dir, CAKeyFile)
	oldKey, err := readSmallFile(keyPath)
	if err != nil {
		return nil, err
	}
	newKey, err := readSmallFile(filepath.Join(dir, CANextKeyFile))
	if err != nil {
		return nil, err
	}
	prevCert, prevKey := filepath.Join(dir, CAPrevCertFile), filepath.Join(dir, CAPrevKeyFile)
	if err := writeExclusive(prevKey, oldKey, 0o600); err != nil {
		return nil, err
	}
	if err := writeExclusive(prevCert, encodeRoots([]*x509.Certificate{r.CA.Cert}), 0o644); err != nil {
		os.Remove(prevKey)
		return nil, err
	}
	// The one change nodes act on: ca.key now belongs to the other root.
	if err := writeAtomic(keyPath, newKey, 0o600); err != nil {
		os.Remove(prevCert)
		os.Remove(prevKey)
		return nil, err
	}
	for _, name := range []string{CANextCertFile, CANextKeyFile} {
		if err := os.Remove(filepath.Join(dir, name)); err != nil {
			return nil, fmt.Errorf("switched, but %w: remove it by hand", err)
		}
	}
	if err := reissueOperator(dir); err != nil {
		return nil, fmt.Errorf("switched, but the operator certificate: %w", err)
	}
	return ReadRotation(dir)
}

// reissueOperator issues dir/operator.crt again, from the CA's issuing
// root and for the same operator name, when the file exists.
func reissueOperator(dir string) error {
	certPath := filepath.Join(dir, OperatorCertFile)
	data, err := readSmallFile(certPath)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return fmt.Errorf("%s: no PEM block found", certPath)
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return fmt.Errorf("%s: %w", certPath, err)
	}
	name := DefaultOperator
	if len(leaf.URIs) == 1 {
		if i := strings.LastIndex(leaf.URIs[0].Path, "/operator/"); i >= 0 {
			name = leaf.URIs[0].Path[i+len("/operator/"):]
		}
	}
	ca, err := LoadCA(dir)
	if err != nil {
		return err
	}
	certPEM, keyPEM, err := ca.IssueOperator(name, operatorTTL, time.Now())
	if err != nil {
		return err
	}
	if err := writeAtomic(filepath.Join(dir, OperatorKeyFile), keyPEM, 0o600); err != nil {
		return err
	}
	return writeAtomic(certPath, certPEM, 0o644)
}

// RotateFinish drops the old root: ca.crt keeps every root but the one in
// ca.prev.crt, and ca.prev.* are removed. It refuses unless `switch` ran
// last.
func RotateFinish(dir string) (*Rotation, error) {
	r, err := ReadRotation(dir)
	if err != nil {
		return nil, err
	}
	if r.Step != StepSwitched {
		return nil, outOfOrder("finish", r)
	}
	var keep []*x509.Certificate
	for _, c := range r.CA.Roots {
		if !c.Equal(r.Prev) {
			keep = append(keep, c)
		}
	}
	if err := writeAtomic(filepath.Join(dir, CACertFile), encodeRoots(keep), 0o644); err != nil {
		return nil, err
	}
	for _, name := range []string{CAPrevCertFile, CAPrevKeyFile} {
		if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("finished, but %w: remove it by hand", err)
		}
	}
	return ReadRotation(dir)
}

func encodeRoots(roots []*x509.Certificate) []byte {
	var b bytes.Buffer
	for _, c := range roots {
		pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return b.Bytes()
}

// Fingerprint names a root in gossip records, logs and `meshd ca status`:
// the first 8 bytes of the SHA-256 of its DER, in hex. Short, because every
// record carries the fingerprints of its node's bundle; a collision would
// only confuse a status display, never a verification.
func Fingerprint(c *x509.Certificate) string {
	if c == nil {
		return ""
	}
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:8])
}

// Fingerprints returns the fingerprints of certs, in order.
func Fingerprints(certs []*x509.Certificate) []string {
	out := make([]string, len(certs))
	for i, c := range certs {
		out[i] = Fingerprint(c)
	}
	return out
}

// rootsSummary is what Roots and SVIDRoot report about one identity.
type rootsSummary struct {
	id       *identity
	roots    []string
	svidRoot string
}

func (m *Manager) summary() *rootsSummary {
	cur := m.cur.Load()
	if cur == nil {
		return &rootsSummary{}
	}
	if r := m.rootsInfo.Load(); r != nil && r.id == cur {
		return r
	}
	r := &rootsSummary{id: cur, roots: Fingerprints(cur.bundle.X509Authorities())}
	r.svidRoot = Fingerprint(chainRoot(cur.svid, cur.bundle, m.now()))
	m.rootsInfo.Store(r)
	return r
}

// Roots returns the fingerprints of the trust bundle's roots, in bundle
// order; nil before Start. The slice is shared and must not be modified.
func (m *Manager) Roots() []string { return m.summary().roots }

// SVIDRoot returns the fingerprint of the root the current SVID chains to
// in the current bundle, or "" when it chains to none (or before Start).
func (m *Manager) SVIDRoot() string { return m.summary().svidRoot }

// BundleReloads returns how many times a minting Manager took a changed
// ca.crt or ca.key from CADir since Start.
func (m *Manager) BundleReloads() uint64 { return m.reloads.Load() }

// chainRoot returns the root of bundle that svid chains to at now, or nil.
func chainRoot(svid *x509svid.SVID, bundle *x509bundle.Bundle, now time.Time) *x509.Certificate {
	if svid == nil || bundle == nil {
		return nil
	}
	_, chains, err := x509svid.Verify(svid.Certificates, bundle, x509svid.WithTime(now))
	if err != nil || len(chains) == 0 || len(chains[0]) == 0 {
		return nil
	}
	return chains[0][len(chains[0])-1]
}

func (m *Manager) changed() {
	if m.OnChange != nil {
		m.OnChange()
	}
}

func (m *Manager) pollInterval() time.Duration {
	if m.PollInterval == 0 {
		return DefaultPollInterval
	}
	return m.PollInterval
}

// pollWait is the next wait between two looks at CADir: 75-125% of the
// poll interval.
func (m *Manager) pollWait() time.Duration {
	d := m.pollInterval()
	return d*3/4 + time.Duration(rand.Int64N(int64(d/2)+1))
}

func (m *Manager) remintJitter() time.Duration {
	if m.RemintJitter == 0 {
		return DefaultRemintJitter
	}
	return m.RemintJitter
}

// caWatch is what a minting Manager's renewLoop knows about CADir.
type caWatch struct {
	ca         *CA
	bundle     *x509bundle.Bundle
	version    fileVersion // of the bytes ca came from
	failed     fileVersion // the version last refused; zero if none
	unreadable bool
	remintAt   time.Time // when to mint from ca's issuing root; zero: at renewal
}

// watchCA looks at ca.crt and ca.key and takes a changed pair: the new
// bundle at once (a handshake from now on verifies against it; open
// connections are not touched), and a new issuing root by re-minting after
// a random delay up to RemintJitter, or at once when the SVID's own root
// left the bundle. A pair that does not load keeps the current identity and
// is logged once.
func (m *Manager) watchCA(w *caWatch) {
	v, data, err := readVersioned(m.caFiles()...)
	switch {
	case err != nil:
		if !w.unreadable {
			m.logger().Warn("ca dir unreadable; keeping the current trust bundle and svid", "err", err)
		}
		w.unreadable = true
		return
	case v == w.version || v == w.failed:
		w.unreadable = false
		return
	}
	w.unreadable = false
	ca, err := m.parseMintCA(data, w.ca.TrustDomain)
	if err != nil {
		w.failed = v
		m.logger().Warn("ca dir reload failed; keeping the current trust bundle and svid", "err", err)
		return
	}
	bundle := x509bundle.FromX509Authorities(spiffeid.RequireTrustDomainFromString(ca.TrustDomain), ca.Roots)
	w.ca, w.bundle, w.version, w.failed = ca, bundle, v, fileVersion{}
	m.reloads.Add(1)
	cur := m.cur.Load()
	root := chainRoot(cur.svid, bundle, m.now())
	log := m.logger().With("roots", strings.Join(Fingerprints(ca.Roots), ","), "issuing_root", Fingerprint(ca.Cert))
	switch {
	case root == nil:
		// The SVID's root left the bundle (a `finish` seen before the
		// `switch`, or a root replaced in one step): peers that took this
		// bundle refuse the SVID already, so the loop mints at once and
		// stores the new SVID with the new bundle.
		w.remintAt = m.now()
		log.Warn("trust bundle reloaded; the svid's root is no longer in it: minting from the issuing root now")
		return
	case root.Equal(ca.Cert):
		w.remintAt = time.Time{}
		log.Info("trust bundle reloaded", "svid_root", Fingerprint(root))
	default:
		if w.remintAt.IsZero() {
			w.remintAt = m.now().Add(time.Duration(rand.Int64N(int64(m.remintJitter()) + 1)))
		}
		log.Info("trust bundle reloaded; a new root issues: minting from it after a random delay", "svid_root", Fingerprint(root),
			"mint_in", w.remintAt.Sub(m.now()).Round(time.Millisecond))
	}
	m.cur.Store(&identity{svid: cur.svid, bundle: bundle, issued: cur.issued})
	m.changed()
}
