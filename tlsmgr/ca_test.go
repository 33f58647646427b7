package tlsmgr

import (
	"bytes"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

func TestInitCAWritesFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "nested", "ca")
	before := time.Now()
	if err := InitCA(dir, testTD); err != nil {
		t.Fatalf("InitCA: %v", err)
	}
	checkMode := func(p string, want fs.FileMode) {
		t.Helper()
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("%s: mode %v, want %v", p, got, want)
		}
	}
	checkMode(dir, 0o700)
	checkMode(filepath.Join(dir, CAKeyFile), 0o600)
	checkMode(filepath.Join(dir, GossipKeyFile), 0o600)
	// The root certificate is public; it only must not be writable by others.
	if fi, err := os.Stat(filepath.Join(dir, CACertFile)); err != nil || fi.Mode().Perm()&0o022 != 0 {
		t.Errorf("ca.crt: %v, mode %v", err, fi.Mode())
	}

	keyPEM, _ := os.ReadFile(filepath.Join(dir, CAKeyFile))
	if b, _ := pem.Decode(keyPEM); b == nil || b.Type != "PRIVATE KEY" {
		t.Errorf("ca.key is not a PKCS#8 PEM block: %q", keyPEM)
	} else if _, err := x509.ParsePKCS8PrivateKey(b.Bytes); err != nil {
		t.Errorf("ca.key: %v", err)
	}

	line, _ := os.ReadFile(filepath.Join(dir, GossipKeyFile))
	if bytes.Count(line, []byte("\n")) != 1 || !bytes.HasSuffix(line, []byte("\n")) {
		t.Errorf("gossip.key is not one line: %q", line)
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(line)))
	if err != nil || len(raw) != 32 {
		t.Errorf("gossip.key: %d bytes, err %v; want 32 bytes of std base64", len(raw), err)
	}
	key, err := ReadGossipKey(dir)
	if err != nil || !bytes.Equal(key, raw) {
		t.Errorf("ReadGossipKey = %x, %v; want %x", key, err, raw)
	}

	ca, err := LoadCA(dir)
	if err != nil {
		t.Fatalf("LoadCA: %v", err)
	}
	if ca.TrustDomain != testTD || ca.Key == nil {
		t.Errorf("LoadCA: td %q key %v", ca.TrustDomain, ca.Key)
	}
	c := ca.Cert
	if !c.IsCA || len(c.URIs) != 1 || c.URIs[0].String() != "spiffe://"+testTD {
		t.Errorf("root: IsCA %v URIs %v", c.IsCA, c.URIs)
	}
	if c.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Errorf("root lacks keyCertSign: %v", c.KeyUsage)
	}
	if err := c.CheckSignatureFrom(c); err != nil {
		t.Errorf("root is not self-signed: %v", err)
	}
	tenYears := before.AddDate(10, 0, 0).Add(-time.Second)
	if c.NotAfter.Before(tenYears) || c.NotAfter.After(before.AddDate(10, 0, 1)) {
		t.Errorf("root NotAfter %v, want about 10 years from %v", c.NotAfter, before)
	}
}

func TestInitCARefusesToOverwrite(t *testing.T) {
	for _, existing := range []string{CACertFile, CAKeyFile, GossipKeyFile} {
		t.Run(existing, func(t *testing.T) {
			dir := t.TempDir()
			orig := []byte("precious\n")
			if err := os.WriteFile(filepath.Join(dir, existing), orig, 0o600); err != nil {
				t.Fatal(err)
			}
			err := InitCA(dir, testTD)
			if !errors.Is(err, fs.ErrExist) {
				t.Fatalf("InitCA over %s: err %v, want fs.ErrExist", existing, err)
			}
			if !strings.Contains(err.Error(), existing) {
				t.Errorf("error %q does not name %s", err, existing)
			}
			entries, _ := os.ReadDir(dir)
			if len(entries) != 1 {
				t.Errorf("InitCA wrote files despite refusing: %v", entries)
			}
			if got, _ := os.ReadFile(filepath.Join(dir, existing)); !bytes.Equal(got, orig) {
				t.Errorf("%s changed: %q", existing, got)
			}
		})
	}

	t.Run("second init", func(t *testing.T) {
		dir := newCADir(t, testTD)
		snap := map[string][]byte{}
		for _, n := range []string{CACertFile, CAKeyFile, GossipKeyFile} {
			snap[n], _ = os.ReadFile(filepath.Join(dir, n))
		}
		err := InitCA(dir, testTD)
		if !errors.Is(err, fs.ErrExist) {
			t.Fatalf("second InitCA: %v, want fs.ErrExist", err)
		}
		for n, want := range snap {
			if got, _ := os.ReadFile(filepath.Join(dir, n)); !bytes.Equal(got, want) {
				t.Errorf("%s changed by second InitCA", n)
			}
		}
	})
}

func TestInitCABadTrustDomain(t *testing.T) {
	for _, td := range []string{"", "UPPER.case", "spiffe://mesh.test/path", "has space", "a/b"} {
		dir := filepath.Join(t.TempDir(), "ca")
		if err := InitCA(dir, td); err == nil {
			t.Errorf("InitCA(%q) succeeded", td)
		}
		if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("InitCA(%q) created %s despite failing", td, dir)
		}
	}
	// The ID form of a trust domain is accepted and means the same.
	dir := newCADir(t, "spiffe://"+testTD)
	if ca, err := LoadCA(dir); err != nil || ca.TrustDomain != testTD {
		t.Errorf("LoadCA after InitCA(spiffe://...): %v %v", ca, err)
	}
}

func TestLoadCAErrors(t *testing.T) {
	good := newCADir(t, testTD)
	other := newCADir(t, testTD)
	foreign := newCADir(t, "other.test")
	read := func(dir, name string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	ca, err := LoadCA(good)
	if err != nil {
		t.Fatal(err)
	}
	leafPEM, leafKey, err := ca.Issue("spiffe://"+testTD+"/service/web", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name     string
		cert     []byte // nil: no file
		key      []byte // nil: no file
		wantFile string
		wantMsg  string
	}{
		{"missing cert", nil, read(good, CAKeyFile), CACertFile, "no such file"},
		{"garbage cert", []byte("not pem"), nil, CACertFile, "no PEM block"},
		{"key in cert file", read(good, CAKeyFile), nil, CACertFile, "want CERTIFICATE"},
		{"two trust domains", append(read(good, CACertFile), read(foreign, CACertFile)...), nil, CACertFile, "PEM block 2: trust domain \"other.test\""},
		{"same root twice", append(read(good, CACertFile), read(good, CACertFile)...), nil, CACertFile, "PEM block 2: the same certificate as block 1"},
		{"leaf in bundle", append(read(good, CACertFile), leafPEM...), nil, CACertFile, "PEM block 2: certificate is not a CA"},
		{"junk after bundle", append(read(good, CACertFile), "junk"...), nil, CACertFile, "after PEM block 1: 4 bytes that are not PEM"},
		{"key of neither root", append(read(good, CACertFile), read(other, CACertFile)...), read(newCADir(t, testTD), CAKeyFile), CAKeyFile, "does not match any of the 2 certificates"},
		{"leaf as ca", leafPEM, nil, CACertFile, "not a CA"},
		{"corrupt der", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1, 2, 3}}), nil, CACertFile, "parse certificate"},
		{"garbage key", read(good, CACertFile), []byte("junk"), CAKeyFile, "no PEM block"},
		{"key of another ca", read(good, CACertFile), read(other, CAKeyFile), CAKeyFile, "does not match"},
		{"cert in key file", read(good, CACertFile), read(good, CACertFile), CAKeyFile, "want PRIVATE KEY"},
		{"leaf key", read(good, CACertFile), leafKey, CAKeyFile, "does not match"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if tt.cert != nil {
				os.WriteFile(filepath.Join(dir, CACertFile), tt.cert, 0o644)
			}
			if tt.key != nil {
				os.WriteFile(filepath.Join(dir, CAKeyFile), tt.key, 0o600)
			}
			ca, err := LoadCA(dir)
			if err == nil {
				t.Fatalf("LoadCA succeeded: %+v", ca)
			}
			if !strings.Contains(err.Error(), filepath.Join(dir, tt.wantFile)) {
				t.Errorf("error %q does not name %s", err, tt.wantFile)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("error %q does not say %q", err, tt.wantMsg)
			}
		})
	}

	t.Run("no key is fine", func(t *testing.T) {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, CACertFile), read(good, CACertFile), 0o644)
		ca, err := LoadCA(dir)
		if err != nil || ca.Key != nil || ca.TrustDomain != testTD {
			t.Fatalf("LoadCA = %+v, %v; want cert only", ca, err)
		}
		if _, _, err := ca.Issue("spiffe://"+testTD+"/service/web", time.Hour, time.Now()); err == nil {
			t.Error("Issue without a key succeeded")
		}
	})
}

func TestReadGossipKey(t *testing.T) {
	enc := func(n int) string { return base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, n)) }
	tests := []struct {
		name    string
		content string
		wantLen int
		wantErr string
	}{
		{"16 bytes", enc(16), 16, ""},
		{"24 bytes", enc(24), 24, ""},
		{"32 bytes with newline", enc(32) + "\n", 32, ""},
		{"surrounding space", "  " + enc(32) + " \r\n", 32, ""},
		{"empty", "", 0, "empty"},
		{"only newline", "\n", 0, "empty"},
		{"not base64", "this-is-not-base64!!", 0, "not standard base64"},
		{"url base64", strings.Repeat("-_", 22), 0, "not standard base64"},
		{"31 bytes", enc(31), 0, "31 bytes"},
		{"64 bytes", enc(64), 0, "64 bytes"},
		{"two keys", enc(32) + "\n" + enc(32) + "\n", 0, "one line"},
		{"wrapped key", enc(32)[:20] + "\n" + enc(32)[20:], 0, "one line"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			os.WriteFile(filepath.Join(dir, GossipKeyFile), []byte(tt.content), 0o600)
			key, err := ReadGossipKey(dir)
			if tt.wantErr == "" {
				if err != nil || len(key) != tt.wantLen {
					t.Fatalf("ReadGossipKey = %d bytes, %v; want %d bytes", len(key), err, tt.wantLen)
				}
				return
			}
			if err == nil {
				t.Fatalf("ReadGossipKey accepted %q", tt.content)
			}
			if !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), GossipKeyFile) {
				t.Errorf("error %q: want it to name %s and say %q", err, GossipKeyFile, tt.wantErr)
			}
		})
	}
	t.Run("missing", func(t *testing.T) {
		_, err := ReadGossipKey(t.TempDir())
		if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), GossipKeyFile) {
			t.Errorf("err %v: want fs.ErrNotExist naming %s", err, GossipKeyFile)
		}
	})
}

func FuzzReadGossipKey(f *testing.F) {
	f.Add([]byte(base64.StdEncoding.EncodeToString(make([]byte, 32)) + "\n"))
	f.Add([]byte(base64.StdEncoding.EncodeToString(make([]byte, 16))))
	f.Add([]byte(""))
	f.Add([]byte("===="))
	f.Add([]byte("AAAA\nAAAA"))
	f.Add([]byte{0xff, 0x00, '\n'})
	f.Fuzz(func(t *testing.T, data []byte) {
		key, err := parseGossipKey(data)
		if err != nil {
			if key != nil {
				t.Fatalf("error %v with a key", err)
			}
			return
		}
		if n := len(key); n != 16 && n != 24 && n != 32 {
			t.Fatalf("accepted a %d-byte key", n)
		}
		// An accepted key is exactly what the file says, once re-encoded.
		if got := base64.StdEncoding.EncodeToString(key); got != string(bytes.TrimSpace(data)) {
			t.Fatalf("key re-encodes to %q, file holds %q", got, data)
		}
	})
}

func FuzzParseCAFiles(f *testing.F) {
	dir := filepath.Join(f.TempDir(), "ca")
	if err := InitCA(dir, testTD); err != nil {
		f.Fatal(err)
	}
	certPEM, _ := os.ReadFile(filepath.Join(dir, CACertFile))
	keyPEM, _ := os.ReadFile(filepath.Join(dir, CAKeyFile))
	f.Add(certPEM)
	f.Add(keyPEM)
	f.Add(append(append([]byte{}, certPEM...), keyPEM...))
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))
	f.Add([]byte("-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		if roots, td, err := parseBundle(data); err == nil {
			if len(roots) == 0 || td.IsZero() {
				t.Fatalf("accepted an empty bundle or one without a trust domain")
			}
			for _, c := range roots {
				if !c.IsCA {
					t.Fatalf("accepted a certificate that is not a CA")
				}
			}
		}
		if key, err := parsePrivateKey(data); err == nil && key == nil {
			t.Fatal("nil key without error")
		}
	})
}

func TestIssue(t *testing.T) {
	ca, err := LoadCA(newCADir(t, testTD))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().Truncate(time.Second) // X.509 times have 1 s resolution
	id := "spiffe://" + testTD + "/gateway/eu-west/gw-1"
	certPEM, keyPEM, err := ca.Issue(id, 90*time.Minute, now)
	if err != nil {
		t.Fatalf("Issue: %v", err)
	}
	svid, err := x509svid.Parse(certPEM, keyPEM)
	if err != nil {
		t.Fatalf("go-spiffe rejects the SVID: %v", err)
	}
	if svid.ID.String() != id {
		t.Errorf("ID %s, want %s", svid.ID, id)
	}
	if len(svid.Certificates) != 1 {
		t.Fatalf("chain has %d certificates, want the leaf only", len(svid.Certificates))
	}
	leaf := svid.Certificates[0]
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id {
		t.Errorf("URI SANs %v, want exactly [%s]", leaf.URIs, id)
	}
	if len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) != 0 {
		t.Errorf("unexpected SANs: %v %v %v", leaf.DNSNames, leaf.IPAddresses, leaf.EmailAddresses)
	}
	if leaf.KeyUsage != x509.KeyUsageDigitalSignature {
		t.Errorf("KeyUsage %v, want digitalSignature only", leaf.KeyUsage)
	}
	if !slices.Equal(leaf.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}) {
		t.Errorf("ExtKeyUsage %v, want serverAuth+clientAuth", leaf.ExtKeyUsage)
	}
	if leaf.IsCA || !leaf.BasicConstraintsValid {
		t.Errorf("IsCA %v BasicConstraintsValid %v, want a non-CA with basic constraints", leaf.IsCA, leaf.BasicConstraintsValid)
	}
	if !leaf.NotBefore.Equal(now.Add(-time.Minute)) || !leaf.NotAfter.Equal(now.Add(90*time.Minute)) {
		t.Errorf("validity %v..%v, want %v..%v", leaf.NotBefore, leaf.NotAfter, now.Add(-time.Minute), now.Add(90*time.Minute))
	}
	bundle := x509bundle.FromX509Authorities(spiffeid.RequireTrustDomainFromString(testTD), []*x509.Certificate{ca.Cert})
	if _, _, err := x509svid.Verify(svid.Certificates, bundle, x509svid.WithTime(now)); err != nil {
		t.Errorf("SVID does not verify against the CA: %v", err)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, bundle, x509svid.WithTime(now.Add(91*time.Minute))); err == nil {
		t.Error("SVID verifies after its TTL")
	}

	// X.509 stores whole seconds: the expiry is rounded up, never down, so
	// a short-lived SVID lives at least its TTL.
	c3, k3, err := ca.Issue(id, time.Second, now.Add(300*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	svid3, _ := x509svid.Parse(c3, k3)
	if got := svid3.Certificates[0].NotAfter; !got.Equal(now.Add(2 * time.Second)) {
		t.Errorf("1s SVID minted at +300ms: NotAfter %v, want %v", got, now.Add(2*time.Second))
	}

	// Two SVIDs never share a serial or a key.
	cert2, key2, err := ca.Issue(id, time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	svid2, _ := x509svid.Parse(cert2, key2)
	if svid2.Certificates[0].SerialNumber.Cmp(leaf.SerialNumber) == 0 || bytes.Equal(key2, keyPEM) {
		t.Error("second SVID reuses serial or key")
	}
}

func TestIssueCapsAtCAExpiry(t *testing.T) {
	ca, err := LoadCA(newCADir(t, testTD))
	if err != nil {
		t.Fatal(err)
	}
	now := ca.Cert.NotAfter.Add(-time.Hour)
	certPEM, keyPEM, err := ca.Issue("spiffe://"+testTD+"/service/web", 24*time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	svid, _ := x509svid.Parse(certPEM, keyPEM)
	if got := svid.Certificates[0].NotAfter; !got.Equal(ca.Cert.NotAfter) {
		t.Errorf("NotAfter %v, want the CA's %v", got, ca.Cert.NotAfter)
	}
}

func TestIssueRefuses(t *testing.T) {
	dir := newCADir(t, testTD)
	ca, err := LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tests := []struct {
		name, id string
		ttl      time.Duration
		now      time.Time
		want     string
	}{
		{"other trust domain", "spiffe://other.test/service/web", time.Hour, now, "wrong trust domain"},
		{"root id", "spiffe://" + testTD, time.Hour, now, "non-root path"},
		{"not a spiffe id", "https://" + testTD + "/service/web", time.Hour, now, "invalid spiffe id"},
		{"empty id", "", time.Hour, now, "invalid spiffe id"},
		{"zero ttl", "spiffe://" + testTD + "/service/web", 0, now, "must be positive"},
		{"negative ttl", "spiffe://" + testTD + "/service/web", -time.Second, now, "must be positive"},
		{"ca expired", "spiffe://" + testTD + "/service/web", time.Hour, ca.Cert.NotAfter.Add(time.Second), "not valid"},
		{"before ca", "spiffe://" + testTD + "/service/web", time.Hour, ca.Cert.NotBefore.Add(-time.Second), "not valid"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, k, err := ca.Issue(tt.id, tt.ttl, tt.now)
			if err == nil || c != nil || k != nil {
				t.Fatalf("Issue(%q) = %d bytes, %v; want an error", tt.id, len(c), err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not say %q", err, tt.want)
			}
		})
	}
}

func TestIDs(t *testing.T) {
	tests := []struct {
		name    string
		got     func() (string, error)
		want    string
		wantErr string
	}{
		{"edge", func() (string, error) { return EdgeID(testTD, "edge-1") }, "spiffe://mesh.test/edge/edge-1", ""},
		{"gateway", func() (string, error) { return GatewayID(testTD, "eu-west", "gw_1.a") }, "spiffe://mesh.test/gateway/eu-west/gw_1.a", ""},
		{"service", func() (string, error) { return ServiceID(testTD, "web") }, "spiffe://mesh.test/service/web", ""},
		{"td as id", func() (string, error) { return ServiceID("spiffe://mesh.test", "web") }, "spiffe://mesh.test/service/web", ""},
		{"empty node", func() (string, error) { return EdgeID(testTD, "") }, "", "invalid node"},
		{"upper case", func() (string, error) { return ServiceID(testTD, "Web") }, "", "invalid service"},
		{"slash", func() (string, error) { return ServiceID(testTD, "a/b") }, "", "invalid service"},
		{"dot", func() (string, error) { return GatewayID(testTD, ".", "n") }, "", "invalid region"},
		{"dotdot", func() (string, error) { return GatewayID(testTD, "r", "..") }, "", "invalid node"},
		{"space", func() (string, error) { return EdgeID(testTD, "a b") }, "", "invalid node"},
		{"unicode", func() (string, error) { return EdgeID(testTD, "é") }, "", "invalid node"},
		{"bad td", func() (string, error) { return ServiceID("Mesh", "web") }, "", "invalid trust domain"},
		{"empty td", func() (string, error) { return ServiceID("", "web") }, "", "invalid trust domain"},
		{"td with path", func() (string, error) { return ServiceID("spiffe://mesh.test/x", "web") }, "", "invalid trust domain"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.got()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("= %q, %v; want error %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("= %q, %v; want %q", got, err, tt.want)
			}
			if _, err := spiffeid.FromString(got); err != nil {
				t.Errorf("go-spiffe rejects %q: %v", got, err)
			}
		})
	}
}
