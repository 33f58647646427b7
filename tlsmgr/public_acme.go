package tlsmgr

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// ACMEStorageDir is the directory under DataDir where SourceACME keeps
// certmagic's storage (account key, certificates, their keys, locks).
const ACMEStorageDir = "acme"

// startACME sets up certmagic for on-demand issuance: the first handshake
// for a host Allow accepts obtains its certificate (HTTP-01 through
// HTTPChallenge, TLS-ALPN-01 through TLSConfig), later ones are served from
// memory or storage, and certmagic renews them in the background.
func (p *PublicCerts) startACME() error {
	// No CA of our own to sign the default certificate: it is self-signed,
	// which changes nothing for a client, since it never verifies anyway.
	def, err := newDefaultCert(func(host string, now time.Time) (*tls.Certificate, error) {
		return signLeaf(host, now, nil, nil)
	}, p.clock())
	if err != nil {
		return fmt.Errorf("default certificate: %w", err)
	}
	p.fallback = def
	var roots *x509.CertPool
	if p.ACMECARoot != "" {
		data, err := readSmallFile(p.ACMECARoot)
		if err != nil {
			return fmt.Errorf("acme ca root: %w", err)
		}
		roots = x509.NewCertPool()
		if !roots.AppendCertsFromPEM(data) {
			return fmt.Errorf("acme ca root %s: no PEM certificate found", p.ACMECARoot)
		}
	}
	storage := filepath.Join(p.DataDir, ACMEStorageDir)
	if err := os.MkdirAll(storage, 0o700); err != nil {
		return fmt.Errorf("create acme storage: %w", err)
	}
	ca := p.ACMECA
	if ca == "" {
		ca = DefaultACMECA
	}
	zl := zap.New(&slogCore{h: p.logger().With("component", "certmagic").Handler()})

	var cfg *certmagic.Config
	cache := certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert: func(certmagic.Certificate) (*certmagic.Config, error) { return cfg, nil },
		Logger:           zl,
	})
	cfg = certmagic.New(cache, certmagic.Config{
		Storage: &certmagic.FileStorage{Path: storage},
		Logger:  zl,
		OnDemand: &certmagic.OnDemandConfig{
			// certmagic asks this before loading from storage and before
			// creating any ACME order, for issuance and for renewal.
			DecisionFunc: p.decideACME,
		},
	})
	tmpl := certmagic.ACMEIssuer{
		CA:                      ca,
		Email:                   p.ACMEEmail,
		Agreed:                  true,
		TrustedRoots:            roots,
		DisableHTTPChallenge:    p.ACMEHTTPAddr == "",
		DisableTLSALPNChallenge: p.ACMETLSAddr == "",
		Logger:                  zl,
	}
	// certmagic solves a challenge by binding ListenHost:port unless that
	// address is already in use, in which case it trusts the listener there
	// (ours) to answer. Pointing it at our own bound addresses means it
	// never opens a listener of its own on the public interface.
	if p.ACMEHTTPAddr != "" {
		host, port, _ := splitListenAddr(p.ACMEHTTPAddr) // checked by Validate
		tmpl.ListenHost, tmpl.AltHTTPPort = host, port
	}
	if p.ACMETLSAddr != "" {
		host, port, _ := splitListenAddr(p.ACMETLSAddr) // same host, checked by Validate
		tmpl.ListenHost, tmpl.AltTLSALPNPort = host, port
	}
	issuer := certmagic.NewACMEIssuer(cfg, tmpl)
	cfg.Issuers = []certmagic.Issuer{issuer}
	p.magic, p.cache = cfg, cache
	p.issuer.Store(issuer)
	p.logger().Info("public certificates ready", "source", SourceACME, "ca", ca, "storage", storage,
		"http01", p.ACMEHTTPAddr != "", "tlsalpn01", p.ACMETLSAddr != "")
	return nil
}

// decideACME is certmagic's on-demand DecisionFunc: only well-formed host
// names that Allow accepts get an ACME order.
func (p *PublicCerts) decideACME(ctx context.Context, name string) error {
	host, err := normalizeHost(name)
	if err != nil {
		return err
	}
	if err := p.Allow(ctx, host); err != nil {
		p.logger().Debug("public certificate refused", "source", SourceACME, "host", host, "err", err)
		return fmt.Errorf("host %q not allowed: %w", host, err)
	}
	return nil
}

// slogCore is a zapcore.Core that writes to an slog.Handler, so certmagic's
// zap logs join meshd's slog output.
type slogCore struct {
	h     slog.Handler
	attrs []slog.Attr
}

var _ zapcore.Core = (*slogCore)(nil)

func zapToSlog(l zapcore.Level) slog.Level {
	switch {
	case l <= zapcore.DebugLevel:
		return slog.LevelDebug
	case l == zapcore.InfoLevel:
		return slog.LevelInfo
	case l == zapcore.WarnLevel:
		return slog.LevelWarn
	default:
		return slog.LevelError
	}
}

func (c *slogCore) Enabled(l zapcore.Level) bool {
	return c.h.Enabled(context.Background(), zapToSlog(l))
}

func (c *slogCore) With(fields []zapcore.Field) zapcore.Core {
	return &slogCore{h: c.h, attrs: append(append([]slog.Attr(nil), c.attrs...), fieldAttrs(fields)...)}
}

func (c *slogCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *slogCore) Write(e zapcore.Entry, fields []zapcore.Field) error {
	r := slog.NewRecord(e.Time, zapToSlog(e.Level), e.Message, 0)
	if e.LoggerName != "" {
		r.AddAttrs(slog.String("logger", e.LoggerName))
	}
	r.AddAttrs(c.attrs...)
	r.AddAttrs(fieldAttrs(fields)...)
	return c.h.Handle(context.Background(), r)
}

func (c *slogCore) Sync() error { return nil }

func fieldAttrs(fields []zapcore.Field) []slog.Attr {
	if len(fields) == 0 {
		return nil
	}
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range fields {
		f.AddTo(enc)
	}
	attrs := make([]slog.Attr, 0, len(enc.Fields))
	for _, k := range slices.Sorted(maps.Keys(enc.Fields)) {
		attrs = append(attrs, slog.Any(k, enc.Fields[k]))
	}
	return attrs
}
