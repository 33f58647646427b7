package proxy

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/tlsmgr"
)

// gtlsclientPath finds ngtcp2's GnuTLS client (Debian package ngtcp2-client):
// an HTTP/3 client that shares no code with quic-go. Without it the test
// skips, or fails in CI, where .ci/run installs it.
func gtlsclientPath(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("gtlsclient")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("gtlsclient not installed (apt-get install ngtcp2-client)")
		}
		t.Skip("gtlsclient not installed; apt-get install ngtcp2-client")
	}
	return p
}

// TestHTTP3Ngtcp2Client: ngtcp2's client gets an answer over HTTP/3 from a
// public listener whose certificates come from tlsmgr, as the edge's do.
// The client connects by IP address, so it sends "localhost" as SNI (and
// the Debian 12 build ignores --sni altogether): a name no service
// publishes, which used to fail the handshake with CRYPTO_ERROR 0x150
// (alert 80, internal_error) while quic-go's client, sending the right
// SNI, worked. Now the handshake gets the default certificate and the
// request is answered for its :authority.
func TestHTTP3Ngtcp2Client(t *testing.T) {
	bin := gtlsclientPath(t)
	pc := &tlsmgr.PublicCerts{
		DataDir: t.TempDir(),
		Allow: func(_ context.Context, host string) error {
			if host != "web.test" {
				return fmt.Errorf("no service is published at %q", host)
			}
			return nil
		},
		Logger: testLogger(),
	}
	if err := pc.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.Host)
		if host != "web.test" || r.ProtoMajor != 3 {
			http.NotFound(w, r)
			return
		}
		fmt.Fprintf(w, "web over %s", r.Proto)
	})
	s := startWith(t, &Server{Handler: h, TLS: pc.TLSConfig(), HTTP3: true, Public: true})
	_, port, _ := net.SplitHostPort(s.BoundAddr())

	for _, tt := range []struct {
		name  string
		flags []string
	}{
		{"by address", nil},
		// Versions that honour --sni get web.test's own certificate.
		{"with --sni", []string{"--sni=web.test"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dl := t.TempDir()
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			args := append([]string{"--exit-on-all-streams-close", "--no-quic-dump", "--timeout=10s", "--download=" + dl}, tt.flags...)
			args = append(args, "127.0.0.1", port, "https://web.test:"+port+"/")
			out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
			// gtlsclient exits 0 after a failed handshake too: the answer
			// is what it downloaded.
			body, rerr := os.ReadFile(filepath.Join(dl, "index.html"))
			if err != nil || rerr != nil || string(body) != "web over HTTP/3.0" || !strings.Contains(string(out), "[:status: 200]") {
				t.Fatalf("gtlsclient: %v; body %q (%v); want 200 %q\n%s", err, body, rerr, "web over HTTP/3.0", tail(out, 40))
			}
		})
	}
}

// tail returns the last n lines of out.
func tail(out []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
