package tlsmgr

import (
	"crypto/tls"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"
)

// ocspResponder answers OCSP requests for pki's leaves: revoked serials get
// "revoked", others "good". Until open is closed, it holds every request.
type ocspResponder struct {
	pki     *testPKI
	open    chan struct{}
	mu      sync.Mutex
	revoked map[string]bool
	asked   int
}

func (o *ocspResponder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	select {
	case <-o.open:
	case <-r.Context().Done():
		return
	}
	body, _ := io.ReadAll(r.Body)
	req, err := ocsp.ParseRequest(body)
	if err != nil || r.Header.Get("Content-Type") != "application/ocsp-request" {
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	o.mu.Lock()
	o.asked++
	status := ocsp.Good
	if o.revoked[req.SerialNumber.String()] {
		status = ocsp.Revoked
	}
	o.mu.Unlock()
	now := time.Now()
	resp, err := ocsp.CreateResponse(o.pki.cert, o.pki.cert, ocsp.Response{
		Status: status, SerialNumber: req.SerialNumber, ThisUpdate: now.Add(-time.Minute),
		NextUpdate: now.Add(time.Hour), RevokedAt: now.Add(-time.Hour),
	}, o.pki.key)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/ocsp-response")
	w.Write(resp)
}

func (o *ocspResponder) requests() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.asked
}

// TestPublicFilesOCSP: a pair whose leaf names a responder gets a staple in
// the background; a slow responder never delays a handshake; a reload keeps
// the staple; a "revoked" answer is never stapled.
func TestPublicFilesOCSP(t *testing.T) {
	pki := newTestPKI(t, "ocsp CA")
	resp := &ocspResponder{pki: pki, open: make(chan struct{}), revoked: map[string]bool{}}
	srv := httptest.NewServer(resp)
	t.Cleanup(srv.Close)
	t.Cleanup(func() {
		select {
		case <-resp.open:
		default:
			close(resp.open)
		}
	})
	dir := t.TempDir()
	good, goodSerial := pki.writePair(t, dir, "good", leafOpts{names: []string{"good.example"}, ocspURL: srv.URL})
	bad, badSerial := pki.writePair(t, dir, "bad", leafOpts{names: []string{"bad.example"}, ocspURL: srv.URL})
	resp.revoked[badSerial.String()] = true
	plain, _ := pki.writePair(t, dir, "plain", leafOpts{names: []string{"plain.example"}})
	logs := &logBuffer{}
	p := startPublic(t, &PublicCerts{Source: SourceFiles, Files: []CertFiles{good, bad, plain}, PollInterval: 10 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(logs, nil))})
	addr := serveTLS(t, p.TLSConfig())

	staple := func(sni string) []byte {
		t.Helper()
		began := time.Now()
		c, err := dial(addr, &tls.Config{ServerName: sni, RootCAs: pki.pool})
		if err != nil {
			t.Fatalf("handshake %s: %v", sni, err)
		}
		defer c.Close()
		if d := time.Since(began); d > 2*time.Second {
			t.Errorf("handshake for %s took %v", sni, d)
		}
		return c.ConnectionState().OCSPResponse
	}

	// The responder holds every request: handshakes go on without staples.
	if s := staple("good.example"); s != nil {
		t.Fatal("staple before the responder answered")
	}
	close(resp.open)
	waitFor(t, 5*time.Second, "a staple for good.example", func() bool { return staple("good.example") != nil })
	r, err := ocsp.ParseResponseForCert(staple("good.example"), p.files.Load().pick("good.example").Leaf, pki.cert)
	if err != nil || r.Status != ocsp.Good || r.SerialNumber.Cmp(goodSerial) != 0 {
		t.Fatalf("staple: %v, status %v, serial %v; want good for %v", err, r.Status, r.SerialNumber, goodSerial)
	}
	waitFor(t, 5*time.Second, "the revoked answer to be logged", func() bool { return logs.count("REVOKED") > 0 })
	if s := staple("bad.example"); s != nil {
		t.Error("a revoked certificate got a staple")
	}
	if s := staple("plain.example"); s != nil {
		t.Error("a certificate without responder got a staple")
	}

	// Rewriting the same pair and reloading keeps the staple at once, and
	// asks the responder nothing new before the staple is due.
	asked := resp.requests()
	data, _ := os.ReadFile(good.Cert)
	writeAtomic(good.Cert, data, 0o644)
	if err := p.Reload(); err != nil {
		t.Fatal(err)
	}
	if s := staple("good.example"); s == nil {
		t.Error("reload dropped the staple")
	}
	if n := resp.requests(); n != asked {
		t.Errorf("reload asked the responder again (%d -> %d requests)", asked, n)
	}
}
