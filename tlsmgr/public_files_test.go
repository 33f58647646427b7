package tlsmgr

import (
	"context"
	"crypto/tls"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestPublicFilesSNI(t *testing.T) {
	pki := newTestPKI(t, "files CA")
	dir := t.TempDir()
	a, serialA := pki.writePair(t, dir, "a", leafOpts{names: []string{"a.example"}})
	b, serialB := pki.writePair(t, dir, "b", leafOpts{names: []string{"b.example", "b2.example"}})
	w, serialW := pki.writePair(t, dir, "w", leafOpts{names: []string{"*.wild.example"}})
	x, serialX := pki.writePair(t, dir, "x", leafOpts{names: []string{"x.wild.example"}})
	// A second pair for b.example: the earlier pair keeps the name.
	b3, _ := pki.writePair(t, dir, "b3", leafOpts{names: []string{"b.example"}})
	p := startPublic(t, &PublicCerts{Source: SourceFiles, Files: []CertFiles{a, b, w, x, b3}})
	addr := serveTLS(t, p.TLSConfig())

	for _, tt := range []struct {
		sni  string
		want *big.Int
	}{
		{"a.example", serialA},
		{"b.example", serialB},
		{"b2.example", serialB},
		{"B.Example.", serialB},                 // case and trailing dot do not matter
		{"y.wild.example", serialW},             // wildcard
		{"x.wild.example", serialX},             // exact beats wildcard
		{"deep.y.wild.example", serialA},        // a wildcard covers one label only
		{"wild.example", serialA},               // nor the parent itself
		{"unknown.example", serialA},            // default: first pair
		{"", serialA},                           // no SNI
		{"bad_name!.example", serialA},          // not a host name
		{strings.Repeat("a", 300), serialA},     // too long
		{"xn--bcher-kva.wild.example", serialW}, // A-label under the wildcard
	} {
		t.Run(tt.sni, func(t *testing.T) {
			leaf, err := servedCert(t, addr, tt.sni)
			if err != nil {
				t.Fatalf("handshake: %v", err)
			}
			if leaf.SerialNumber.Cmp(tt.want) != 0 {
				t.Fatalf("got certificate %v (serial %v), want serial %v", leaf.DNSNames, leaf.SerialNumber, tt.want)
			}
		})
	}

	// The certificate chosen for a name verifies for that name against the
	// CA: the chain in the file (leaf, CA) is what the server sends.
	c, err := dial(addr, &tls.Config{ServerName: "b2.example", RootCAs: pki.pool})
	if err != nil {
		t.Fatalf("verified handshake: %v", err)
	}
	c.Close()
}

// TestPublicFilesReload replaces a pair while a connection is open: Reload
// switches new handshakes to the new certificate, the open connection keeps
// working, and a later change is picked up by polling alone.
func TestPublicFilesReload(t *testing.T) {
	pki := newTestPKI(t, "files CA")
	dir := t.TempDir()
	f, serial1 := pki.writePair(t, dir, "web", leafOpts{names: []string{"web.example"}})
	p := startPublic(t, &PublicCerts{Source: SourceFiles, Files: []CertFiles{f}, PollInterval: 20 * time.Millisecond})
	addr := serveTLS(t, p.TLSConfig())

	open, err := dial(addr, &tls.Config{ServerName: "web.example", RootCAs: pki.pool})
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	if err := echo(open, "before\n"); err != nil {
		t.Fatal(err)
	}
	if got := open.ConnectionState().PeerCertificates[0].SerialNumber; got.Cmp(serial1) != 0 {
		t.Fatalf("serial %v, want %v", got, serial1)
	}

	_, serial2 := pki.writePair(t, dir, "web", leafOpts{names: []string{"web.example"}})
	if err := p.Reload(); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	leaf, err := servedCert(t, addr, "web.example")
	if err != nil || leaf.SerialNumber.Cmp(serial2) != 0 {
		t.Fatalf("after Reload: serial %v, %v; want %v", leaf.SerialNumber, err, serial2)
	}
	if err := echo(open, "after reload\n"); err != nil {
		t.Fatalf("open connection broken by reload: %v", err)
	}

	// No Reload call: the poll sees the change.
	_, serial3 := pki.writePair(t, dir, "web", leafOpts{names: []string{"web.example"}})
	waitFor(t, 5*time.Second, "polled reload", func() bool {
		leaf, err := servedCert(t, addr, "web.example")
		return err == nil && leaf.SerialNumber.Cmp(serial3) == 0
	})
	if err := echo(open, "after poll\n"); err != nil {
		t.Fatalf("open connection broken by polled reload: %v", err)
	}
}

// TestPublicFilesBadReplacement: every kind of bad replacement is refused
// by Reload and by the poll, logged once, and the old pair stays served.
func TestPublicFilesBadReplacement(t *testing.T) {
	pki := newTestPKI(t, "files CA")
	other := newTestPKI(t, "other CA")
	for _, tt := range []struct {
		name    string
		replace func(t *testing.T, f CertFiles)
		want    string
	}{
		{"key of another certificate", func(t *testing.T, f CertFiles) {
			_, key, _ := other.leaf(t, leafOpts{names: []string{"web.example"}})
			writeAtomic(f.Key, key, 0o600)
		}, "private key does not match"},
		{"garbage certificate", func(t *testing.T, f CertFiles) {
			writeAtomic(f.Cert, []byte("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"), 0o644)
		}, "parse pair"},
		{"empty certificate", func(t *testing.T, f CertFiles) {
			writeAtomic(f.Cert, nil, 0o644)
		}, "parse pair"},
		{"expired certificate", func(t *testing.T, f CertFiles) {
			chain, key, _ := pki.leaf(t, leafOpts{names: []string{"web.example"}, notBefore: time.Now().Add(-2 * time.Hour), notAfter: time.Now().Add(-time.Hour)})
			writeAtomic(f.Key, key, 0o600)
			writeAtomic(f.Cert, chain, 0o644)
			// Not just "expired": the test's temporary directory, named
			// after the test, is in every logged path.
		}, "leaf expired"},
		{"no DNS name", func(t *testing.T, f CertFiles) {
			chain, key, _ := pki.leaf(t, leafOpts{})
			writeAtomic(f.Key, key, 0o600)
			writeAtomic(f.Cert, chain, 0o644)
		}, "no DNS name"},
		{"CA certificate", func(t *testing.T, f CertFiles) {
			chain, key, _ := pki.leaf(t, leafOpts{names: []string{"web.example"}, isCA: true})
			writeAtomic(f.Key, key, 0o600)
			writeAtomic(f.Cert, chain, 0o644)
		}, "is a CA"},
		{"file removed", func(t *testing.T, f CertFiles) {
			os.Remove(f.Key)
		}, "no such file"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			f, serial := pki.writePair(t, dir, "web", leafOpts{names: []string{"web.example"}})
			logs := &logBuffer{}
			p := startPublic(t, &PublicCerts{Source: SourceFiles, Files: []CertFiles{f}, PollInterval: 10 * time.Millisecond,
				Logger: slog.New(slog.NewTextHandler(logs, nil))})
			addr := serveTLS(t, p.TLSConfig())
			before := p.files.Load()

			tt.replace(t, f)
			err := p.Reload()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Reload error = %v, want it to contain %q", err, tt.want)
			}
			if !strings.Contains(err.Error(), dir) {
				t.Errorf("error %q does not name the file", err)
			}
			if p.files.Load() != before {
				t.Fatal("a refused reload changed the served set")
			}
			// The poll refuses the same files and logs it once, however
			// many polls pass. (A poll between the writes of key and
			// certificate may also refuse the half-written pair, with
			// another error; that is a different version.)
			polled := func() int {
				return countLines(logs.String(), "level=WARN", tt.want, `trigger="file change"`) +
					countLines(logs.String(), "level=WARN", "unreadable")
			}
			waitFor(t, 5*time.Second, "poll to refuse the files", func() bool { return polled() > 0 })
			n := p.filePolls.Load()
			waitFor(t, 5*time.Second, "five more polls", func() bool { return p.filePolls.Load() >= n+5 })
			if n := polled(); n != 1 {
				t.Errorf("poll logged the refusal %d times, want once:\n%s", n, logs.String())
			}
			leaf, err := servedCert(t, addr, "web.example")
			if err != nil || leaf.SerialNumber.Cmp(serial) != 0 {
				t.Fatalf("after refused replacement: serial %v, %v; want the old %v", leaf.SerialNumber, err, serial)
			}
		})
	}
}

func TestPublicFilesStartErrors(t *testing.T) {
	pki := newTestPKI(t, "files CA")
	dir := t.TempDir()
	good, _ := pki.writePair(t, dir, "good", leafOpts{names: []string{"good.example"}})
	expired, _ := pki.writePair(t, dir, "old", leafOpts{names: []string{"old.example"}, notBefore: time.Now().Add(-2 * time.Hour), notAfter: time.Now().Add(-time.Hour)})
	for _, tt := range []struct {
		name  string
		files []CertFiles
		want  string
	}{
		{"missing cert", []CertFiles{good, {Cert: filepath.Join(dir, "nope.crt"), Key: good.Key}}, "nope.crt"},
		{"one expired pair", []CertFiles{good, expired}, "expired"},
		{"swapped cert and key", []CertFiles{{Cert: good.Key, Key: good.Cert}}, "parse pair"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := &PublicCerts{Source: SourceFiles, Files: tt.files, Logger: discardLogger()}
			err := p.Start(context.Background())
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Start error = %v, want %q", err, tt.want)
			}
			if _, err := p.getCertificate(&tls.ClientHelloInfo{ServerName: "good.example"}); err == nil {
				t.Fatal("a failed Start serves certificates")
			}
			p.Close()
		})
	}
}

// countLines counts the lines of s that contain every one of subs.
func countLines(s string, subs ...string) int {
	n := 0
	for _, line := range strings.Split(s, "\n") {
		all := true
		for _, sub := range subs {
			all = all && strings.Contains(line, sub)
		}
		if all {
			n++
		}
	}
	return n
}
