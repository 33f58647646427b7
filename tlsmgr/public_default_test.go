package tlsmgr

import (
	"crypto/tls"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"
)

// TestPublicNoSNI: a client that sends no server name (`curl -k
// https://127.0.0.1/`), or one that has no certificate, completes the
// handshake on every source with the default certificate, over TLS 1.3 and
// 1.2, and each reason is logged once per defaultLogEvery with the number
// of handshakes it stood for, never once per handshake.
func TestPublicNoSNI(t *testing.T) {
	pki := newTestPKI(t, "files CA")
	pairDir := t.TempDir()
	first, _ := pki.writePair(t, pairDir, "web", leafOpts{names: []string{"web.example"}})
	second, _ := pki.writePair(t, pairDir, "api", leafOpts{names: []string{"api.example"}})
	acmeLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer acmeLn.Close()

	for _, tt := range []struct {
		name     string
		p        *PublicCerts
		wantName string // the one DNS name of the default certificate
	}{
		{"files", &PublicCerts{Source: SourceFiles, Files: []CertFiles{first, second}}, "web.example"},
		{"internal", &PublicCerts{DataDir: filepath.Join(t.TempDir(), "data"), Allow: newAllowList("web.example").allow}, DefaultCertName},
		// The directory is never contacted: no name here gets an order.
		{"acme", &PublicCerts{Source: SourceACME, DataDir: t.TempDir(), Allow: newAllowList("web.example").allow,
			ACMECA: "https://127.0.0.1:1/directory", ACMETLSAddr: acmeLn.Addr().String()}, DefaultCertName},
	} {
		t.Run(tt.name, func(t *testing.T) {
			logs := &logBuffer{}
			var now atomic.Pointer[time.Time]
			start := time.Now()
			now.Store(&start)
			p := tt.p
			p.Logger = slog.New(slog.NewTextHandler(logs, nil))
			p.now = func() time.Time { return *now.Load() }
			startPublic(t, p)
			addr := serveTLS(t, p.TLSConfig())

			const msg = "answered with the default certificate"
			records := func(reason string) int { return countLines(logs.String(), msg, `reason="`+reason+`"`) }
			for _, max := range []uint16{tls.VersionTLS13, tls.VersionTLS12} {
				for range 3 {
					c, err := dial(addr, &tls.Config{InsecureSkipVerify: true, MaxVersion: max, NextProtos: []string{"h2"}})
					if err != nil {
						t.Fatalf("handshake without SNI (max version %x): %v", max, err)
					}
					cs := c.ConnectionState()
					c.Close()
					if got := cs.PeerCertificates[0].DNSNames; !slices.Equal(got, []string{tt.wantName}) {
						t.Fatalf("certificate without SNI names %v, want %s", got, tt.wantName)
					}
					if cs.NegotiatedProtocol != "h2" {
						t.Errorf("ALPN %q, want h2: the default certificate changes nothing else", cs.NegotiatedProtocol)
					}
				}
			}
			leaf, err := servedCert(t, addr, "unknown.example")
			if err != nil || !slices.Equal(leaf.DNSNames, []string{tt.wantName}) {
				t.Fatalf("unknown server name: %v, %v; want the default certificate", leaf, err)
			}
			if n := records(reasonNoSNI); n != 1 {
				t.Errorf("6 handshakes without SNI logged %d times, want once:\n%s", n, logs.String())
			}
			if n := records(reasonNoCertFor); n != 1 {
				t.Errorf("unknown name logged %d times, want once:\n%s", n, logs.String())
			}
			if countLines(logs.String(), msg, "level=ERROR") != 0 {
				t.Errorf("a client without SNI is logged as an error:\n%s", logs.String())
			}

			// A minute on, the next one is logged with the count of those
			// that were not.
			later := start.Add(defaultLogEvery)
			now.Store(&later)
			if _, err := servedCert(t, addr, ""); err != nil {
				t.Fatal(err)
			}
			if n := countLines(logs.String(), msg, `reason="`+reasonNoSNI+`"`, "unlogged_since_last=5"); n != 1 {
				t.Errorf("after %v: want one record counting 5 unlogged handshakes:\n%s", defaultLogEvery, logs.String())
			}
		})
	}
}

// TestDefaultCertRenewal: the default certificate is renewed two thirds
// into its life, and a failed renewal keeps the current one while valid.
func TestDefaultCertRenewal(t *testing.T) {
	start := time.Now()
	fail := false
	sign := func(host string, now time.Time) (*tls.Certificate, error) {
		if fail {
			return nil, net.ErrClosed
		}
		return signLeaf(host, now, nil, nil)
	}
	d, err := newDefaultCert(sign, start)
	if err != nil {
		t.Fatal(err)
	}
	c1, _ := d.get(start.Add(time.Hour))
	due := start.Add(internalLeafLife * 2 / 3)
	c2, _ := d.get(due)
	if c1 == c2 {
		t.Fatal("not renewed two thirds into its life")
	}
	fail = true
	c3, err := d.get(due.Add(internalLeafLife * 2 / 3))
	if err != nil || c3 != c2 {
		t.Errorf("failed renewal: %v, kept %v; want the current certificate", err, c3 == c2)
	}
	if _, err := d.get(due.Add(internalLeafLife)); err == nil {
		t.Error("expired default certificate served after failed renewals")
	}
}
