package tlsmgr

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

var (
	spWeb = "spiffe://" + testTD + "/service/web"
	spAPI = "spiffe://" + testTD + "/service/api"
	spGW  = "spiffe://" + testTD + "/gateway/eu/gw1"
)

// testCA creates a CA directory and loads it.
func testCA(t *testing.T, td string) (string, *CA) {
	t.Helper()
	dir := newCADir(t, td)
	ca, err := LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	return dir, ca
}

// startSPIFFE starts a Workload API Manager and closes it when the test ends.
func startSPIFFE(t *testing.T, m *Manager) *Manager {
	t.Helper()
	if m.Logger == nil {
		m.Logger = testLogger(t)
	}
	if err := m.Start(context.Background()); err != nil {
		t.Fatalf("Start(%s): %v", m.SPIFFESocket, err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func leafOf(t *testing.T, e *workload.X509SVID) *x509.Certificate {
	t.Helper()
	c, err := x509.ParseCertificate(e.X509Svid)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func currentSerial(t *testing.T, m *Manager) string {
	t.Helper()
	s, err := m.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	return s.Certificates[0].SerialNumber.Text(16)
}

func TestSPIFFEPicksSVID(t *testing.T) {
	caDir, ca := testCA(t, testTD)
	api, web := svidEntry(t, ca, spAPI), svidEntry(t, ca, spWeb)
	_, addr := startFakeWorkloadAPI(t, x509Response(api, web))

	tests := []struct {
		name  string
		m     *Manager
		want  *workload.X509SVID
		wantD string
	}{
		{"by ID, second offered", &Manager{SPIFFESocket: addr, ID: spWeb}, web, spWeb},
		{"by ID, first offered", &Manager{SPIFFESocket: addr, ID: spAPI}, api, spAPI},
		{"no ID: the default (first)", &Manager{SPIFFESocket: addr}, api, spAPI},
		{"CADir pins the same trust domain", &Manager{SPIFFESocket: addr, ID: spWeb, CADir: certOnlyDir(t, caDir)}, web, spWeb},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := startSPIFFE(t, tt.m)
			svid, err := m.GetX509SVID()
			if err != nil {
				t.Fatal(err)
			}
			if svid.ID.String() != tt.wantD {
				t.Errorf("serves %s, want %s", svid.ID, tt.wantD)
			}
			leaf := leafOf(t, tt.want)
			if svid.Certificates[0].SerialNumber.Cmp(leaf.SerialNumber) != 0 {
				t.Errorf("serial %x, want the offered %x", svid.Certificates[0].SerialNumber, leaf.SerialNumber)
			}
			if !m.NotAfter().Equal(leaf.NotAfter) {
				t.Errorf("NotAfter %v, want %v", m.NotAfter(), leaf.NotAfter)
			}
			if m.TrustDomain() != testTD {
				t.Errorf("TrustDomain %q", m.TrustDomain())
			}
			b, err := m.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString(testTD))
			if err != nil || len(b.X509Authorities()) != 1 || !b.X509Authorities()[0].Equal(ca.Cert) {
				t.Errorf("bundle %v, %v; want the CA sent by the agent", b, err)
			}
			if _, err := m.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString("other.test")); err == nil {
				t.Error("bundle for a foreign trust domain")
			}
			if m.Renewals() != 0 {
				t.Errorf("Renewals %d right after Start", m.Renewals())
			}
			if m.SPIFFETimeout != 0 || m.spiffeTimeout() != DefaultSPIFFETimeout {
				t.Errorf("default timeout: field %v, used %v", m.SPIFFETimeout, m.spiffeTimeout())
			}
		})
	}
}

func TestSPIFFEStartErrors(t *testing.T) {
	_, ca := testCA(t, testTD)
	_, otherCA := testCA(t, testTD) // same trust domain name, another key
	otherTDDir, _ := testCA(t, "other.test")
	offered, offeredAddr := startFakeWorkloadAPI(t, x509Response(svidEntry(t, ca, spAPI), svidEntry(t, ca, spWeb)))
	_, silentAddr := startFakeWorkloadAPI(t, nil)
	foreign := svidEntry(t, otherCA, spWeb)
	foreign.Bundle = ca.Cert.Raw
	_, foreignAddr := startFakeWorkloadAPI(t, x509Response(foreign))

	dir := t.TempDir()
	missing := "unix://" + filepath.Join(dir, "missing.sock")
	// A socket file nobody listens on: what a crashed agent leaves behind.
	stalePath := filepath.Join(dir, "stale.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: stalePath, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	if _, err := os.Stat(stalePath); err != nil {
		t.Fatalf("stale socket file: %v", err)
	}
	stale := "unix://" + stalePath

	const timeout = 300 * time.Millisecond
	tests := []struct {
		name    string
		m       *Manager
		want    []string
		waits   bool // fails only when SPIFFETimeout runs out
		offered bool // opened a stream on offered, which must be closed again
	}{
		{name: "ID not offered", m: &Manager{SPIFFESocket: offeredAddr, ID: spGW},
			want: []string{`offers no svid for "` + spGW + `"`, spAPI, spWeb}, offered: true},
		{name: "no socket file", m: &Manager{SPIFFESocket: missing, ID: spWeb},
			want: []string{missing, "no x509-svid within 300ms", "no such file or directory", "deadline exceeded"}, waits: true},
		{name: "socket with nothing listening", m: &Manager{SPIFFESocket: stale, ID: spWeb},
			want: []string{stale, "no x509-svid within 300ms", "connection refused"}, waits: true},
		{name: "agent sends nothing", m: &Manager{SPIFFESocket: silentAddr},
			want: []string{silentAddr, "no x509-svid within 300ms", "answered nothing"}, waits: true},
		{name: "svid does not verify against the bundle", m: &Manager{SPIFFESocket: foreignAddr},
			want: []string{"does not verify against its trust bundle"}},
		{name: "CADir of another trust domain", m: &Manager{SPIFFESocket: offeredAddr, ID: spWeb, CADir: otherTDDir},
			want: []string{"wrong trust domain", spWeb, `"other.test"`}, offered: true},
		{name: "with CertFile and KeyFile", m: &Manager{SPIFFESocket: offeredAddr, CertFile: "c", KeyFile: "k"},
			want: []string{"SPIFFESocket and CertFile/KeyFile are exclusive"}},
		{name: "with only KeyFile", m: &Manager{SPIFFESocket: offeredAddr, KeyFile: "k"},
			want: []string{"SPIFFESocket and CertFile/KeyFile are exclusive", "set together"}},
		{name: "with TTL (minting)", m: &Manager{SPIFFESocket: offeredAddr, TTL: time.Hour},
			want: []string{"SPIFFESocket and TTL 1h0m0s are exclusive"}},
		{name: "socket without scheme", m: &Manager{SPIFFESocket: "/run/spire/agent.sock"},
			want: []string{`SPIFFESocket "/run/spire/agent.sock"`, "unix:///path/to/agent.sock"}},
		{name: "socket with another scheme", m: &Manager{SPIFFESocket: "http://127.0.0.1:1"},
			want: []string{`SPIFFESocket "http://127.0.0.1:1"`, `"tcp" or "unix" scheme`}},
		{name: "negative timeout", m: &Manager{SPIFFESocket: offeredAddr, SPIFFETimeout: -time.Second},
			want: []string{"SPIFFETimeout -1s"}},
		{name: "root ID", m: &Manager{SPIFFESocket: offeredAddr, ID: "spiffe://" + testTD},
			want: []string{"non-root path"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := tt.m
			m.Logger = testLogger(t)
			if m.SPIFFETimeout == 0 {
				m.SPIFFETimeout = timeout
			}
			start := time.Now()
			err := m.Start(context.Background())
			took := time.Since(start)
			if err == nil {
				m.Close()
				t.Fatal("Start succeeded")
			}
			t.Logf("Start: %v", err)
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			// The timeout bounds the wait; one go-spiffe retry step (1 s)
			// plus scheduling is the most it may overshoot.
			if tt.waits && (took < timeout || took > timeout+2*time.Second) {
				t.Errorf("failed after %v, want about SPIFFETimeout %v", took, timeout)
			}
			if !tt.waits && took > timeout {
				t.Errorf("failed after %v; this error needs no waiting", took)
			}
			if _, err := m.GetX509SVID(); err == nil {
				t.Error("GetX509SVID works after a failed Start")
			}
			if m.TrustDomain() != "" || !m.NotAfter().IsZero() {
				t.Error("failed Start left state behind")
			}
			// A start that fails half way closes the Workload API stream
			// it opened.
			if tt.offered {
				waitFor(t, 5*time.Second, "the agent to see the stream closed", func() bool { return offered.streams.Load() == 0 })
			}
		})
	}
}

func TestSPIFFEStartCancelled(t *testing.T) {
	_, addr := startFakeWorkloadAPI(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	m := &Manager{SPIFFESocket: addr, Logger: testLogger(t)}
	time.AfterFunc(50*time.Millisecond, cancel)
	start := time.Now()
	err := m.Start(ctx)
	if err == nil {
		m.Close()
		t.Fatal("Start succeeded")
	}
	if !strings.Contains(err.Error(), "context canceled") || time.Since(start) > 5*time.Second {
		t.Errorf("err %v after %v, want a prompt cancellation", err, time.Since(start))
	}
}

// TestFakeWorkloadAPIRequiresHeader checks the fake itself: like a SPIRE
// agent it refuses a client that omits the security header, so every other
// test here also proves that the Manager's client sends it.
func TestFakeWorkloadAPIRequiresHeader(t *testing.T) {
	_, ca := testCA(t, testTD)
	f, addr := startFakeWorkloadAPI(t, x509Response(svidEntry(t, ca, spWeb)))
	target, err := workloadapi.TargetFromAddress(addr)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cli := workload.NewSpiffeWorkloadAPIClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	for _, tt := range []struct {
		name string
		ctx  context.Context
		code codes.Code
	}{
		{"without header", ctx, codes.InvalidArgument},
		{"header false", metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "false"), codes.InvalidArgument},
		{"with header", metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "true"), codes.OK},
	} {
		t.Run(tt.name, func(t *testing.T) {
			stream, err := cli.FetchX509SVID(tt.ctx, &workload.X509SVIDRequest{})
			if err != nil {
				t.Fatal(err)
			}
			resp, err := stream.Recv()
			if status.Code(err) != tt.code {
				t.Fatalf("Recv: %v, want code %v", err, tt.code)
			}
			if tt.code == codes.OK && (len(resp.Svids) != 1 || resp.Svids[0].SpiffeId != spWeb) {
				t.Errorf("response %v", resp)
			}
		})
	}
	if f.refused.Load() != 2 {
		t.Errorf("refused %d calls, want 2", f.refused.Load())
	}
}

// TestSPIFFEMTLSWithMintedPeer: a node on SPIRE and a node minting with the
// built-in CA meet when SPIRE's bundle is that CA, in both directions, and
// the Workload API bundle is what refuses a peer of another CA.
func TestSPIFFEMTLSWithMintedPeer(t *testing.T) {
	caDir, ca := testCA(t, testTD)
	otherDir := newCADir(t, testTD)
	_, addr := startFakeWorkloadAPI(t, x509Response(svidEntry(t, ca, spWeb)))
	web := startSPIFFE(t, &Manager{SPIFFESocket: addr, ID: spWeb})
	api := startManager(t, caDir, spAPI, 0)
	rogue := startManager(t, otherDir, spAPI, 0)

	clientFor := func(m *Manager, peer string) *tls.Config {
		cfg, err := m.ClientTLS(peer, "h2")
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	tests := []struct {
		name             string
		srv, cli         *tls.Config
		srvSees, cliSees string // "" means the handshake must fail
	}{
		{"workload api server, minted client", web.ServerTLS(nil), clientFor(api, spWeb), spAPI, spWeb},
		{"minted server, workload api client", api.ServerTLS(nil), clientFor(web, spAPI), spWeb, spAPI},
		{"workload api server, client of another CA", web.ServerTLS(nil), clientFor(rogue, spWeb), "", ""},
		{"workload api client, server of another CA", rogue.ServerTLS(nil), clientFor(web, spAPI), "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, c := handshake(t, tt.srv, tt.cli)
			if tt.srvSees == "" {
				if s.err == nil && c.err == nil {
					t.Fatal("handshake with a peer of another CA succeeded")
				}
				if !strings.Contains(s.err.Error()+c.err.Error(), "certificate signed by unknown authority") {
					t.Errorf("errors %v / %v, want an unknown authority", s.err, c.err)
				}
				return
			}
			if s.err != nil || c.err != nil {
				t.Fatalf("handshake: %v / %v", s.err, c.err)
			}
			if id, _ := PeerID(&s.state); id != tt.srvSees {
				t.Errorf("server sees %q, want %q", id, tt.srvSees)
			}
			if id, _ := PeerID(&c.state); id != tt.cliSees {
				t.Errorf("client sees %q, want %q", id, tt.cliSees)
			}
		})
	}
}

// TestSPIFFERotation pushes updates from the agent while a connection to a
// Workload API server stays open: a rotated SVID reaches the next
// handshake and Renewals, the open connection keeps working, and updates
// that change nothing or drop the node's ID change nothing.
func TestSPIFFERotation(t *testing.T) {
	caDir, ca := testCA(t, testTD)
	first := svidEntry(t, ca, spWeb)
	agent, addr := startFakeWorkloadAPI(t, x509Response(first))
	logs := &logBuffer{}
	web := startSPIFFE(t, &Manager{SPIFFESocket: addr, ID: spWeb,
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	api := startManager(t, caDir, spAPI, 0)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, TLSConfig: web.ServerTLS(nil),
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hi") })}
	go srv.ServeTLS(ln, "", "")
	defer srv.Close()
	url := "https://" + ln.Addr().String() + "/"

	newClient := func() (*http.Client, *atomic.Int32) {
		cfg, err := api.ClientTLS(spWeb, "h2")
		if err != nil {
			t.Fatal(err)
		}
		dials := &atomic.Int32{}
		tr := &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: true,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				dials.Add(1)
				return (&net.Dialer{}).DialContext(ctx, network, addr)
			}}
		t.Cleanup(tr.CloseIdleConnections)
		return &http.Client{Transport: tr, Timeout: 5 * time.Second}, dials
	}
	get := func(c *http.Client) string {
		t.Helper()
		resp, err := c.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if b, err := io.ReadAll(resp.Body); err != nil || string(b) != "hi" {
			t.Fatalf("body %q, %v", b, err)
		}
		return resp.TLS.PeerCertificates[0].SerialNumber.Text(16)
	}

	open, openDials := newClient()
	serial1 := leafOf(t, first).SerialNumber.Text(16)
	if got := get(open); got != serial1 {
		t.Fatalf("first connection sees serial %s, want %s", got, serial1)
	}

	// The agent rotates the SVID.
	second := svidEntry(t, ca, spWeb)
	serial2 := leafOf(t, second).SerialNumber.Text(16)
	agent.set(x509Response(second))
	waitFor(t, 5*time.Second, "the rotation", func() bool { return web.Renewals() == 1 })
	if got := currentSerial(t, web); got != serial2 {
		t.Errorf("serves serial %s after the rotation, want %s", got, serial2)
	}
	if !web.NotAfter().Equal(leafOf(t, second).NotAfter) {
		t.Errorf("NotAfter %v, want the rotated SVID's %v", web.NotAfter(), leafOf(t, second).NotAfter)
	}
	// The open connection still carries requests, with the certificate it
	// was made with.
	if got := get(open); got != serial1 || openDials.Load() != 1 {
		t.Errorf("open connection: serial %s after %d dials, want %s over one connection", got, openDials.Load(), serial1)
	}
	// A new connection presents the rotated SVID.
	fresh, _ := newClient()
	if got := get(fresh); got != serial2 {
		t.Errorf("new connection sees serial %s, want the rotated %s", got, serial2)
	}

	// The agent resends the same SVID (as it does when anything else
	// changes): processed, but not a renewal.
	steps := []struct {
		name string
		resp *workload.X509SVIDResponse
		log  string
	}{
		{"same svid again", x509Response(second), ""},
		{"our ID no longer offered", x509Response(svidEntry(t, ca, spAPI)), "offers no svid for"},
	}
	for _, st := range steps {
		before := web.updates.Load()
		agent.set(st.resp)
		waitFor(t, 5*time.Second, st.name+" to be processed", func() bool { return web.updates.Load() > before })
		if web.Renewals() != 1 || currentSerial(t, web) != serial2 {
			t.Errorf("%s: renewals %d, serial %s; want 1 and %s kept", st.name, web.Renewals(), currentSerial(t, web), serial2)
		}
		if st.log != "" && logs.count(st.log) == 0 {
			t.Errorf("%s: nothing logged about it", st.name)
		}
	}
	if got := get(fresh); got != serial2 {
		t.Errorf("after refused updates: serial %s, want %s", got, serial2)
	}
	// The agent offers the ID again, rotated once more.
	third := svidEntry(t, ca, spWeb)
	agent.set(x509Response(svidEntry(t, ca, spAPI), third))
	waitFor(t, 5*time.Second, "the second rotation", func() bool { return web.Renewals() == 2 })
	if got := currentSerial(t, web); got != leafOf(t, third).SerialNumber.Text(16) {
		t.Errorf("serial %s after the second rotation", got)
	}

	// Close closes the Workload API connection; the last SVID stays for
	// handshakes in flight.
	if agent.streams.Load() != 1 {
		t.Errorf("%d streams open before Close, want 1", agent.streams.Load())
	}
	if err := web.Close(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the agent to see the stream closed", func() bool { return agent.streams.Load() == 0 })
	if _, err := web.GetX509SVID(); err != nil {
		t.Errorf("GetX509SVID after Close: %v", err)
	}
}

func TestSPIFFEStopsOnContextCancel(t *testing.T) {
	_, ca := testCA(t, testTD)
	agent, addr := startFakeWorkloadAPI(t, x509Response(svidEntry(t, ca, spWeb)))
	ctx, cancel := context.WithCancel(context.Background())
	m := &Manager{SPIFFESocket: addr, Logger: testLogger(t)}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	cancel()
	waitFor(t, 5*time.Second, "the source to close", func() bool { return agent.streams.Load() == 0 })
	n := m.updates.Load()
	agent.set(x509Response(svidEntry(t, ca, spWeb)))
	if m.updates.Load() != n || m.Renewals() != 0 {
		t.Error("updates followed after the context ended")
	}
}

// FuzzSPIFFESocket feeds Validate arbitrary socket addresses: it never
// panics, and what it accepts go-spiffe can dial.
func FuzzSPIFFESocket(f *testing.F) {
	for _, s := range []string{
		"unix:///run/spire/agent.sock", "tcp://127.0.0.1:8081", "/run/spire/agent.sock", "unix:", "unix://",
		"tcp://localhost:8081", "tcp://[::1]:1", "unix:///a?b", "unix://%zz", "tcp://127.0.0.1", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		m := &Manager{SPIFFESocket: s}
		err := m.Validate()
		if s == "" {
			if err == nil {
				t.Fatal("Validate accepted a Manager without any source")
			}
			return
		}
		rejected := err != nil && strings.Contains(err.Error(), fmt.Sprintf("SPIFFESocket %q", s))
		if _, terr := workloadapi.TargetFromAddress(s); (terr != nil) != rejected {
			t.Fatalf("Validate(%q) = %v, but go-spiffe says %v", s, err, terr)
		}
	})
}
