package tlsmgr

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/certmagic"
)

// Sources of public certificates (PublicCerts.Source).
const (
	SourceFiles    = "files"
	SourceInternal = "internal"
	SourceACME     = "acme"
)

// DefaultACMECA is the ACME directory PublicCerts uses when ACMECA is empty:
// Let's Encrypt production.
const DefaultACMECA = certmagic.LetsEncryptProductionCA

// acmeTLS1 is the ALPN protocol of the TLS-ALPN-01 challenge (RFC 8737 §6.2).
const acmeTLS1 = "acme-tls/1"

// PublicCerts provides the certificates of the edge's public TLS listener,
// from PEM files, from an internal CA of the node, or from an ACME CA.
//
// It has nothing to do with the mesh's SPIFFE identities: none of its
// certificates is an SVID, and the internal CA is a separate key, so a
// browser told to trust it never trusts a mesh identity.
//
// Set the fields, then call Start; the fields must not change after Start.
// TLSConfig may be called before Start (its handshakes fail until Start).
type PublicCerts struct {
	// Source is where certificates come from: SourceFiles, SourceInternal
	// or SourceACME. Default SourceInternal.
	Source string

	// Files are the certificate/key pairs of SourceFiles, at least one. The
	// certificate for a handshake is chosen by SNI: the pair whose DNS SAN
	// equals the server name, else a pair with a wildcard SAN covering it
	// (one label, RFC 6125 §6.4.3), else the first pair. When two pairs
	// name the same host the earlier one wins. Default none.
	Files []CertFiles
	// PollInterval is how often SourceFiles checks Files for changes; a
	// change reloads them as Reload does. Default DefaultPollInterval (2s).
	PollInterval time.Duration

	// DataDir holds the state of SourceInternal (the CA in
	// DataDir/internal-ca, created on first use, key mode 0600) and of
	// SourceACME (certmagic's storage in DataDir/acme: account,
	// certificates, keys). Required for both; no default.
	DataDir string

	// Allow decides whether a hostname may get a certificate in
	// SourceInternal and SourceACME; a nil error means yes. It receives a
	// lower-case ASCII host name without a trailing dot, and the context of
	// the handshake that asked. No certificate is issued and no ACME order
	// is created for a name it refuses, so a client cannot make the edge
	// issue for arbitrary SNI. Required for both; no default.
	Allow func(ctx context.Context, host string) error

	// ACMECA is the ACME directory URL (https). Default DefaultACMECA
	// (Let's Encrypt production). Choosing SourceACME means the operator
	// accepts that CA's subscriber agreement.
	ACMECA string
	// ACMECARoot is a PEM file of root certificates trusted, instead of the
	// system roots, for the HTTPS connection to ACMECA (a private ACME CA
	// such as Pebble or step-ca). Default "" (system roots).
	ACMECARoot string
	// ACMEEmail is the contact address of the ACME account. Default "" (an
	// account without contact).
	ACMEEmail string
	// ACMEHTTPAddr is the address the edge's public HTTP listener is bound
	// to (host:port as bound, port not 0), whose handler is wrapped by
	// HTTPChallenge; it enables HTTP-01. certmagic only checks that the
	// address is in use, so that it never opens a listener of its own.
	// Default "" (no HTTP-01).
	ACMEHTTPAddr string
	// ACMETLSAddr is the address the public TLS listener using TLSConfig is
	// bound to (host:port as bound, port not 0); it enables TLS-ALPN-01
	// (RFC 8737). Default "" (no TLS-ALPN-01). SourceACME needs at least one
	// of ACMEHTTPAddr and ACMETLSAddr.
	ACMETLSAddr string

	// Logger receives reloads, issuance, refusals and failures.
	// Default slog.Default().
	Logger *slog.Logger

	// now is the clock for internal issuance and renewal; tests set it.
	now func() time.Time

	active atomic.Bool // Start succeeded; the fields below are set

	files     atomic.Pointer[fileSet] // SourceFiles
	filePolls atomic.Uint64           // SourceFiles: polls so far, for tests
	internal  *internalIssuer         // SourceInternal
	fallback  *defaultCert            // SourceInternal and SourceACME
	defaults  defaultLog              // handshakes answered with a default
	magic     *certmagic.Config       // SourceACME
	cache     *certmagic.Cache        // SourceACME
	issuer    atomic.Pointer[certmagic.ACMEIssuer]

	ocsp   *stapler // SourceFiles
	mu     sync.Mutex
	reload sync.Mutex // serializes file (re)loads
	state  int        // 0 new, 1 started, 2 closed
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// CertFiles is one certificate/key pair of SourceFiles.
type CertFiles struct {
	// Cert is a PEM file holding the certificate chain, leaf first (the
	// issuer after the leaf is needed for OCSP stapling). Required.
	Cert string
	// Key is a PEM file holding the leaf's private key (PKCS#8, PKCS#1 or
	// SEC 1). Required.
	Key string
}

func (p *PublicCerts) source() string {
	if p.Source == "" {
		return SourceInternal
	}
	return p.Source
}

func (p *PublicCerts) logger() *slog.Logger {
	if p.Logger == nil {
		return slog.Default()
	}
	return p.Logger
}

func (p *PublicCerts) clock() time.Time {
	if p.now == nil {
		return time.Now()
	}
	return p.now()
}

func (p *PublicCerts) pollInterval() time.Duration {
	if p.PollInterval == 0 {
		return DefaultPollInterval
	}
	return p.PollInterval
}

// Validate checks the fields without touching the file system.
func (p *PublicCerts) Validate() error {
	var errs []error
	src := p.source()
	switch src {
	case SourceFiles:
		if len(p.Files) == 0 {
			errs = append(errs, errors.New("Files: files source needs at least one certificate/key pair"))
		}
		for i, f := range p.Files {
			if f.Cert == "" || f.Key == "" {
				errs = append(errs, fmt.Errorf("Files[%d]: Cert and Key are both required", i))
			}
		}
	case SourceInternal, SourceACME:
		if p.DataDir == "" {
			errs = append(errs, fmt.Errorf("DataDir is required for the %s source", src))
		}
		if p.Allow == nil {
			errs = append(errs, fmt.Errorf("Allow is required for the %s source: without it any SNI would get a certificate", src))
		}
	default:
		errs = append(errs, fmt.Errorf("Source %q: want %q, %q or %q", p.Source, SourceFiles, SourceInternal, SourceACME))
	}
	if p.PollInterval < 0 {
		errs = append(errs, fmt.Errorf("PollInterval %v: must not be negative", p.PollInterval))
	}
	if src == SourceACME {
		if p.ACMECA != "" {
			u, err := url.Parse(p.ACMECA)
			// RFC 8555 §6.1: ACME is HTTPS only.
			if err != nil || u.Scheme != "https" || u.Host == "" {
				errs = append(errs, fmt.Errorf("ACMECA %q: want an https:// directory URL", p.ACMECA))
			}
		}
		if p.ACMEHTTPAddr == "" && p.ACMETLSAddr == "" {
			errs = append(errs, errors.New("ACMEHTTPAddr or ACMETLSAddr is required: no challenge could be answered"))
		}
		hosts := map[string]bool{}
		for _, a := range []struct{ name, addr string }{{"ACMEHTTPAddr", p.ACMEHTTPAddr}, {"ACMETLSAddr", p.ACMETLSAddr}} {
			if a.addr == "" {
				continue
			}
			host, _, err := splitListenAddr(a.addr)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s %q: %w", a.name, a.addr, err))
			}
			hosts[host] = true
		}
		if len(hosts) > 1 {
			// certmagic's ACMEIssuer has a single ListenHost.
			errs = append(errs, fmt.Errorf("ACMEHTTPAddr %q and ACMETLSAddr %q must have the same host", p.ACMEHTTPAddr, p.ACMETLSAddr))
		}
	}
	return errors.Join(errs...)
}

// splitListenAddr splits a bound listener address into host and a non-zero
// port.
func splitListenAddr(addr string) (string, int, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	n, err := strconv.Atoi(port)
	if err != nil || n <= 0 || n > 65535 {
		return "", 0, fmt.Errorf("port %q: want 1-65535 (the port the listener is bound to)", port)
	}
	return host, n, nil
}

// Start loads or prepares the source: SourceFiles reads and checks every
// pair (any bad pair fails Start) and starts polling them; SourceInternal
// loads or creates the internal CA; SourceACME sets up certmagic with
// on-demand issuance gated by Allow. A failed Start leaves nothing running.
// Background work stops when ctx is cancelled or Close is called.
func (p *PublicCerts) Start(ctx context.Context) error {
	if err := p.Validate(); err != nil {
		return fmt.Errorf("invalid public certificates: %w", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state != 0 {
		return errors.New("public certificates already started or closed")
	}
	ctx, cancel := context.WithCancel(ctx)
	var err error
	switch p.source() {
	case SourceFiles:
		err = p.startFiles(ctx)
	case SourceInternal:
		err = p.startInternal()
	case SourceACME:
		err = p.startACME()
	}
	if err != nil {
		cancel()
		p.wg.Wait()
		return err
	}
	p.cancel = cancel
	p.state = 1
	p.active.Store(true)
	return nil
}

// Close stops polling, OCSP refreshes and certmagic's maintenance, and
// waits for them. Certificates already loaded stay available to handshakes
// in flight. Close is idempotent and returns nil.
func (p *PublicCerts) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state != 1 {
		p.state = 2
		return nil
	}
	p.state = 2
	p.cancel()
	p.wg.Wait()
	if p.cache != nil {
		p.cache.Stop()
	}
	return nil
}

// Reload re-reads Files now (the edge calls it on SIGHUP). If any pair is
// unreadable or invalid, nothing changes: the error names the file, is
// logged, and every handshake keeps the current pairs. Open connections
// are never touched. Reload is a no-op for the other sources.
func (p *PublicCerts) Reload() error {
	// Holding mu keeps Close from waiting for background work while this
	// reload may still start an OCSP fetch.
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state != 1 {
		return errors.New("public certificates not started, or closed")
	}
	if p.source() != SourceFiles {
		return nil
	}
	return p.reloadFiles("reload")
}

// Public TLS 1.2 cipher suites: ECDHE only (forward secrecy) with AEAD only
// (no CBC, RFC 7457 §2.4 and RFC 9325 §4.2), for ECDSA and RSA
// certificates. All are allowed by HTTP/2 (RFC 9113 §9.2.2). TLS 1.3 suites
// are not configurable in crypto/tls and are all AEAD.
var publicCipherSuites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

// TLSConfig returns a new server config for the public listener: the
// certificate comes from the source on each handshake (so reloads and
// renewals reach new connections without restarting the listener); TLS 1.3
// is chosen whenever the client has it (crypto/tls negotiates the highest
// common version and signals downgrades, RFC 8446 §4.1.3) and TLS 1.2 is
// allowed with publicCipherSuites only; ALPN offers "h2" and "http/1.1",
// plus "acme-tls/1" for SourceACME so TLS-ALPN-01 works.
//
// Session tickets stay on: unlike the mesh's mTLS configs, the public side
// verifies no client certificate, so a resumed session skips no check, and
// resumption saves returning browsers a full handshake. crypto/tls rotates
// the ticket keys itself.
//
// The certificate choice depends only on SNI, never on the ALPN list, so
// the HTTP/3 listener may clone the config and set NextProtos to ["h3"].
// OCSP staples ride on the certificates (Certificate.OCSPStaple).
func (p *PublicCerts) TLSConfig() *tls.Config {
	protos := []string{"h2", "http/1.1"}
	if p.source() == SourceACME {
		protos = append(protos, acmeTLS1)
	}
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		CipherSuites:   append([]uint16(nil), publicCipherSuites...),
		NextProtos:     protos,
		GetCertificate: p.getCertificate,
	}
}

// getCertificate picks the certificate for a handshake by SNI. A client
// whose server name has no certificate (none sent, or one that Allow
// refuses or no pair covers) gets the default one, the first pair of
// SourceFiles or DefaultCertName's otherwise, and the reason is logged at
// most once a minute: see DefaultCertName for why the handshake continues.
func (p *PublicCerts) getCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	if !p.active.Load() {
		return nil, errors.New("tlsmgr: public certificates not started")
	}
	var (
		cert *tls.Certificate
		err  error
	)
	switch p.source() {
	case SourceFiles:
		set := p.files.Load()
		if cert = set.lookup(hello.ServerName); cert != nil {
			return cert, nil
		}
		p.noteDefault(reasonFor(hello), hello, nil)
		return set.pairs[0], nil
	case SourceInternal:
		cert, err = p.internal.get(hello.Context(), hello.ServerName)
	default:
		cert, err = p.magic.GetCertificate(hello)
	}
	if err == nil {
		return cert, nil
	}
	def, derr := p.fallback.get(p.clock())
	if derr != nil {
		err = fmt.Errorf("%w (and no default certificate: %w)", err, derr)
		p.noteDefault(reasonNoDefault, hello, err)
		return nil, err
	}
	p.noteDefault(reasonFor(hello), hello, err)
	return def, nil
}

// HTTPChallenge wraps the public HTTP listener's handler: in SourceACME it
// answers ACME HTTP-01 requests (/.well-known/acme-challenge/, RFC 8555
// §8.3) for challenges this node (or another using the same DataDir)
// started, and passes everything else to next. For the other sources it
// returns next.
func (p *PublicCerts) HTTPChallenge(next http.Handler) http.Handler {
	if p.source() != SourceACME {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Only well-formed host names reach certmagic, which uses the host
		// as part of a storage key.
		if iss := p.issuer.Load(); iss != nil && certmagic.LooksLikeHTTPChallenge(r) {
			if host, err := normalizeHost(hostOnly(r.Host)); err == nil {
				r2 := r
				if host != r.Host {
					r2 = r.Clone(r.Context())
					r2.Host = host
				}
				if iss.HandleHTTPChallenge(w, r2) {
					return
				}
			}
		}
		next.ServeHTTP(w, r)
	})
}

// hostOnly drops a port from a Host header value.
func hostOnly(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return h
	}
	return hostport
}

// maxHostLen is the longest DNS name in presentation form without the
// trailing dot (RFC 1035 §2.3.4: 255 octets on the wire).
const maxHostLen = 253

// normalizeHost turns a TLS server name (RFC 6066 §3: an ASCII host name,
// A-labels for IDNs, no IP literals) into the form PublicCerts matches and
// hands to Allow: lower case, no trailing dot. It refuses what cannot be a
// certificate's DNS name: empty names, IP addresses, wildcards, labels
// outside letters, digits and inner hyphens (RFC 1123 §2.1), and names or
// labels over the DNS limits.
func normalizeHost(name string) (string, error) {
	name = strings.TrimSuffix(name, ".")
	if name == "" {
		return "", errors.New("empty host name")
	}
	if len(name) > maxHostLen {
		return "", fmt.Errorf("host name of %d bytes: longer than %d", len(name), maxHostLen)
	}
	if _, err := netip.ParseAddr(name); err == nil {
		return "", fmt.Errorf("host %q is an IP address", name)
	}
	b := []byte(name)
	start := 0
	allDigits := true
	for i := 0; i <= len(b); i++ {
		if i == len(b) || b[i] == '.' {
			label := b[start:i]
			switch {
			case len(label) == 0:
				return "", fmt.Errorf("host %q has an empty label", name)
			case len(label) > 63:
				return "", fmt.Errorf("host %q has a label longer than 63 bytes", name)
			case label[0] == '-' || label[len(label)-1] == '-':
				return "", fmt.Errorf("host %q has a label starting or ending with '-'", name)
			}
			start = i + 1
			continue
		}
		c := b[i]
		switch {
		case c >= 'A' && c <= 'Z':
			b[i] = c + 'a' - 'A'
			allDigits = false
		case c >= 'a' && c <= 'z', c == '-':
			allDigits = false
		case c >= '0' && c <= '9':
		default:
			return "", fmt.Errorf("host %q: character %q at %d: want letters, digits, '-' and '.'", name, c, i)
		}
	}
	if allDigits {
		// Dotted numbers that netip refuses (leading zeros, "1.2.3")
		// are still read as addresses by some resolvers.
		return "", fmt.Errorf("host %q is all digits and dots", name)
	}
	return string(b), nil
}
