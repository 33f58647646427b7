package tlsmgr

import (
	"context"
	"crypto/tls"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func allowAll(context.Context, string) error { return nil }

func TestPublicValidate(t *testing.T) {
	dir := t.TempDir()
	for _, tt := range []struct {
		name string
		p    *PublicCerts
		want string // "" = valid
	}{
		{"internal default", &PublicCerts{DataDir: dir, Allow: allowAll}, ""},
		{"internal without data dir", &PublicCerts{Allow: allowAll}, "DataDir is required"},
		{"internal without allow", &PublicCerts{DataDir: dir}, "Allow is required"},
		{"unknown source", &PublicCerts{Source: "self-signed", DataDir: dir, Allow: allowAll}, `Source "self-signed"`},
		{"files without pairs", &PublicCerts{Source: SourceFiles}, "at least one"},
		{"files half a pair", &PublicCerts{Source: SourceFiles, Files: []CertFiles{{Cert: "a.crt"}}}, "Files[0]"},
		{"negative poll", &PublicCerts{Source: SourceFiles, Files: []CertFiles{{"a", "b"}}, PollInterval: -1}, "PollInterval"},
		{"acme", &PublicCerts{Source: SourceACME, DataDir: dir, Allow: allowAll, ACMETLSAddr: ":443", ACMEHTTPAddr: ":80"}, ""},
		{"acme no challenge", &PublicCerts{Source: SourceACME, DataDir: dir, Allow: allowAll}, "ACMEHTTPAddr or ACMETLSAddr"},
		{"acme http url", &PublicCerts{Source: SourceACME, DataDir: dir, Allow: allowAll, ACMETLSAddr: ":443", ACMECA: "http://ca.test/dir"}, "https://"},
		{"acme port 0", &PublicCerts{Source: SourceACME, DataDir: dir, Allow: allowAll, ACMETLSAddr: "127.0.0.1:0"}, "port"},
		{"acme no port", &PublicCerts{Source: SourceACME, DataDir: dir, Allow: allowAll, ACMEHTTPAddr: "127.0.0.1"}, "ACMEHTTPAddr"},
		{"acme two hosts", &PublicCerts{Source: SourceACME, DataDir: dir, Allow: allowAll, ACMEHTTPAddr: "127.0.0.1:80", ACMETLSAddr: "127.0.0.2:443"}, "same host"},
		{"acme without allow", &PublicCerts{Source: SourceACME, DataDir: dir, ACMETLSAddr: ":443"}, "Allow is required"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.p.Validate()
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate = %v, want error containing %q", err, tt.want)
			}
			// Start refuses the same way and creates nothing.
			sub := filepath.Join(t.TempDir(), "data")
			p := tt.p
			p.Logger = discardLogger()
			if p.DataDir != "" {
				p.DataDir = sub
			}
			if err := p.Start(context.Background()); err == nil {
				t.Fatal("Start accepted an invalid config")
			}
			if _, err := os.Stat(sub); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("failed Start created %s", sub)
			}
		})
	}
}

// TestPublicTLSConfig checks the protocol policy of the public listener:
// TLS 1.3 when possible, TLS 1.2 only with ECDHE AEAD suites, nothing older.
func TestPublicTLSConfig(t *testing.T) {
	pki := newTestPKI(t, "files CA")
	f, _ := pki.writePair(t, t.TempDir(), "web", leafOpts{names: []string{"web.example"}})
	p := startPublic(t, &PublicCerts{Source: SourceFiles, Files: []CertFiles{f}})
	cfg := p.TLSConfig()
	if !slices.Equal(cfg.NextProtos, []string{"h2", "http/1.1"}) {
		t.Errorf("NextProtos %q", cfg.NextProtos)
	}
	if cfg.SessionTicketsDisabled {
		t.Error("session tickets disabled on the public side")
	}
	addr := serveTLS(t, cfg)

	client := func(mod func(*tls.Config)) *tls.Config {
		c := &tls.Config{ServerName: "web.example", RootCAs: pki.pool, NextProtos: []string{"h2", "http/1.1"}}
		if mod != nil {
			mod(c)
		}
		return c
	}
	for _, tt := range []struct {
		name      string
		cfg       *tls.Config
		ok        bool
		version   uint16
		wantProto string
	}{
		{"default client gets TLS 1.3 and h2", client(nil), true, tls.VersionTLS13, "h2"},
		{"http/1.1 only client", client(func(c *tls.Config) { c.NextProtos = []string{"http/1.1"} }), true, tls.VersionTLS13, "http/1.1"},
		{"TLS 1.2 with GCM", client(func(c *tls.Config) {
			c.MaxVersion = tls.VersionTLS12
			c.CipherSuites = []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256}
		}), true, tls.VersionTLS12, "h2"},
		{"TLS 1.2 with ChaCha20", client(func(c *tls.Config) {
			c.MaxVersion = tls.VersionTLS12
			c.CipherSuites = []uint16{tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256}
		}), true, tls.VersionTLS12, "h2"},
		{"TLS 1.1 refused", client(func(c *tls.Config) {
			c.MinVersion, c.MaxVersion = tls.VersionTLS10, tls.VersionTLS11
		}), false, 0, ""},
		{"TLS 1.2 CBC only refused", client(func(c *tls.Config) {
			c.MaxVersion = tls.VersionTLS12
			c.CipherSuites = []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA, tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256}
		}), false, 0, ""},
		{"TLS 1.2 RSA key exchange refused", client(func(c *tls.Config) {
			c.MaxVersion = tls.VersionTLS12
			c.CipherSuites = []uint16{tls.TLS_RSA_WITH_AES_128_GCM_SHA256, tls.TLS_RSA_WITH_AES_256_GCM_SHA384}
		}), false, 0, ""},
		{"TLS 1.2 3DES refused", client(func(c *tls.Config) {
			c.MaxVersion = tls.VersionTLS12
			c.CipherSuites = []uint16{tls.TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA, tls.TLS_RSA_WITH_3DES_EDE_CBC_SHA}
		}), false, 0, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := dial(addr, tt.cfg)
			if !tt.ok {
				if err == nil {
					cs := c.ConnectionState()
					c.Close()
					t.Fatalf("handshake succeeded with version %x suite %s", cs.Version, tls.CipherSuiteName(cs.CipherSuite))
				}
				return
			}
			if err != nil {
				t.Fatalf("handshake: %v", err)
			}
			defer c.Close()
			cs := c.ConnectionState()
			if cs.Version != tt.version || cs.NegotiatedProtocol != tt.wantProto {
				t.Fatalf("version %x proto %q, want %x %q", cs.Version, cs.NegotiatedProtocol, tt.version, tt.wantProto)
			}
		})
	}
	// Every TLS 1.2 suite offered is ECDHE with an AEAD.
	for _, id := range cfg.CipherSuites {
		name := tls.CipherSuiteName(id)
		if !strings.HasPrefix(name, "TLS_ECDHE_") || !(strings.Contains(name, "_GCM_") || strings.Contains(name, "CHACHA20_POLY1305")) {
			t.Errorf("weak suite offered: %s", name)
		}
	}
	// The HTTP/3 listener clones the config with its own ALPN: the
	// certificate must not depend on it.
	h3 := cfg.Clone()
	h3.NextProtos = []string{"h3"}
	h3addr := serveTLS(t, h3)
	c, err := dial(h3addr, &tls.Config{ServerName: "web.example", RootCAs: pki.pool, NextProtos: []string{"h3"}})
	if err != nil {
		t.Fatalf("handshake with an h3-only clone: %v", err)
	}
	c.Close()
}

// TestPublicResumption: a returning client resumes its session (TLS 1.3
// PSK and TLS 1.2 tickets), which is what the public side wants.
func TestPublicResumption(t *testing.T) {
	pki := newTestPKI(t, "files CA")
	f, _ := pki.writePair(t, t.TempDir(), "web", leafOpts{names: []string{"web.example"}})
	p := startPublic(t, &PublicCerts{Source: SourceFiles, Files: []CertFiles{f}})
	addr := serveTLS(t, p.TLSConfig())
	for _, version := range []uint16{tls.VersionTLS13, tls.VersionTLS12} {
		t.Run(tls.VersionName(version), func(t *testing.T) {
			cfg := &tls.Config{ServerName: "web.example", RootCAs: pki.pool, MaxVersion: version,
				ClientSessionCache: tls.NewLRUClientSessionCache(4)}
			for i, wantResumed := range []bool{false, true} {
				c, err := dial(addr, cfg)
				if err != nil {
					t.Fatalf("connection %d: %v", i, err)
				}
				// TLS 1.3 tickets arrive after the handshake: a round
				// trip makes the client read them.
				if err := echo(c, "ping\n"); err != nil {
					t.Fatal(err)
				}
				cs := c.ConnectionState()
				c.Close()
				if cs.Version != version || cs.DidResume != wantResumed {
					t.Fatalf("connection %d: version %x resumed %v, want %x %v", i, cs.Version, cs.DidResume, version, wantResumed)
				}
			}
		})
	}
}

func TestPublicNotStarted(t *testing.T) {
	p := &PublicCerts{DataDir: t.TempDir(), Allow: allowAll}
	if _, err := p.TLSConfig().GetCertificate(&tls.ClientHelloInfo{ServerName: "web.localhost"}); err == nil {
		t.Error("GetCertificate before Start succeeded")
	}
	if err := p.Reload(); err == nil {
		t.Error("Reload before Start succeeded")
	}
	if err := p.Close(); err != nil {
		t.Error(err)
	}
	if err := p.Start(context.Background()); err == nil {
		t.Error("Start after Close succeeded")
	}
}

// TestPublicHTTPChallengePassThrough: outside SourceACME the challenge
// wrapper is the handler itself, and in SourceACME a request that is not a
// challenge this node started reaches the next handler.
func TestPublicHTTPChallengePassThrough(t *testing.T) {
	next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusTeapot) })
	for _, src := range []string{SourceFiles, SourceInternal, SourceACME} {
		t.Run(src, func(t *testing.T) {
			p := &PublicCerts{Source: src, DataDir: t.TempDir(), Allow: allowAll, ACMETLSAddr: "127.0.0.1:1",
				ACMEHTTPAddr: "127.0.0.1:2", ACMECA: "https://127.0.0.1:3/dir", Logger: discardLogger()}
			if src == SourceACME {
				startPublic(t, p)
			}
			h := p.HTTPChallenge(next)
			for _, target := range []string{"/", "/.well-known/acme-challenge/abc", "/.well-known/acme-challenge/../../x"} {
				for _, host := range []string{"web.localhost", "bad host!", "web.localhost:80"} {
					rec := httptest.NewRecorder()
					req := httptest.NewRequest(http.MethodGet, "http://x"+target, nil)
					req.Host = host
					h.ServeHTTP(rec, req)
					if rec.Code != http.StatusTeapot {
						t.Errorf("%s %s: status %d, want the next handler's 418", host, target, rec.Code)
					}
				}
			}
		})
	}
}
