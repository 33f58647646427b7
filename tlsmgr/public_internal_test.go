package tlsmgr

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// allowList is an Allow func over a fixed set that records every call.
type allowList struct {
	mu    sync.Mutex
	names map[string]bool
	calls []string
}

func newAllowList(names ...string) *allowList {
	a := &allowList{names: map[string]bool{}}
	for _, n := range names {
		a.names[n] = true
	}
	return a
}

func (a *allowList) allow(_ context.Context, host string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls = append(a.calls, host)
	if !a.names[host] {
		return errors.New("unknown host")
	}
	return nil
}

func (a *allowList) set(host string, ok bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.names[host] = ok
}

func (a *allowList) callsFor(host string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, c := range a.calls {
		if c == host {
			n++
		}
	}
	return n
}

func TestPublicInternal(t *testing.T) {
	dataDir := filepath.Join(t.TempDir(), "data")
	allow := newAllowList("web.localhost", "api.example.com")
	var now atomic.Pointer[time.Time]
	start := time.Now()
	now.Store(&start)
	p := &PublicCerts{DataDir: dataDir, Allow: allow.allow}
	p.now = func() time.Time { return *now.Load() }
	startPublic(t, p)
	addr := serveTLS(t, p.TLSConfig())

	rootPEM, err := InternalRoot(dataDir)
	if err != nil {
		t.Fatalf("InternalRoot: %v", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(rootPEM) {
		t.Fatal("InternalRoot returned no certificate")
	}
	block, _ := pem.Decode(rootPEM)
	root, _ := x509.ParseCertificate(block.Bytes)
	if root.Subject.CommonName != "meshd internal public CA" || len(root.URIs) != 0 || !root.IsCA {
		t.Errorf("root: CN %q URIs %v CA %v; want the internal public CA, no SPIFFE URI", root.Subject.CommonName, root.URIs, root.IsCA)
	}
	keyFile := filepath.Join(dataDir, InternalCADir, InternalRootKey)
	if fi, err := os.Stat(keyFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("root key %s: %v, mode %v; want 0600", keyFile, err, fi.Mode().Perm())
	}

	serials := map[string]string{}
	for _, host := range []string{"web.localhost", "api.example.com", "WEB.localhost."} {
		t.Run("allowed "+host, func(t *testing.T) {
			// Verified against the internal root only: the chain must
			// verify for the name with nothing else trusted.
			c, err := dial(addr, &tls.Config{ServerName: host, RootCAs: roots})
			if err != nil {
				t.Fatalf("handshake: %v", err)
			}
			defer c.Close()
			leaf := c.ConnectionState().PeerCertificates[0]
			key, ok := leaf.PublicKey.(*ecdsa.PublicKey)
			if !ok || key.Curve != elliptic.P256() {
				t.Errorf("leaf key %T, want ECDSA P-256", leaf.PublicKey)
			}
			if life := leaf.NotAfter.Sub(leaf.NotBefore); life > 7*24*time.Hour+2*time.Minute || life < 7*24*time.Hour {
				t.Errorf("leaf lifetime %v, want 7 days", life)
			}
			if !slices.Equal(leaf.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}) || leaf.IsCA {
				t.Errorf("leaf usage %v CA %v", leaf.ExtKeyUsage, leaf.IsCA)
			}
			serials[host] = leaf.SerialNumber.String()
		})
	}
	if serials["web.localhost"] != serials["WEB.localhost."] {
		t.Error("the same host in another case got another certificate: the cache is not keyed by the normalized name")
	}
	if n := allow.callsFor("web.localhost"); n != 1 {
		t.Errorf("Allow called %d times for web.localhost, want 1 (then cached)", n)
	}

	t.Run("refused", func(t *testing.T) {
		// A refused or malformed name gets the default certificate: a
		// handshake, but no certificate that verifies for the name.
		for _, host := range []string{"evil.example", "", "127.0.0.1", "a..b"} {
			leaf, err := servedCert(t, addr, host)
			if err != nil {
				t.Errorf("handshake for %q: %v, want the default certificate", host, err)
				continue
			}
			if !slices.Equal(leaf.DNSNames, []string{DefaultCertName}) {
				t.Errorf("certificate for %q names %v, want only %s", host, leaf.DNSNames, DefaultCertName)
			}
			if host != "" && leaf.VerifyHostname(host) == nil {
				t.Errorf("default certificate verifies for %q", host)
			}
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: DefaultCertName, CurrentTime: start}); err != nil {
				t.Errorf("default certificate does not chain to the internal root: %v", err)
			}
		}
		if _, err := dial(addr, &tls.Config{ServerName: "evil.example", RootCAs: roots}); err == nil {
			t.Error("a verifying client accepted the default certificate for evil.example")
		}
		if allow.callsFor("evil.example") != 2 {
			t.Errorf("Allow calls for evil.example: %d, want 2 (one per handshake, nothing cached)", allow.callsFor("evil.example"))
		}
		// Malformed names never reach Allow.
		for _, host := range []string{"", "127.0.0.1", "a..b"} {
			if allow.callsFor(host) != 0 {
				t.Errorf("Allow was asked about %q", host)
			}
		}
		p.internal.mu.Lock()
		_, cached := p.internal.entries["evil.example"]
		n := len(p.internal.entries)
		p.internal.mu.Unlock()
		if cached || n != 2 {
			t.Errorf("after refusals the cache holds %d entries (evil.example: %v), want the 2 allowed hosts", n, cached)
		}
	})

	t.Run("renewal", func(t *testing.T) {
		// Two thirds into the leaf's life the next handshake gets a new
		// certificate, still valid against the root.
		later := start.Add(5 * 24 * time.Hour)
		now.Store(&later)
		c, err := dial(addr, &tls.Config{ServerName: "web.localhost", RootCAs: roots, Time: func() time.Time { return later }})
		if err != nil {
			t.Fatal(err)
		}
		leaf := c.ConnectionState().PeerCertificates[0]
		c.Close()
		if leaf.SerialNumber.String() == serials["web.localhost"] {
			t.Fatal("not renewed after two thirds of its lifetime")
		}
		if !leaf.NotBefore.Before(later) || leaf.NotAfter.Before(later.Add(6*24*time.Hour)) {
			t.Errorf("renewed leaf valid %v to %v, want from %v for 7 days", leaf.NotBefore, leaf.NotAfter, later)
		}
		// A host the catalog forgot gets no renewal.
		allow.set("api.example.com", false)
		if leaf, err := servedCert(t, addr, "api.example.com"); err != nil {
			t.Errorf("a host Allow now refuses: %v, want the default certificate", err)
		} else if leaf.VerifyHostname("api.example.com") == nil {
			t.Errorf("a host Allow now refuses got a certificate for %v", leaf.DNSNames)
		}
	})

	// A second node process on the same data directory uses the same CA.
	p2 := startPublic(t, &PublicCerts{DataDir: dataDir, Allow: allow.allow})
	if !p2.internal.root.Equal(p.internal.root) {
		t.Error("restart created a new internal CA")
	}
}

// TestPublicInternalConcurrent: many simultaneous first handshakes for one
// host share one issuance.
func TestPublicInternalConcurrent(t *testing.T) {
	allow := newAllowList("web.localhost")
	p := startPublic(t, &PublicCerts{DataDir: t.TempDir(), Allow: allow.allow})
	var wg sync.WaitGroup
	certs := make([]*tls.Certificate, 20)
	errs := make([]error, len(certs))
	for i := range certs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			certs[i], errs[i] = p.internal.get(context.Background(), "web.localhost")
		}()
	}
	wg.Wait()
	for i := range certs {
		if errs[i] != nil || certs[i] != certs[0] {
			t.Fatalf("handshake %d: %v, same certificate %v", i, errs[i], certs[i] == certs[0])
		}
	}
	if n := allow.callsFor("web.localhost"); n != 1 {
		t.Errorf("Allow called %d times, want 1", n)
	}
}

func TestInternalRootErrors(t *testing.T) {
	if _, err := InternalRoot(t.TempDir()); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("InternalRoot of an empty dir: %v, want fs.ErrNotExist", err)
	}
	if _, err := InternalRoot(""); err == nil {
		t.Error("InternalRoot(\"\") succeeded")
	}
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, InternalCADir), 0o700)
	os.WriteFile(filepath.Join(dir, InternalCADir, InternalRootFile), []byte("not pem"), 0o644)
	if _, err := InternalRoot(dir); err == nil {
		t.Error("InternalRoot accepted a file that is not a certificate")
	}
	// A CA directory whose key does not match refuses to start.
	good := t.TempDir()
	startPublic(t, &PublicCerts{DataDir: good, Allow: allowAll})
	other := t.TempDir()
	startPublic(t, &PublicCerts{DataDir: other, Allow: allowAll})
	key, _ := os.ReadFile(filepath.Join(other, InternalCADir, InternalRootKey))
	os.WriteFile(filepath.Join(good, InternalCADir, InternalRootKey), key, 0o600)
	p := &PublicCerts{DataDir: good, Allow: allowAll, Logger: discardLogger()}
	if err := p.Start(context.Background()); err == nil {
		p.Close()
		t.Error("Start accepted a root key that does not match the root")
	}
}
