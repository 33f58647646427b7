package tlsmgr

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"testing"
	"time"
)

// BenchmarkPublicFilesPick measures choosing a certificate by SNI among 100
// pairs (the per-handshake cost of SourceFiles).
func BenchmarkPublicFilesPick(b *testing.B) {
	pki := newTestPKI(b, "bench CA")
	var pairs []*tls.Certificate
	for i := range 100 {
		chain, key, _ := pki.leaf(b, leafOpts{names: []string{fmt.Sprintf("h%d.example", i)}})
		c, err := parsePublicPair(chain, key, time.Now())
		if err != nil {
			b.Fatal(err)
		}
		pairs = append(pairs, c)
	}
	set := newFileSet(pairs, fileVersion{})
	for b.Loop() {
		if set.pick("H57.example.") != pairs[57] {
			b.Fatal("wrong pair")
		}
	}
}

// BenchmarkPublicInternalIssue measures issuing one internal leaf (P-256
// key + signature): the cost of the first handshake for a new host.
func BenchmarkPublicInternalIssue(b *testing.B) {
	p := startPublic(b, &PublicCerts{DataDir: b.TempDir(), Allow: allowAll})
	now := time.Now()
	for b.Loop() {
		if _, err := p.internal.issue("web.localhost", now); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPublicHandshake measures full and resumed TLS 1.3 handshakes on
// loopback against SourceInternal with the certificate cached.
func BenchmarkPublicHandshake(b *testing.B) {
	p := startPublic(b, &PublicCerts{DataDir: b.TempDir(), Allow: allowAll})
	addr := serveTLS(b, p.TLSConfig())
	rootPEM, err := InternalRoot(p.DataDir)
	if err != nil {
		b.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(rootPEM)
	for _, resume := range []bool{false, true} {
		b.Run(fmt.Sprintf("resumed=%v", resume), func(b *testing.B) {
			cfg := &tls.Config{ServerName: "web.localhost", RootCAs: roots}
			if resume {
				cfg.ClientSessionCache = tls.NewLRUClientSessionCache(1)
			}
			resumed := 0
			for b.Loop() {
				c, err := dial(addr, cfg)
				if err != nil {
					b.Fatal(err)
				}
				if err := echo(c, "x"); err != nil { // reads the session ticket
					b.Fatal(err)
				}
				if c.ConnectionState().DidResume {
					resumed++
				}
				c.Close()
			}
			b.ReportMetric(float64(resumed)/float64(b.N), "resumed/op")
		})
	}
}
