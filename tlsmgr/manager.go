package tlsmgr

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

const (
	// DefaultTTL is the SVID lifetime when Manager.TTL is zero.
	DefaultTTL = time.Hour
	// MinTTL is the shortest SVID lifetime Manager accepts: below it the
	// renewal at half-life would race the handshakes using the SVID.
	MinTTL = time.Second
	// DefaultPollInterval is how often file mode looks for new files when
	// Manager.PollInterval is zero.
	DefaultPollInterval = 2 * time.Second
	// DefaultRemintJitter is Manager.RemintJitter when it is zero.
	DefaultRemintJitter = 10 * time.Second
	// DefaultSPIFFETimeout bounds the wait for the first SVID from the
	// Workload API when Manager.SPIFFETimeout is zero.
	DefaultSPIFFETimeout = 10 * time.Second
)

// Manager is a node's identity. It holds the node's current X.509-SVID and
// the trust bundle and implements go-spiffe's x509svid.Source and
// x509bundle.Source, so every tls.Config it builds picks up a renewed SVID on
// the next handshake without restarting listeners or dropping connections.
//
// Set the fields, then call Start; Close stops the renewal. The fields must
// not change after Start.
type Manager struct {
	// CADir is the directory holding ca.crt and ca.key (written by
	// `meshd ca init`): the node mints its own SVID with the CA key.
	// Required, except with SPIFFESocket, where it is optional: SPIRE
	// supplies the trust bundle, and a CADir set there only pins the trust
	// domain (Start fails unless the SVID is in the trust domain of its
	// ca.crt; ca.key is never read). No default.
	CADir string
	// ID is this node's SPIFFE ID ("spiffe://<td>/service/web"); it must be
	// in the CA's trust domain. Required when minting; optional in file mode
	// and with SPIFFESocket, where it selects which SVID to serve. No
	// default.
	ID string
	// TTL is the lifetime of each minted SVID; the SVID is renewed at
	// half-life. Default DefaultTTL (1h); at least MinTTL (1s). Must be
	// zero with SPIFFESocket (SPIRE chooses the lifetime of its SVIDs).
	TTL time.Duration
	// Logger receives renewal events and failures. Default slog.Default().
	Logger *slog.Logger
	// Now is the clock used for certificate validity. Default time.Now.
	Now func() time.Time

	// CertFile and KeyFile switch the Manager to file mode: instead of
	// minting, it loads its SVID from these PEM files (written by
	// `meshd ca issue`, see IssueFiles) and reloads them when they change;
	// CADir then needs only ca.crt, and ID may be empty (it is taken from the
	// certificate; when set, the certificate must carry exactly it). Set both
	// or neither. Default "" (mint with the CA key).
	CertFile string
	KeyFile  string
	// PollInterval is how often the Manager checks its files for changes:
	// ca.crt and ca.key when minting (a new trust bundle or issuing root
	// from `meshd ca rotate`, see rotate.go), CertFile, KeyFile and ca.crt
	// in file mode. Minting nodes poll at a random 75-125% of it, so that
	// nodes started together do not read together. Default
	// DefaultPollInterval (2s).
	PollInterval time.Duration
	// RemintJitter bounds the random delay after which a minting node,
	// having found that ca.key now belongs to another root of the bundle
	// (`meshd ca rotate switch`), mints its SVID from it: the old SVID
	// stays valid and trusted meanwhile, and the mesh's nodes do not all
	// re-mint and re-sign their gossip records in the same second. Default
	// DefaultRemintJitter (10s).
	RemintJitter time.Duration
	// OnChange, when set, is called after the SVID or the trust bundle
	// changed (a renewal, a reload, a rotation step); it must not block.
	// Default nil.
	OnChange func()

	// SPIFFESocket switches the Manager to the SPIFFE Workload API of a
	// SPIRE agent ("unix:///run/spire/agent.sock", or "tcp://ip:port"):
	// the SVID and the trust bundle come from the agent, which rotates
	// them, and the Manager follows every update. With ID set the Manager
	// serves the SVID with exactly that SPIFFE ID among those the agent
	// offers; with ID empty, the agent's default (first) SVID. Exclusive
	// with CertFile/KeyFile and with minting (TTL). Default "": not used
	// (the SPIFFE_ENDPOINT_SOCKET environment variable is never consulted).
	SPIFFESocket string
	// SPIFFETimeout bounds how long Start waits for the first SVID from
	// SPIFFESocket; an agent that is down, or that has no registration
	// entry for this workload, fails Start after it. Default
	// DefaultSPIFFETimeout (10s).
	SPIFFETimeout time.Duration

	renewals    atomic.Uint64
	reloads     atomic.Uint64                // trust bundles taken from CADir after the first
	rootsInfo   atomic.Pointer[rootsSummary] // fingerprints of cur (rotate.go)
	polls       atomic.Uint64                // file mode: completed polls, for tests
	updates     atomic.Uint64                // Workload API mode: processed updates, for tests
	cur         atomic.Pointer[identity]
	resumed     atomic.Uint64   // resumed handshakes re-authorized by verifyResumed
	refusals    refusalCounters // refused handshakes by reason (refusals.go)
	refusalLog  sync.Map        // reason + claimed identity → last logged
	refusalLogN atomic.Int64

	bundleSum atomic.Pointer[bundleDigest] // digest of cur's bundle (resume.go)
	tkeys     atomic.Pointer[ticketKeys]   // session ticket keys (resume.go)
	tkeysMu   sync.Mutex                   // serializes their rotation

	verifiedMu sync.Mutex
	verified   map[[32]byte]*verifiedChain // verification memo (resume.go)

	mu      sync.Mutex
	started bool
	closed  bool
	cancel  context.CancelFunc
	done    chan struct{}
}

// Interface guards: the tls.Config builders hand the Manager itself to
// go-spiffe as both sources.
var (
	_ x509svid.Source   = (*Manager)(nil)
	_ x509bundle.Source = (*Manager)(nil)
)

// identity is one immutable generation of what the Manager serves; renewal
// swaps the whole value so a handshake never sees a half-updated state.
type identity struct {
	svid   *x509svid.SVID
	bundle *x509bundle.Bundle
	issued time.Time // Now() when the SVID was minted
}

func (m *Manager) ttl() time.Duration {
	if m.TTL == 0 {
		return DefaultTTL
	}
	return m.TTL
}

func (m *Manager) logger() *slog.Logger {
	if m.Logger == nil {
		return slog.Default()
	}
	return m.Logger
}

func (m *Manager) now() time.Time {
	if m.Now == nil {
		return time.Now()
	}
	return m.Now()
}

// Validate checks the fields without touching the file system.
func (m *Manager) Validate() error {
	var errs []error
	fileMode := m.CertFile != "" || m.KeyFile != ""
	spiffeMode := m.SPIFFESocket != ""
	if m.CADir == "" && !spiffeMode {
		errs = append(errs, errors.New("CADir is required (unless SPIFFESocket is set)"))
	}
	if fileMode && (m.CertFile == "" || m.KeyFile == "") {
		errs = append(errs, errors.New("CertFile and KeyFile must be set together"))
	}
	if spiffeMode {
		errs = append(errs, m.validateSPIFFE(fileMode)...)
	}
	if m.SPIFFETimeout < 0 {
		errs = append(errs, fmt.Errorf("SPIFFETimeout %v: must not be negative", m.SPIFFETimeout))
	}
	switch {
	case m.ID == "" && !fileMode && !spiffeMode:
		errs = append(errs, errors.New("ID is required"))
	case m.ID == "":
	default:
		if id, err := spiffeid.FromString(m.ID); err != nil {
			errs = append(errs, fmt.Errorf("ID %q: %w", m.ID, err))
		} else if id.Path() == "" {
			errs = append(errs, fmt.Errorf("ID %q: needs a non-root path", m.ID))
		}
	}
	if m.TTL != 0 && m.TTL < MinTTL {
		errs = append(errs, fmt.Errorf("TTL %v: must be at least %v", m.TTL, MinTTL))
	}
	if m.PollInterval < 0 {
		errs = append(errs, fmt.Errorf("PollInterval %v: must not be negative", m.PollInterval))
	}
	if m.RemintJitter < 0 {
		errs = append(errs, fmt.Errorf("RemintJitter %v: must not be negative", m.RemintJitter))
	}
	return errors.Join(errs...)
}

// Start loads the CA from CADir, mints the first SVID and starts a goroutine
// that renews it at half-life (on failure it retries with backoff and logs).
// The goroutine stops when ctx is cancelled or Close is called. Start fails
// if ca.key is missing: a node in this mode needs the CA key to mint its SVID.
//
// In file mode (CertFile and KeyFile set) Start instead loads and verifies
// the certificate and key against ca.crt, and the goroutine polls the three
// files and reloads them when they change.
//
// With SPIFFESocket set Start opens the Workload API, waits at most
// SPIFFETimeout for the first SVID and bundle, and the goroutine follows
// the agent's updates; it closes the Workload API connection when it stops.
func (m *Manager) Start(ctx context.Context) error {
	if err := m.Validate(); err != nil {
		return fmt.Errorf("invalid manager: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.started || m.closed {
		return errors.New("manager already started or closed")
	}

	var (
		first *identity
		loop  func(context.Context)
		err   error
	)
	switch {
	case m.SPIFFESocket != "":
		first, loop, err = m.prepareSPIFFE(ctx)
	case m.CertFile != "":
		first, loop, err = m.prepareFiles()
	default:
		first, loop, err = m.prepareMint()
	}
	if err != nil {
		return err
	}
	m.cur.Store(first)

	ctx, cancel := context.WithCancel(ctx)
	m.started = true
	m.cancel = cancel
	m.done = make(chan struct{})
	go func() {
		defer close(m.done)
		loop(ctx)
	}()
	leaf := first.svid.Certificates[0]
	m.logger().Info("svid ready", "id", first.svid.ID.String(), "serial", leaf.SerialNumber.Text(16),
		"not_after", leaf.NotAfter, "source", m.source())
	return nil
}

func (m *Manager) source() string {
	if m.SPIFFESocket != "" {
		return "spiffe workload api at " + m.SPIFFESocket
	}
	if m.CertFile != "" {
		return m.CertFile
	}
	return "minted by ca in " + m.CADir
}

func (m *Manager) prepareMint() (*identity, func(context.Context), error) {
	v, data, err := readVersioned(m.caFiles()...)
	if err != nil {
		if _, statErr := os.Stat(filepath.Join(m.CADir, CAKeyFile)); errors.Is(statErr, fs.ErrNotExist) {
			if _, err := LoadCA(m.CADir); err != nil {
				return nil, nil, err // ca.crt is wrong too: say that first
			}
			return nil, nil, fmt.Errorf("%s not found in %s: a node needs the CA key to mint its SVID", CAKeyFile, m.CADir)
		}
		return nil, nil, err
	}
	ca, err := m.parseMintCA(data, "")
	if err != nil {
		return nil, nil, err
	}
	bundle := x509bundle.FromX509Authorities(spiffeid.RequireTrustDomainFromString(ca.TrustDomain), ca.Roots)
	first, err := m.mint(ca, bundle)
	if err != nil {
		return nil, nil, err
	}
	return first, func(ctx context.Context) { m.renewLoop(ctx, ca, bundle, v) }, nil
}

// caFiles are the files a minting Manager reads and watches.
func (m *Manager) caFiles() []string {
	return []string{filepath.Join(m.CADir, CACertFile), filepath.Join(m.CADir, CAKeyFile)}
}

// parseMintCA parses ca.crt and ca.key as read from caFiles and checks that
// they can mint m.ID; td, when not empty, is the trust domain the Manager
// runs in, which a reload may not change.
func (m *Manager) parseMintCA(data [][]byte, td string) (*CA, error) {
	ca, err := parseCA(m.CADir, data[0], data[1])
	if err != nil {
		return nil, err
	}
	id := spiffeid.RequireFromString(m.ID) // checked by Validate
	if id.TrustDomain().Name() != ca.TrustDomain {
		return nil, fmt.Errorf("wrong trust domain: ID %q is not in trust domain %q of %s",
			m.ID, ca.TrustDomain, filepath.Join(m.CADir, CACertFile))
	}
	if td != "" && ca.TrustDomain != td {
		return nil, fmt.Errorf("%s changed trust domain from %q to %q: restart the node", filepath.Join(m.CADir, CACertFile), td, ca.TrustDomain)
	}
	return ca, nil
}

func (m *Manager) mint(ca *CA, bundle *x509bundle.Bundle) (*identity, error) {
	now := m.now()
	svid, err := ca.mint(m.ID, m.ttl(), now)
	if err != nil {
		return nil, fmt.Errorf("mint svid: %w", err)
	}
	return &identity{svid: svid, bundle: bundle, issued: now}, nil
}

// renewLoop renews the SVID at half of its lifetime, as SPIRE agents do: the
// other half leaves room for retries before the SVID expires. Between
// renewals it watches ca.crt and ca.key (v is the version of the bytes ca
// came from) and follows a root rotation (watchCA).
func (m *Manager) renewLoop(ctx context.Context, ca *CA, bundle *x509bundle.Bundle, v fileVersion) {
	failures := 0
	timer := time.NewTimer(0)
	defer timer.Stop()
	poll := time.NewTimer(m.pollWait())
	defer poll.Stop()
	w := &caWatch{ca: ca, bundle: bundle, version: v}
	for {
		var wait time.Duration
		if failures == 0 {
			cur := m.cur.Load()
			// Half of the requested TTL, less a random tenth of it: the
			// certificate may live up to a second longer (its expiry is
			// rounded up to whole seconds), or less when the CA expires
			// first. The jitter keeps nodes started together (a fleet
			// restart, a CA switch) from renewing together forever.
			life := min(cur.svid.Certificates[0].NotAfter.Sub(cur.issued), m.ttl())
			at := life/2 - time.Duration(rand.Int64N(int64(life/10)+1))
			// Never spin: a lifetime cut short by the CA's own expiry still
			// waits the smallest backoff step between attempts.
			wait = max(cur.issued.Add(at).Sub(m.now()), m.backoff(1))
		} else {
			wait = m.backoff(failures)
		}
		if !w.remintAt.IsZero() {
			wait = min(wait, w.remintAt.Sub(m.now()))
		}
		timer.Reset(max(wait, 0))
		select {
		case <-ctx.Done():
			return
		case <-poll.C:
			poll.Reset(m.pollWait())
			m.watchCA(w)
			continue
		case <-timer.C:
		}
		next, err := m.mint(w.ca, w.bundle)
		if err != nil {
			failures++
			if !w.remintAt.IsZero() {
				w.remintAt = m.now().Add(m.backoff(failures))
			}
			m.logger().Error("svid renewal failed", "id", m.ID, "attempt", failures,
				"retry_in", m.backoff(failures), "not_after", m.NotAfter(), "err", err)
			continue
		}
		failures = 0
		m.cur.Store(next)
		m.changed()
		n := m.renewals.Add(1)
		leaf := next.svid.Certificates[0]
		if !w.remintAt.IsZero() {
			w.remintAt = time.Time{}
			m.logger().Info("svid minted from the new issuing root", "id", m.ID, "root", Fingerprint(w.ca.Cert),
				"serial", leaf.SerialNumber.Text(16), "not_after", leaf.NotAfter)
			continue
		}
		m.logger().Debug("svid renewed", "id", m.ID, "renewals", n,
			"serial", leaf.SerialNumber.Text(16), "not_after", leaf.NotAfter)
	}
}

// backoff doubles from TTL/32 up to TTL/8, so retries stay well inside the
// half-life the renewal keeps in reserve.
func (m *Manager) backoff(failures int) time.Duration {
	d := m.ttl() / 32
	for i := 1; i < failures && d < m.ttl()/8; i++ {
		d *= 2
	}
	return min(d, m.ttl()/8)
}

// Close stops the renewal (file polling, Workload API watching) goroutine
// and waits for it; with SPIFFESocket that closes the Workload API
// connection. The current SVID stays
// available to open connections and to handshakes still in flight. Close is
// idempotent and always returns nil.
func (m *Manager) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.started || m.closed {
		m.closed = true
		return nil
	}
	m.closed = true
	m.cancel()
	<-m.done
	return nil
}

// TrustDomain returns the trust domain name ("mesh.example"), or "" before
// Start.
func (m *Manager) TrustDomain() string {
	cur := m.cur.Load()
	if cur == nil {
		return ""
	}
	return cur.bundle.TrustDomain().Name()
}

// GetX509SVID returns the current SVID; it implements x509svid.Source. The
// returned value is shared and must not be modified.
func (m *Manager) GetX509SVID() (*x509svid.SVID, error) {
	cur := m.cur.Load()
	if cur == nil {
		return nil, errors.New("tlsmgr: manager not started: no svid")
	}
	return cur.svid, nil
}

// GetX509BundleForTrustDomain returns the bundle of the Manager's trust
// domain; it implements x509bundle.Source. Any other trust domain is an
// error, so peers of foreign trust domains never verify. The returned value
// is shared and must not be modified.
func (m *Manager) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	cur := m.cur.Load()
	if cur == nil {
		return nil, errors.New("tlsmgr: manager not started: no bundle")
	}
	if td != cur.bundle.TrustDomain() {
		return nil, fmt.Errorf("tlsmgr: no bundle for trust domain %q (this node trusts only %q)", td.Name(), cur.bundle.TrustDomain().Name())
	}
	return cur.bundle, nil
}

// Renewals returns how many SVIDs were minted (or, in file mode, loaded)
// after the first. With SPIFFESocket it counts the Workload API updates
// that changed the SVID and were accepted (an update of the trust bundle
// alone is logged, not counted).
func (m *Manager) Renewals() uint64 { return m.renewals.Load() }

// RootExpiry returns when the first root of the trust bundle expires and
// how many roots it holds (more than one while a root rotates); the zero
// time and 0 before Start.
func (m *Manager) RootExpiry() (soonest time.Time, roots int) {
	cur := m.cur.Load()
	if cur == nil {
		return time.Time{}, 0
	}
	for _, c := range cur.bundle.X509Authorities() {
		if roots == 0 || c.NotAfter.Before(soonest) {
			soonest = c.NotAfter
		}
		roots++
	}
	return soonest, roots
}

// NotAfter returns the expiry of the current SVID, or the zero time before
// Start.
func (m *Manager) NotAfter() time.Time {
	cur := m.cur.Load()
	if cur == nil {
		return time.Time{}
	}
	return cur.svid.Certificates[0].NotAfter
}
