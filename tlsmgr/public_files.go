package tlsmgr

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"time"
)

// fileSet is one immutable generation of SourceFiles: every pair, indexed
// by name. A reload or a new OCSP staple builds a new set and swaps it, so
// a handshake never sees a half-updated index.
type fileSet struct {
	pairs []*tls.Certificate // in Files order; pairs[0] is the default
	exact map[string]*tls.Certificate
	wild  map[string]*tls.Certificate // key: the parent domain of "*.<parent>"
	stamp fileVersion
}

// filePaths lists Files as certificate, key, certificate, key, ...
func (p *PublicCerts) filePaths() []string {
	paths := make([]string, 0, 2*len(p.Files))
	for _, f := range p.Files {
		paths = append(paths, f.Cert, f.Key)
	}
	return paths
}

// stampFiles reads every file of Files and digests them.
func (p *PublicCerts) stampFiles() (fileVersion, error) {
	v, _, err := readVersioned(p.filePaths()...)
	return v, err
}

// pick chooses the certificate for a server name: lookup's, else the
// first pair.
func (s *fileSet) pick(serverName string) *tls.Certificate {
	if c := s.lookup(serverName); c != nil {
		return c
	}
	return s.pairs[0]
}

// lookup finds the certificate for a server name: exact DNS SAN, then a
// wildcard SAN one label up (RFC 6125 §6.4.3: the wildcard covers exactly
// the left-most label). Names that cannot be host names (none, an IP
// literal) and names no pair covers get nil.
func (s *fileSet) lookup(serverName string) *tls.Certificate {
	host, err := normalizeHost(serverName)
	if err != nil {
		return nil
	}
	if c := s.exact[host]; c != nil {
		return c
	}
	if i := strings.IndexByte(host, '.'); i > 0 {
		if c := s.wild[host[i+1:]]; c != nil {
			return c
		}
	}
	return nil
}

func newFileSet(pairs []*tls.Certificate, stamp fileVersion) *fileSet {
	s := &fileSet{pairs: pairs, exact: map[string]*tls.Certificate{}, wild: map[string]*tls.Certificate{}, stamp: stamp}
	for _, c := range pairs {
		for _, n := range c.Leaf.DNSNames {
			n = strings.ToLower(strings.TrimSuffix(n, "."))
			m, key := s.exact, n
			if parent, ok := strings.CutPrefix(n, "*."); ok {
				m, key = s.wild, parent
			}
			if _, dup := m[key]; !dup {
				m[key] = c
			}
		}
	}
	return s
}

// loadFileSet reads and checks every pair; any error fails the whole set.
// The set's stamp is the version of the bytes parsed, so a file replaced
// during the read is read again at the next poll, and one replacement is
// never loaded twice.
func (p *PublicCerts) loadFileSet() (*fileSet, error) {
	st, data, err := readVersioned(p.filePaths()...)
	if err != nil {
		return nil, err
	}
	pairs := make([]*tls.Certificate, 0, len(p.Files))
	for i, f := range p.Files {
		c, err := parsePublicPair(data[2*i], data[2*i+1], p.clock())
		if err != nil {
			return nil, fmt.Errorf("certificate %s with key %s: %w", f.Cert, f.Key, err)
		}
		pairs = append(pairs, c)
	}
	return newFileSet(pairs, st), nil
}

// parsePublicPair parses a PEM chain (leaf first) and its key and refuses a
// pair the edge should not serve: a key that does not match the leaf, a
// leaf that is a CA, has no DNS name, or is not valid at now.
func parsePublicPair(certPEM, keyPEM []byte, now time.Time) (*tls.Certificate, error) {
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("parse pair: %w", err)
	}
	leaf := c.Leaf // set by X509KeyPair since Go 1.23
	if leaf == nil {
		return nil, errors.New("parse pair: no leaf certificate")
	}
	switch {
	case leaf.IsCA:
		return nil, errors.New("first certificate is a CA, want the leaf first")
	case len(leaf.DNSNames) == 0:
		return nil, errors.New("leaf has no DNS name (subjectAltName), so no server name can select it")
	case now.Before(leaf.NotBefore):
		return nil, fmt.Errorf("leaf is not valid before %s", leaf.NotBefore.UTC().Format(time.RFC3339))
	case !now.Before(leaf.NotAfter):
		return nil, fmt.Errorf("leaf expired at %s", leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	return &c, nil
}

func (p *PublicCerts) startFiles(ctx context.Context) error {
	set, err := p.loadFileSet()
	if err != nil {
		return err
	}
	p.files.Store(set)
	p.ocsp = newStapler(p)
	p.ocsp.track(ctx, set)
	p.logger().Info("public certificates loaded", "source", SourceFiles, "pairs", describePairs(set))
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		p.pollFiles(ctx)
	}()
	return nil
}

// reloadFiles replaces the set if every pair loads; otherwise it keeps the
// current one and logs why.
func (p *PublicCerts) reloadFiles(why string) error {
	p.reload.Lock()
	defer p.reload.Unlock()
	set, err := p.loadFileSet()
	if err != nil {
		p.logger().Warn("public certificate reload refused; keeping the current certificates", "trigger", why, "err", err)
		return fmt.Errorf("reload public certificates: %w", err)
	}
	p.ocsp.carryOver(set)
	p.files.Store(set)
	p.logger().Info("public certificates reloaded", "trigger", why, "pairs", describePairs(set))
	p.ocsp.track(p.ocsp.ctx, set)
	return nil
}

// pollFiles reloads Files when their stamp changes. A refused version is
// not retried until the files change again, so a bad file is logged once,
// not every poll.
func (p *PublicCerts) pollFiles(ctx context.Context) {
	t := time.NewTicker(p.pollInterval())
	defer t.Stop()
	var failed *fileVersion // the version last refused, nil if none
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		p.filePolls.Add(1)
		p.ocsp.refreshDue(ctx)
		st, err := p.stampFiles()
		if err != nil {
			if failed != nil && *failed == (fileVersion{}) {
				continue
			}
			failed = &fileVersion{}
			p.logger().Warn("public certificate files unreadable; keeping the current certificates", "err", err)
			continue
		}
		if st == p.files.Load().stamp {
			failed = nil
			continue
		}
		if failed != nil && st == *failed {
			continue
		}
		if err := p.reloadFiles("file change"); err != nil {
			failed = &st
			continue
		}
		failed = nil
	}
}

func describePairs(s *fileSet) string {
	var b bytes.Buffer
	for i, c := range s.pairs {
		if i > 0 {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "%s (serial %s, not after %s)", strings.Join(c.Leaf.DNSNames, ","),
			c.Leaf.SerialNumber.Text(16), c.Leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	return b.String()
}
