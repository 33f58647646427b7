package tlsmgr

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/logger"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

func (m *Manager) spiffeTimeout() time.Duration {
	if m.SPIFFETimeout == 0 {
		return DefaultSPIFFETimeout
	}
	return m.SPIFFETimeout
}

// validateSPIFFE checks the fields that conflict with SPIFFESocket.
func (m *Manager) validateSPIFFE(fileMode bool) []error {
	var errs []error
	if fileMode {
		errs = append(errs, errors.New("SPIFFESocket and CertFile/KeyFile are exclusive: the SVID comes either from the Workload API or from files"))
	}
	if m.TTL != 0 {
		errs = append(errs, fmt.Errorf("SPIFFESocket and TTL %v are exclusive: TTL is for SVIDs the Manager mints itself, SPIRE chooses the lifetime of its SVIDs", m.TTL))
	}
	if err := workloadapi.ValidateAddress(m.SPIFFESocket); err != nil {
		errs = append(errs, fmt.Errorf("SPIFFESocket %q: %w (want unix:///path/to/agent.sock or tcp://ip:port)", m.SPIFFESocket, err))
	}
	return errs
}

// workloadSource is the Workload API connection of a running Manager.
type workloadSource struct {
	src *workloadapi.X509Source
	// offered holds the SPIFFE IDs of the last update, recorded by the
	// picker (which sees them all) so errors can name them.
	offered atomic.Pointer[[]string]
	// pin is the trust domain of CADir's ca.crt, or zero without CADir.
	pin spiffeid.TrustDomain
	log *spiffeLogger
}

func (w *workloadSource) offeredIDs() string {
	p := w.offered.Load()
	if p == nil || len(*p) == 0 {
		return "none"
	}
	return fmt.Sprintf("%q", *p)
}

// otherTrustDomain explains an ID missing from the offer because the
// agent serves another trust domain (SPIRE's trust_domain is not the
// node's), or returns "".
func (w *workloadSource) otherTrustDomain(id string) string {
	want := spiffeid.RequireFromString(id) // checked by Validate
	p := w.offered.Load()
	if p == nil {
		return ""
	}
	other := ""
	for _, s := range *p {
		got, err := spiffeid.FromString(s)
		if err != nil {
			continue
		}
		if got.TrustDomain() == want.TrustDomain() {
			return ""
		}
		other = got.TrustDomain().Name()
	}
	if other == "" {
		return ""
	}
	return fmt.Sprintf(": the agent issues SVIDs of trust domain %q, this node is in %q", other, want.TrustDomain().Name())
}

// prepareSPIFFE opens the Workload API and takes the first identity from it.
// On any failure it closes what it opened.
func (m *Manager) prepareSPIFFE(ctx context.Context) (*identity, func(context.Context), error) {
	w := &workloadSource{}
	if m.CADir != "" {
		ca, err := LoadCA(m.CADir)
		if err != nil {
			return nil, nil, err
		}
		w.pin = spiffeid.RequireTrustDomainFromString(ca.TrustDomain) // parsed by LoadCA
	}
	lg := &spiffeLogger{l: m.logger().With("spiffe_socket", m.SPIFFESocket)}
	w.log = lg
	opts := []workloadapi.X509SourceOption{
		// Always an explicit address: an empty one would make go-spiffe fall
		// back to $SPIFFE_ENDPOINT_SOCKET, which SPIFFESocket documents as
		// never consulted.
		workloadapi.WithClientOptions(workloadapi.WithAddr(m.SPIFFESocket), workloadapi.WithLogger(lg)),
	}
	if m.ID != "" {
		want := spiffeid.RequireFromString(m.ID) // checked by Validate
		// A workload may be entitled to several SVIDs (one per matching
		// registration entry). The picker runs on every update; when none
		// carries our ID it returns nil, the source then has no SVID, and
		// refresh refuses the update (Start fails, later updates keep the
		// current SVID).
		opts = append(opts, workloadapi.WithDefaultX509SVIDPicker(func(svids []*x509svid.SVID) *x509svid.SVID {
			ids := make([]string, len(svids))
			for i, s := range svids {
				ids[i] = s.ID.String()
			}
			w.offered.Store(&ids)
			for _, s := range svids {
				if s.ID == want {
					return s
				}
			}
			return nil
		}))
	}

	// NewX509Source blocks until the first update and retries a missing or
	// refusing agent forever: the timeout is what turns "no SPIRE agent"
	// into an error instead of a node that never starts.
	timeout := m.spiffeTimeout()
	tctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	src, err := workloadapi.NewX509Source(tctx, opts...)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			if last := lg.lastError(); last != "" {
				return nil, nil, fmt.Errorf("spiffe workload api at %s: no x509-svid within %v (last error: %s): %w", m.SPIFFESocket, timeout, last, err)
			}
			return nil, nil, fmt.Errorf("spiffe workload api at %s: no x509-svid within %v (the agent answered nothing): %w", m.SPIFFESocket, timeout, err)
		}
		return nil, nil, fmt.Errorf("spiffe workload api at %s: %w", m.SPIFFESocket, err)
	}
	w.src = src
	first, err := m.refresh(w, spiffeid.TrustDomain{})
	if err != nil {
		src.Close()
		return nil, nil, err
	}
	// What went wrong before the first SVID (an agent still starting) is
	// over: only later errors make the next update a reconnection.
	lg.failed.Store(0)
	return first, func(ctx context.Context) { m.watchLoop(ctx, w) }, nil
}

// refresh reads the source's current SVID and the bundle of its trust
// domain and checks them the way file mode checks files: the SVID verifies
// against the bundle now, and stays in the trust domain (want, zero at
// Start) and in CADir's, when pinned.
func (m *Manager) refresh(w *workloadSource, want spiffeid.TrustDomain) (*identity, error) {
	svid, err := w.src.GetX509SVID()
	if err != nil {
		if m.ID != "" {
			return nil, fmt.Errorf("spiffe workload api at %s offers no svid for %q (offered: %s)%s", m.SPIFFESocket, m.ID, w.offeredIDs(), w.otherTrustDomain(m.ID))
		}
		return nil, fmt.Errorf("spiffe workload api at %s: %w", m.SPIFFESocket, err)
	}
	td := svid.ID.TrustDomain()
	if !w.pin.IsZero() && td != w.pin {
		return nil, fmt.Errorf("wrong trust domain: spiffe workload api at %s offers %q, not in trust domain %q of %s",
			m.SPIFFESocket, svid.ID, w.pin.Name(), filepath.Join(m.CADir, CACertFile))
	}
	if !want.IsZero() && td != want {
		return nil, fmt.Errorf("spiffe workload api at %s changed trust domain from %q to %q: restart the node", m.SPIFFESocket, want.Name(), td.Name())
	}
	// Federated bundles the agent may also send are not used: meshd is one
	// trust domain, and GetX509BundleForTrustDomain serves only this one.
	bundle, err := w.src.GetX509BundleForTrustDomain(td)
	if err != nil {
		return nil, fmt.Errorf("spiffe workload api at %s: no bundle for trust domain %q of %s: %w", m.SPIFFESocket, td.Name(), svid.ID, err)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, bundle, x509svid.WithTime(m.now())); err != nil {
		return nil, fmt.Errorf("spiffe workload api at %s: svid %s does not verify against its trust bundle: %w", m.SPIFFESocket, svid.ID, err)
	}
	return &identity{svid: svid, bundle: bundle, issued: m.now()}, nil
}

// watchLoop follows the source's updates until ctx ends, then closes the
// source. The source updates itself on its own goroutine; Updated() only
// says that something changed (several updates may coalesce into one
// notification), so each wake-up takes a fresh snapshot. A refused update
// keeps the current SVID, as file mode does with a bad file: it stays
// valid until it expires, and the agent's next update may fix things.
func (m *Manager) watchLoop(ctx context.Context, w *workloadSource) {
	defer func() {
		if err := w.src.Close(); err != nil {
			m.logger().Debug("closing spiffe workload api", "socket", m.SPIFFESocket, "err", err)
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.src.Updated():
		}
		// An update after watch errors is the agent back (restarted,
		// upgraded): the node kept its SVID meanwhile, and says so.
		if n := w.log.failed.Swap(0); n > 0 {
			m.logger().Info("spiffe workload api is back", "socket", m.SPIFFESocket, "errors", n, "not_after", m.NotAfter())
		}
		cur := m.cur.Load()
		next, err := m.refresh(w, cur.svid.ID.TrustDomain())
		switch {
		case err != nil:
			m.logger().Warn("svid update refused; keeping the current svid", "err", err, "not_after", m.NotAfter())
		case sameChain(cur, next) && cur.bundle.Equal(next.bundle):
			// The agent resends everything when anything changes (a
			// federated bundle, another SVID of the workload).
		default:
			m.cur.Store(next)
			// SPIRE sends its next CA's root in the bundle long before
			// any SVID chains to it (at half of its ca_ttl): that update
			// changes what the node trusts, not its SVID, so it is not a
			// renewal, and says what changed.
			if added, removed := rootsDiff(cur.bundle, next.bundle); added+removed > 0 {
				m.logger().Info("trust bundle updated", "trust_domain", next.bundle.TrustDomain().Name(),
					"roots", len(next.bundle.X509Authorities()), "added", added, "removed", removed, "source", m.source())
			}
			if !sameChain(cur, next) {
				n := m.renewals.Add(1)
				leaf := next.svid.Certificates[0]
				m.logger().Info("svid rotated", "id", next.svid.ID.String(), "renewals", n,
					"serial", leaf.SerialNumber.Text(16), "not_after", leaf.NotAfter, "source", m.source())
			}
		}
		m.updates.Add(1)
	}
}

// sameChain reports whether a and b serve the same certificates; the
// Workload API client parses every update into new values, so pointers
// always differ.
func sameChain(a, b *identity) bool {
	ac, bc := a.svid.Certificates, b.svid.Certificates
	if len(ac) != len(bc) {
		return false
	}
	for i := range ac {
		if !bytes.Equal(ac[i].Raw, bc[i].Raw) {
			return false
		}
	}
	return true
}

// rootsDiff counts the roots of b that a lacks (added) and of a that b
// lacks (removed).
func rootsDiff(a, b *x509bundle.Bundle) (added, removed int) {
	for _, r := range b.X509Authorities() {
		if !a.HasX509Authority(r) {
			added++
		}
	}
	for _, r := range a.X509Authorities() {
		if !b.HasX509Authority(r) {
			removed++
		}
	}
	return added, removed
}

// spiffeLogger passes go-spiffe's log lines to slog and remembers the last
// error, so a Start that times out can say why (the source itself only
// reports the deadline). go-spiffe reports a lost agent as an error on
// every retry; meshd logs them as warnings: while the agent is away (a
// restart, an upgrade, one still starting) the node keeps its SVID until it
// expires, and a Start that gives up returns the error itself.
type spiffeLogger struct {
	l    *slog.Logger
	last atomic.Pointer[string]
	// failed counts the errors since the last update (watchLoop resets it).
	failed atomic.Int64
}

var _ logger.Logger = (*spiffeLogger)(nil)

func (s *spiffeLogger) Debugf(format string, args ...any) { s.l.Debug(fmt.Sprintf(format, args...)) }
func (s *spiffeLogger) Infof(format string, args ...any)  { s.l.Info(fmt.Sprintf(format, args...)) }
func (s *spiffeLogger) Warnf(format string, args ...any)  { s.l.Warn(fmt.Sprintf(format, args...)) }

func (s *spiffeLogger) Errorf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	s.last.Store(&msg)
	s.failed.Add(1)
	s.l.Warn(msg)
}

func (s *spiffeLogger) lastError() string {
	if p := s.last.Load(); p != nil {
		return *p
	}
	return ""
}
