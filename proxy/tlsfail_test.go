package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net/http"
	"testing"
	"time"
)

// TestTLSFailureClassified: an upstream whose certificate the mesh does
// not accept (another CA, the wrong identity: what a node with the gossip
// key but no valid certificate presents) fails the handshake, is answered
// as RFC 9209's tls_certificate_error, counts as unreachable and is
// ejected; one that does not speak TLS at all is a tls_protocol_error.
func TestTLSFailureClassified(t *testing.T) {
	_, trusted, _ := tlsUpstream(t, http.HandlerFunc(echoHandler))
	otherCA := func() *tls.Config {
		_, roots := selfSigned(t) // another CA than the upstream's
		return &tls.Config{RootCAs: roots}
	}
	// meshd's configurations verify the SPIFFE ID in a callback (as
	// go-spiffe's do), whose error is not one of crypto/tls's own.
	callback := &tls.Config{InsecureSkipVerify: true, VerifyPeerCertificate: func([][]byte, [][]*x509.Certificate) error {
		return errors.New("x509svid: could not verify leaf certificate: unexpected ID")
	}}
	_, plain := plainUpstream(t, http.HandlerFunc(echoHandler))
	for _, tt := range []struct {
		name string
		up   *Upstream
		want string
	}{
		{"certificate from another CA", &Upstream{Key: trusted.Addr + "|other", Addr: trusted.Addr, TLS: otherCA(), Name: "bad"}, "tls_certificate_error"},
		{"identity refused by the verification callback", &Upstream{Key: trusted.Addr + "|cb", Addr: trusted.Addr, TLS: callback, Name: "bad"}, "tls_certificate_error"},
		{"no TLS at all", &Upstream{Key: plain.Addr + "|tls", Addr: plain.Addr, TLS: &tls.Config{InsecureSkipVerify: true}, Name: "bad"}, "tls_protocol_error"},
	} {
		addr := startProxy(t, &Handler{Route: fixedRoute(tt.up), Via: "gw", SignalRetry: true})
		for i := 0; i < EjectAfter; i++ {
			resp, _ := do(t, addr, "GET", "")
			want := `gw; error=` + tt.want + `; next-hop="bad"`
			if resp.StatusCode != 502 || resp.Header.Get("Proxy-Status") != want || resp.Header.Get(HeaderRetry) != "1" {
				t.Fatalf("%s: %d, Proxy-Status %q, %s %q; want 502, %q, signalled", tt.name, resp.StatusCode,
					resp.Header.Get("Proxy-Status"), HeaderRetry, resp.Header.Get(HeaderRetry), want)
			}
		}
		if !tt.up.Ejected(time.Now()) {
			t.Errorf("%s: not ejected after %d failed handshakes", tt.name, EjectAfter)
		}
	}
	// The same upstream with a configuration that trusts it answers.
	addr := startProxy(t, &Handler{Route: fixedRoute(trusted), Via: "gw"})
	if resp, _ := do(t, addr, "GET", ""); resp.StatusCode != 200 {
		t.Fatalf("trusted upstream: %d", resp.StatusCode)
	}
}
