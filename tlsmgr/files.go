package tlsmgr

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// IssueFiles mints an SVID for id with the CA in dir and writes it to
// outCert (PEM, mode 0644) and outKey (PKCS#8 PEM, mode 0600); it backs
// `meshd ca issue`. Existing files are replaced, because re-issuing is how a
// node in file mode gets its next certificate. Each file is written to a
// temporary file and renamed into place, so a Manager polling them never
// reads half a file; the key is written first, and a Manager that sees the
// new key with the old certificate refuses the mismatched pair and waits
// for the certificate.
func IssueFiles(dir, id string, ttl time.Duration, outCert, outKey string) error {
	if outCert == "" || outKey == "" {
		return errors.New("output certificate and key paths are required")
	}
	if filepath.Clean(outCert) == filepath.Clean(outKey) {
		return fmt.Errorf("certificate and key must be different files, both are %s", outCert)
	}
	ca, err := LoadCA(dir)
	if err != nil {
		return err
	}
	if ca.Key == nil {
		return fmt.Errorf("%s not found in %s: issuing needs the CA key", CAKeyFile, dir)
	}
	certPEM, keyPEM, err := ca.Issue(id, ttl, time.Now())
	if err != nil {
		return err
	}
	if err := writeAtomic(outKey, keyPEM, 0o600); err != nil {
		return err
	}
	return writeAtomic(outCert, certPEM, 0o644)
}

// writeAtomic writes data to a temporary file next to p and renames it over
// p (rename is atomic within a directory on POSIX file systems).
func writeAtomic(p string, data []byte, mode fs.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(p), "."+filepath.Base(p)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	tmp := f.Name()
	fail := func(err error) error {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", p, err)
	}
	if err := f.Chmod(mode); err != nil {
		return fail(err)
	}
	if _, err := f.Write(data); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, p); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", p, err)
	}
	return nil
}

// fileVersion identifies the contents of a list of files. It is a digest
// of the bytes, not modification times and sizes: a replacement written
// within the file system's timestamp granularity, with a key of the same
// length, would otherwise go unnoticed, and a file that is only touched (or
// whose new bytes were already loaded under an older stamp) would count as
// a new version. The files are a few kilobytes, so reading them each poll
// costs little.
type fileVersion [sha256.Size]byte

// readVersioned reads every file of paths and digests what it read. The
// caller parses the same bytes it got the version of, so the version it
// remembers always describes what it loaded, even if a file is replaced
// while it reads. Reading follows symlinks, so a Kubernetes secret volume
// that swaps its ..data link is a new version.
func readVersioned(paths ...string) (fileVersion, [][]byte, error) {
	h := sha256.New()
	data := make([][]byte, len(paths))
	for i, p := range paths {
		b, err := readSmallFile(p)
		if err != nil {
			return fileVersion{}, nil, err
		}
		// Length-prefixed, so moving bytes between files changes the digest.
		binary.Write(h, binary.BigEndian, uint64(len(b)))
		h.Write(b)
		data[i] = b
	}
	return fileVersion(h.Sum(nil)), data, nil
}

// watched are the files of file mode, in the order loadFiles takes them.
func (m *Manager) watched() []string {
	return []string{filepath.Join(m.CADir, CACertFile), m.CertFile, m.KeyFile}
}

// loadFiles reads ca.crt, CertFile and KeyFile and checks that they form a
// usable identity (see parseFiles). It returns the version of the bytes it
// parsed.
func (m *Manager) loadFiles(want spiffeid.TrustDomain) (*identity, fileVersion, error) {
	v, data, err := readVersioned(m.watched()...)
	if err != nil {
		return nil, v, err
	}
	id, err := m.parseFiles(data, want)
	return id, v, err
}

// parseFiles checks that data (ca.crt, CertFile and KeyFile, as read by
// loadFiles) form a usable identity: the pair matches, the SVID verifies
// against ca.crt now, and its ID is the configured one (or, with no ID
// configured, any ID of want's trust domain; want is zero at Start).
func (m *Manager) parseFiles(data [][]byte, want spiffeid.TrustDomain) (*identity, error) {
	caPath := filepath.Join(m.CADir, CACertFile)
	roots, caTD, err := parseBundle(data[0])
	if err != nil {
		return nil, fmt.Errorf("ca certificate %s: %w", caPath, err)
	}
	svid, err := x509svid.Parse(data[1], data[2])
	if err != nil {
		return nil, fmt.Errorf("load svid from %s and %s: %w", m.CertFile, m.KeyFile, err)
	}
	if svid.ID.TrustDomain() != caTD {
		return nil, fmt.Errorf("wrong trust domain: %s holds %q, not in trust domain %q of %s",
			m.CertFile, svid.ID, caTD.Name(), caPath)
	}
	if !want.IsZero() && svid.ID.TrustDomain() != want {
		return nil, fmt.Errorf("%s changed trust domain from %q to %q: restart the node", m.CertFile, want.Name(), svid.ID.TrustDomain().Name())
	}
	if m.ID != "" && svid.ID.String() != m.ID {
		return nil, fmt.Errorf("%s holds %q, want %q", m.CertFile, svid.ID, m.ID)
	}
	bundle := x509bundle.FromX509Authorities(svid.ID.TrustDomain(), roots)
	// Serving an SVID that peers will refuse helps no one: check it the way
	// they will, with go-spiffe against the bundle, at the current time.
	if _, _, err := x509svid.Verify(svid.Certificates, bundle, x509svid.WithTime(m.now())); err != nil {
		return nil, fmt.Errorf("%s does not verify against %s: %w", m.CertFile, caPath, err)
	}
	return &identity{svid: svid, bundle: bundle, issued: m.now()}, nil
}

func (m *Manager) prepareFiles() (*identity, func(context.Context), error) {
	first, v, err := m.loadFiles(spiffeid.TrustDomain{})
	if err != nil {
		return nil, nil, err
	}
	return first, func(ctx context.Context) { m.pollLoop(ctx, v) }, nil
}

// pollLoop reloads the files when their contents change. A failed load
// keeps the current SVID and is not retried until the files change again,
// so a bad file is logged once, not every poll. The version compared is
// that of the bytes parsed, so one replacement is one reload, however the
// poll interleaves with the writes of key and certificate.
func (m *Manager) pollLoop(ctx context.Context, good fileVersion) {
	interval := m.PollInterval
	if interval == 0 {
		interval = DefaultPollInterval
	}
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	var failed fileVersion // the version last refused; zero if none
	unreadable := false
	warnedExpiry := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		v, data, err := readVersioned(m.watched()...)
		switch {
		case err != nil:
			if !unreadable {
				m.logger().Warn("svid files unreadable; keeping the current svid", "err", err)
			}
			unreadable = true
		case v == good || v == failed:
			unreadable = false
		default:
			unreadable = false
			cur := m.cur.Load()
			next, err := m.parseFiles(data, cur.svid.ID.TrustDomain())
			if err != nil {
				failed = v
				m.logger().Warn("svid reload failed; keeping the current svid", "err", err,
					"not_after", m.NotAfter())
				break
			}
			good, failed = v, fileVersion{}
			m.cur.Store(next)
			m.changed()
			warnedExpiry = false
			n := m.renewals.Add(1)
			leaf := next.svid.Certificates[0]
			m.logger().Info("svid reloaded", "id", next.svid.ID.String(), "renewals", n,
				"serial", leaf.SerialNumber.Text(16), "not_after", leaf.NotAfter)
		}
		m.polls.Add(1)
		if !warnedExpiry && m.now().After(m.NotAfter()) {
			warnedExpiry = true
			m.logger().Error("svid expired and no valid replacement found; peers will refuse this node",
				"cert", m.CertFile, "not_after", m.NotAfter())
		}
	}
}
