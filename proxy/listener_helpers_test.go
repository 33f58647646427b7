package proxy

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"
)

// testCertNames are the names the self-signed test certificate covers.
var testCertNames = []string{"localhost", "example.test", "other.test"}

var (
	testCertOnce sync.Once
	testCert     tls.Certificate
	testRoots    *x509.CertPool
)

// selfSigned returns a server TLS configuration with a self-signed
// certificate for testCertNames and 127.0.0.1 (what tlsmgr would hand a
// public listener, minus the CA), and a pool that trusts it.
func selfSigned(t testing.TB) (*tls.Config, *x509.CertPool) {
	t.Helper()
	testCertOnce.Do(func() {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			panic(err)
		}
		tmpl := &x509.Certificate{
			SerialNumber:          big.NewInt(1),
			Subject:               pkix.Name{CommonName: "meshd proxy test"},
			NotBefore:             time.Now().Add(-time.Hour),
			NotAfter:              time.Now().Add(24 * time.Hour),
			KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
			ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			BasicConstraintsValid: true,
			IsCA:                  true,
			DNSNames:              testCertNames,
			IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			panic(err)
		}
		leaf, err := x509.ParseCertificate(der)
		if err != nil {
			panic(err)
		}
		testCert = tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
		testRoots = x509.NewCertPool()
		testRoots.AddCert(leaf)
	})
	// tlsmgr hands out GetCertificate and ALPN h2/http1.1; so does this.
	cert := testCert
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		NextProtos:     []string{"h2", "http/1.1"},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &cert, nil },
	}, testRoots
}

// startWith starts s (Addr, Logger filled in when empty) and shuts it down
// at the end of the test.
func startWith(t testing.TB, s *Server) *Server {
	t.Helper()
	if s.Addr == "" {
		s.Addr = "127.0.0.1:0"
	}
	if s.Logger == nil {
		s.Logger = testLogger()
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatalf("start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.Shutdown(ctx)
	})
	return s
}

// okHandler answers 200 "ok" after reading the whole body, and reports the
// body's length in X-Body-Len.
func okHandler(w http.ResponseWriter, r *http.Request) {
	n, err := io.Copy(io.Discard, r.Body)
	if err != nil {
		http.Error(w, "read body: "+err.Error(), http.StatusBadGateway)
		return
	}
	w.Header().Set("X-Body-Len", strconv.FormatInt(n, 10))
	_, _ = io.WriteString(w, "ok")
}

// tlsClient returns an HTTP client trusting roots; h2 selects HTTP/2
// (otherwise HTTP/1.1 only).
func tlsClient(t testing.TB, roots *x509.CertPool, h2 bool) *http.Client {
	t.Helper()
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: "example.test"}}
	var p http.Protocols
	p.SetHTTP1(!h2)
	p.SetHTTP2(h2)
	tr.Protocols = &p
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// getStatus sends GET url with c and returns the status, or an error.
func getStatus(c *http.Client, url string) (int, error) {
	resp, err := c.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, nil
}

// normalTraffic runs GET requests against url with c until stop is closed
// (and at most for limit), and reports how many got 200 and the first
// failure. It shows that a listener keeps serving others during an abuse.
type normalTraffic struct {
	ok   int
	fail error
	done chan struct{}
}

func runNormalTraffic(c *http.Client, url string, stop <-chan struct{}, limit time.Duration) *normalTraffic {
	nt := &normalTraffic{done: make(chan struct{})}
	go func() {
		defer close(nt.done)
		deadline := time.Now().Add(limit)
		for i := 0; i < 100000 && time.Now().Before(deadline); i++ {
			select {
			case <-stop:
				return
			default:
			}
			code, err := getStatus(c, url)
			if err == nil && code != http.StatusOK {
				err = &StatusError{Code: code, Msg: "normal client got " + strconv.Itoa(code)}
			}
			if err != nil {
				nt.fail = err
				return
			}
			nt.ok++
			time.Sleep(10 * time.Millisecond)
		}
	}()
	return nt
}

// check waits for the traffic to stop and fails t if a request failed or
// none succeeded.
func (nt *normalTraffic) check(t testing.TB) {
	t.Helper()
	<-nt.done
	if nt.fail != nil {
		t.Errorf("normal client failed during the abuse after %d good requests: %v", nt.ok, nt.fail)
	}
	if nt.ok == 0 {
		t.Error("normal client got no response during the abuse")
	}
}
