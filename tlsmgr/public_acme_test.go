package tlsmgr

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshd/meshd/tlsmgr/pebbletest"
)

// acmeEdge is one PublicCerts in SourceACME with its public listeners: a TLS
// echo listener and an HTTP listener wrapped by HTTPChallenge.
type acmeEdge struct {
	p       *PublicCerts
	tlsAddr string
	logs    *logBuffer
	allow   *allowList
}

func startACMEEdge(t *testing.T, pb *pebbletest.Pebble, tlsLn, httpLn net.Listener, allowed ...string) *acmeEdge {
	t.Helper()
	e := &acmeEdge{logs: &logBuffer{}, allow: newAllowList(allowed...)}
	e.p = &PublicCerts{
		Source:     SourceACME,
		DataDir:    t.TempDir(),
		Allow:      e.allow.allow,
		ACMECA:     pb.DirURL,
		ACMECARoot: pb.CARoot,
		ACMEEmail:  "ops@meshd.test",
		Logger:     slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if tlsLn != nil {
		e.p.ACMETLSAddr = tlsLn.Addr().String()
	} else {
		tlsLn, _ = net.Listen("tcp", "127.0.0.1:0")
	}
	if httpLn != nil {
		e.p.ACMEHTTPAddr = httpLn.Addr().String()
	}
	startPublic(t, e.p)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("edge log:\n%s", e.logs.String())
		}
	})
	e.tlsAddr = serveTLSOn(t, tls.NewListener(tlsLn, e.p.TLSConfig()))
	if httpLn != nil {
		srv := &http.Server{Handler: e.p.HTTPChallenge(http.NotFoundHandler()), ReadHeaderTimeout: 5 * time.Second}
		go srv.Serve(httpLn)
		t.Cleanup(func() { srv.Close() })
	}
	return e
}

// TestPublicACMEPebble obtains certificates from Pebble on loopback, once
// through TLS-ALPN-01 only and once through HTTP-01 only, with real
// validation, and checks that a name Allow refuses never reaches the CA.
func TestPublicACMEPebble(t *testing.T) {
	tlsLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	httpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pb := pebbletest.Start(t, httpLn.Addr().(*net.TCPAddr).Port, tlsLn.Addr().(*net.TCPAddr).Port)
	roots := pb.Roots()

	// Edge A answers on Pebble's TLS port only: TLS-ALPN-01. Edge B answers
	// on Pebble's HTTP port only: HTTP-01; its own TLS listener is anywhere.
	edgeA := startACMEEdge(t, pb, tlsLn, nil, "web.localhost")
	edgeB := startACMEEdge(t, pb, nil, httpLn, "api.localhost")

	for _, tt := range []struct {
		edge      *acmeEdge
		host      string
		challenge string // what the edge's log must show it answered
	}{
		{edgeA, "web.localhost", `challenge=tls-alpn-01`},
		{edgeB, "api.localhost", `challenge=http-01`},
	} {
		t.Run(tt.host, func(t *testing.T) {
			c, err := dial(tt.edge.tlsAddr, &tls.Config{ServerName: tt.host, RootCAs: roots})
			if err != nil {
				t.Fatalf("handshake (certificate from pebble verified against pebble's root): %v", err)
			}
			leaf := c.ConnectionState().PeerCertificates[0]
			if err := echo(c, "hello\n"); err != nil {
				t.Fatal(err)
			}
			c.Close()
			if err := leaf.VerifyHostname(tt.host); err != nil {
				t.Fatal(err)
			}
			if tt.edge.logs.count(tt.challenge) == 0 {
				t.Errorf("edge log shows no %s answered", tt.challenge)
			}
			// The second handshake is served from the cache: same leaf, no
			// new order, Allow not asked again.
			calls := tt.edge.allow.callsFor(tt.host)
			leaf2, err := servedCert(t, tt.edge.tlsAddr, tt.host)
			if err != nil || !leaf2.Equal(leaf) {
				t.Fatalf("second handshake: %v, same certificate %v", err, err == nil && leaf2.Equal(leaf))
			}
			if n := tt.edge.allow.callsFor(tt.host); n != calls {
				t.Errorf("Allow asked again for a cached certificate (%d -> %d)", calls, n)
			}
		})
	}
	orders := pb.LogCount("orders in the db")

	t.Run("refused names never reach the CA", func(t *testing.T) {
		for _, host := range []string{"evil.localhost", "api.localhost"} { // api.localhost is edge B's, not A's
			if _, err := dial(edgeA.tlsAddr, &tls.Config{ServerName: host, RootCAs: roots}); err == nil {
				t.Errorf("handshake for %s on edge A succeeded", host)
			}
			if edgeA.allow.callsFor(host) == 0 {
				t.Errorf("Allow was not asked about %s", host)
			}
		}
		if n := pb.LogCount("evil.localhost"); n != 0 {
			t.Errorf("pebble log mentions evil.localhost %d times", n)
		}
		if n := pb.LogCount("orders in the db"); n != orders {
			t.Errorf("pebble logged new orders after refused handshakes (%d -> %d)", orders, n)
		}
		for _, name := range pb.DNSQueries() {
			if strings.Contains(name, "evil") {
				t.Errorf("pebble resolved %s: a validation was attempted", name)
			}
		}
		if _, err := os.Stat(filepath.Join(edgeA.p.DataDir, ACMEStorageDir)); err != nil {
			t.Fatal(err)
		}
		found := false
		filepath.WalkDir(edgeA.p.DataDir, func(p string, _ os.DirEntry, _ error) error {
			found = found || strings.Contains(p, "evil")
			return nil
		})
		if found {
			t.Error("storage holds something for evil.localhost")
		}
	})
}

// serveTLSOn runs serveTLS's echo server on an existing TLS listener.
func serveTLSOn(t *testing.T, ln net.Listener) string {
	t.Helper()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(60 * time.Second))
				if err := c.(*tls.Conn).HandshakeContext(context.Background()); err != nil {
					return
				}
				io.Copy(c, c)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().String()
}
