package mesh

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"os"
	"path/filepath"

	"github.com/meshd/meshd/proxy"
	"github.com/meshd/meshd/tlsmgr"
)

// defaultDataDir is where an edge keeps its internal CA and ACME state
// when --data-dir is not given.
func defaultDataDir() string {
	if os.Geteuid() == 0 {
		return "/var/lib/meshd"
	}
	if d := os.Getenv("XDG_DATA_HOME"); d != "" {
		return filepath.Join(d, "meshd")
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".local", "share", "meshd")
	}
	return "meshd-data"
}

func (c *Config) validatePublicTLS() error {
	if c.PublicHTTPS == "" {
		return nil
	}
	if err := validHostPort(c.PublicHTTPS); err != nil {
		return &FieldError{Field: "public-https", Err: err}
	}
	switch c.TLS {
	case tlsmgr.SourceFiles:
		if len(c.TLSCert) == 0 {
			return fieldErr("tls-cert", "required with tls: files")
		}
		if len(c.TLSCert) != len(c.TLSKey) {
			return fieldErr("tls-key", "%d keys for %d certificates: give them in pairs", len(c.TLSKey), len(c.TLSCert))
		}
	case tlsmgr.SourceInternal, tlsmgr.SourceACME:
		if len(c.TLSCert) > 0 || len(c.TLSKey) > 0 {
			return fieldErr("tls-cert", "only with tls: files")
		}
	default:
		return fieldErr("tls", "%q: want files, internal or acme", c.TLS)
	}
	for _, h := range c.PublicHTTPAllow {
		if err := validDomain(h); err != nil {
			return &FieldError{Field: "public-http-allow", Err: err}
		}
	}
	return nil
}

// publicCerts builds the edge's certificate source. Internal and ACME
// certificates are only ever issued for hosts the catalog publishes, so a
// client cannot make the edge issue (or ask an ACME CA) for arbitrary SNI.
func (n *Node) publicCerts() *tlsmgr.PublicCerts {
	c := &n.Config
	p := &tlsmgr.PublicCerts{Source: c.TLS, DataDir: c.DataDir, ACMECA: c.ACMECA, ACMECARoot: c.ACMECARoot,
		ACMEEmail: c.ACMEEmail, Logger: n.Logger.With("part", "public-tls")}
	for i := range c.TLSCert {
		p.Files = append(p.Files, tlsmgr.CertFiles{Cert: c.TLSCert[i], Key: c.TLSKey[i]})
	}
	p.Allow = func(ctx context.Context, host string) error {
		s := n.snap.Load()
		// A tombstoned service keeps its names, and its certificate, so
		// its clients read a 503 over HTTPS, not a handshake failure.
		if svc, ok := n.publicServiceOf(host, s); ok && s.publishes(svc, n.now) {
			return nil
		}
		return fmt.Errorf("no service is published at %q", host)
	}
	return p
}

// sizeFlag reads a validated size field where -1 means no limit.
func sizeFlag(s string) int64 {
	if s == "-1" {
		return -1
	}
	v, _ := parseSize(s)
	return v
}

// plainHTTPAllowed exempts --public-http-allow hosts from the redirect to
// HTTPS.
func (n *Node) plainHTTPAllowed() func(*http.Request) bool {
	allow := map[string]bool{}
	for _, h := range n.Config.PublicHTTPAllow {
		allow[h] = true
	}
	return func(r *http.Request) bool { return allow[normalizeHost(r.Host)] }
}

// publicServer is a listener of the edge's public side with the hardening
// settings; tlsConf nil means plain HTTP.
func (n *Node) publicServer(addr string, tlsConf *tls.Config, h http.Handler) *proxy.Server {
	c := &n.Config
	size := sizeFlag
	return &proxy.Server{
		Addr: addr, TLS: tlsConf, Handler: h, Logger: n.Logger, Public: true,
		HTTP3: tlsConf != nil && !c.NoHTTP3, Allow0RTT: tlsConf != nil && c.Allow0RTT,
		MaxConnsPerIP: c.MaxConnsPerIP, MaxBodyBytes: size(c.MaxBody), MinBodyRate: size(c.MinBodyRate),
		MaxConcurrentStreams: c.MaxConcurrentStreams, ReadHeaderTimeout: c.ReadHeaderTimeout,
		IdleTimeout: c.IdleTimeout, MaxHeaderBytes: int(size(c.MaxHeaderBytes)), SendTimeout: c.SendTimeout,
		ProxyProtocolFrom: c.proxyProtocolFrom(),
	}
}
