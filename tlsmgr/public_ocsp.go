package tlsmgr

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"golang.org/x/crypto/ocsp"
)

const (
	// ocspTimeout bounds one OCSP fetch. Fetches run in the background, so
	// a slow responder delays only the staple, never a handshake.
	ocspTimeout = 10 * time.Second
	// ocspMinRefresh and ocspMaxBackoff bound how often a responder is
	// asked: no more than once a minute, and after failures at least once
	// an hour.
	ocspMinRefresh = time.Minute
	ocspMaxBackoff = time.Hour
	// maxOCSPResponse bounds the response body read; real responses are a
	// few kilobytes.
	maxOCSPResponse = 1 << 20
)

// stapler keeps OCSP staples for SourceFiles pairs whose leaf names an OCSP
// responder (RFC 6960) and whose file also holds the issuer (needed to
// build the request and check the answer). Staples are attached to the
// served tls.Certificate (RFC 6066 §8, status_request), so clients need
// not ask the CA themselves, which saves them a round trip and keeps their
// browsing private.
type stapler struct {
	p      *PublicCerts
	ctx    context.Context // set by the first track (Start's context)
	client *http.Client

	mu     sync.Mutex
	states map[string]*stapleState // key: the leaf's DER
}

type stapleState struct {
	leaf, issuer *x509.Certificate
	next         time.Time // when to fetch next
	failures     int
	inflight     bool
	staple       []byte    // last good response, nil before the first
	validUntil   time.Time // NextUpdate of staple; zero: no NextUpdate
}

func newStapler(p *PublicCerts) *stapler {
	return &stapler{p: p, client: &http.Client{Timeout: ocspTimeout}, states: map[string]*stapleState{}}
}

// track starts following the pairs of set that have a responder, forgets
// leaves no longer served, and fetches what is due.
func (s *stapler) track(ctx context.Context, set *fileSet) {
	s.mu.Lock()
	if s.ctx == nil {
		s.ctx = ctx
	}
	seen := map[string]bool{}
	for _, c := range set.pairs {
		if len(c.Leaf.OCSPServer) == 0 || len(c.Certificate) < 2 {
			continue
		}
		key := string(c.Leaf.Raw)
		seen[key] = true
		if s.states[key] != nil {
			continue
		}
		issuer, err := x509.ParseCertificate(c.Certificate[1])
		if err != nil {
			continue // X509KeyPair parsed only the leaf; a bad issuer means no staple
		}
		s.states[key] = &stapleState{leaf: c.Leaf, issuer: issuer, next: s.p.clock()}
	}
	for key := range s.states {
		if !seen[key] {
			delete(s.states, key)
		}
	}
	s.mu.Unlock()
	s.refreshDue(ctx)
}

// carryOver puts the staples already held onto a freshly loaded set (same
// leaf, still valid), so a reload does not drop them until the next fetch.
func (s *stapler) carryOver(set *fileSet) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.p.clock()
	for _, c := range set.pairs {
		if st := s.states[string(c.Leaf.Raw)]; st != nil && st.staple != nil && (st.validUntil.IsZero() || now.Before(st.validUntil)) {
			c.OCSPStaple = st.staple
		}
	}
}

// refreshDue starts a background fetch for every leaf whose staple is due.
// Callers are Start, a reload under PublicCerts.mu, or the poll goroutine,
// so wg.Add never races Close's Wait.
func (s *stapler) refreshDue(ctx context.Context) {
	if ctx.Err() != nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.p.clock()
	for key, st := range s.states {
		if st.inflight || now.Before(st.next) {
			continue
		}
		st.inflight = true
		s.p.wg.Add(1)
		go func() {
			defer s.p.wg.Done()
			s.fetch(ctx, key, st)
		}()
	}
}

func (s *stapler) fetch(ctx context.Context, key string, st *stapleState) {
	raw, resp, err := s.query(ctx, st.leaf, st.issuer)
	now := s.p.clock()
	s.mu.Lock()
	st.inflight = false
	if err != nil {
		st.failures++
		st.next = now.Add(min(ocspMinRefresh<<min(st.failures-1, 6), ocspMaxBackoff))
		s.mu.Unlock()
		s.p.logger().Warn("ocsp staple fetch failed; serving without a fresh staple", "names", st.leaf.DNSNames,
			"responder", st.leaf.OCSPServer[0], "retry_at", st.next, "err", err)
		return
	}
	st.failures = 0
	st.staple, st.validUntil = raw, resp.NextUpdate
	// Refresh half way through the response's validity, as RFC 6960 §4.2.2.1
	// thisUpdate/nextUpdate describe it; responses without nextUpdate are
	// asked for again after an hour.
	next := now.Add(ocspMaxBackoff)
	if !resp.NextUpdate.IsZero() {
		next = resp.ThisUpdate.Add(resp.NextUpdate.Sub(resp.ThisUpdate) / 2)
	}
	st.next = maxTime(next, now.Add(ocspMinRefresh))
	s.mu.Unlock()
	s.p.applyStaple(key, raw)
	s.p.logger().Debug("ocsp staple updated", "names", st.leaf.DNSNames, "next_update", resp.NextUpdate)
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// query asks the leaf's first responder by POST (RFC 6960 Appendix A.1) and
// accepts only a response signed for this leaf by its issuer (or a
// responder the issuer delegated to) that says "good" and is current.
func (s *stapler) query(ctx context.Context, leaf, issuer *x509.Certificate) ([]byte, *ocsp.Response, error) {
	der, err := ocsp.CreateRequest(leaf, issuer, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("build ocsp request: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, ocspTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, leaf.OCSPServer[0], bytes.NewReader(der))
	if err != nil {
		return nil, nil, fmt.Errorf("ocsp request: %w", err)
	}
	req.Header.Set("Content-Type", "application/ocsp-request")
	res, err := s.client.Do(req)
	if err != nil {
		return nil, nil, fmt.Errorf("ocsp request: %w", err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return nil, nil, fmt.Errorf("ocsp responder answered %s", res.Status)
	}
	raw, err := io.ReadAll(io.LimitReader(res.Body, maxOCSPResponse+1))
	if err != nil {
		return nil, nil, fmt.Errorf("read ocsp response: %w", err)
	}
	if len(raw) > maxOCSPResponse {
		return nil, nil, fmt.Errorf("ocsp response larger than %d bytes", maxOCSPResponse)
	}
	resp, err := ocsp.ParseResponseForCert(raw, leaf, issuer)
	if err != nil {
		return nil, nil, fmt.Errorf("parse ocsp response: %w", err)
	}
	now := s.p.clock()
	switch {
	case resp.Status == ocsp.Revoked:
		return nil, nil, fmt.Errorf("certificate serial %s is REVOKED (at %s); replace it", leaf.SerialNumber.Text(16), resp.RevokedAt.UTC().Format(time.RFC3339))
	case resp.Status != ocsp.Good:
		return nil, nil, fmt.Errorf("ocsp status %d, want good", resp.Status)
	case !resp.NextUpdate.IsZero() && !now.Before(resp.NextUpdate):
		return nil, nil, fmt.Errorf("ocsp response is stale (next update %s)", resp.NextUpdate.UTC().Format(time.RFC3339))
	case resp.ThisUpdate.After(now.Add(backdate)):
		return nil, nil, fmt.Errorf("ocsp response is from the future (this update %s)", resp.ThisUpdate.UTC().Format(time.RFC3339))
	}
	return raw, resp, nil
}

// applyStaple publishes a new set in which every pair with this leaf
// carries the staple. It takes the reload lock, so it never overwrites a
// set a concurrent reload just stored with an older one.
func (p *PublicCerts) applyStaple(key string, staple []byte) {
	p.reload.Lock()
	defer p.reload.Unlock()
	cur := p.files.Load()
	pairs := make([]*tls.Certificate, len(cur.pairs))
	changed := false
	for i, c := range cur.pairs {
		pairs[i] = c
		if string(c.Leaf.Raw) == key {
			cp := *c
			cp.OCSPStaple = staple
			pairs[i] = &cp
			changed = true
		}
	}
	if changed {
		p.files.Store(newFileSet(pairs, cur.stamp))
	}
}
