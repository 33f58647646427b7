package tlsmgr

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
)

// fakeClock is a Manager.Now that moves only when told.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Now()} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// startClocked starts a Manager for id on clk.
func startClocked(t *testing.T, dir, id string, ttl time.Duration, clk *fakeClock) *Manager {
	t.Helper()
	m := &Manager{CADir: dir, ID: id, TTL: ttl, Logger: testLogger(t), Now: clk.Now}
	if err := m.Start(context.Background()); err != nil {
		t.Fatalf("Start(%s): %v", id, err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// setRoots replaces m's trust bundle, keeping its SVID: what a reload of
// ca.crt, or a SPIRE bundle update, does.
func setRoots(t *testing.T, m *Manager, roots ...*x509.Certificate) {
	t.Helper()
	cur := m.cur.Load()
	m.cur.Store(&identity{svid: cur.svid, bundle: x509bundle.FromX509Authorities(cur.bundle.TrustDomain(), roots), issued: cur.issued})
}

// renew replaces m's SVID with one of lifetime ttl minted by the CA in dir
// at time at.
func renew(t *testing.T, m *Manager, dir string, at time.Time, ttl time.Duration) {
	t.Helper()
	ca, err := LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	cur := m.cur.Load()
	svid, err := ca.mint(m.ID, ttl, at)
	if err != nil {
		t.Fatal(err)
	}
	m.cur.Store(&identity{svid: svid, bundle: cur.bundle, issued: at})
}

func caRoot(t *testing.T, dir string) *x509.Certificate {
	t.Helper()
	ca, err := LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	return ca.Cert
}

// resumePair is a server config of web and a client config of api for
// web, as meshd builds them.
type resumePair struct {
	dir      string
	web, api *Manager
	srv, cli *tls.Config
	deny     atomic.Bool // the server's allow refuses api
}

func newResumePair(t *testing.T, srvClk, cliClk *fakeClock, ttl time.Duration) *resumePair {
	t.Helper()
	p := &resumePair{dir: newCADir(t, testTD)}
	webID := "spiffe://" + testTD + "/service/web"
	if srvClk != nil {
		p.web = startClocked(t, p.dir, webID, ttl, srvClk)
	} else {
		p.web = startManager(t, p.dir, webID, ttl)
	}
	apiID := "spiffe://" + testTD + "/service/api"
	if cliClk != nil {
		p.api = startClocked(t, p.dir, apiID, ttl, cliClk)
	} else {
		p.api = startManager(t, p.dir, apiID, ttl)
	}
	p.srv = p.web.ServerTLS(func(peer string) error {
		if p.deny.Load() && peer == apiID {
			return errors.New("policy changed")
		}
		return nil
	})
	cli, err := p.api.ClientTLS(webID, "h2", "http/1.1")
	if err != nil {
		t.Fatal(err)
	}
	// crypto/tls keys the client cache by server name, else by address;
	// handshake listens on a new port each time, proxy.Pool sets the
	// dialed host as server name.
	cli.ServerName = "127.0.0.1"
	p.cli = cli
	return p
}

func (p *resumePair) handshake(t *testing.T) (s, c hsResult) {
	t.Helper()
	return handshake(t, p.srv, p.cli)
}

// mustConnect runs a connection that must succeed, resumed on both sides
// exactly when want.
func (p *resumePair) mustConnect(t *testing.T, what string, want bool) (s, c hsResult) {
	t.Helper()
	s, c = p.handshake(t)
	if s.err != nil || c.err != nil {
		t.Fatalf("%s: server err %v, client err %v", what, s.err, c.err)
	}
	if s.state.DidResume != want || c.state.DidResume != want {
		t.Fatalf("%s: resumed server %v client %v, want %v", what, s.state.DidResume, c.state.DidResume, want)
	}
	return s, c
}

// fullHandshake fails the test if err is a refusal of a resumed session:
// a session that is no longer acceptable must not be resumed at all (the
// handshake falls back to a full one, which then fails on its own).
func fullHandshake(t *testing.T, err error) {
	t.Helper()
	if err != nil && strings.Contains(err.Error(), "resumed session refused") {
		t.Fatalf("a stale session was resumed, then refused: %v", err)
	}
}

func TestResumeSecondConnection(t *testing.T) {
	for _, v := range []struct {
		name string
		max  uint16
	}{{"TLS1.3", 0}, {"TLS1.2", tls.VersionTLS12}} {
		t.Run(v.name, func(t *testing.T) {
			p := newResumePair(t, nil, nil, 0)
			p.cli.MaxVersion = v.max
			p.mustConnect(t, "first", false)
			before := p.web.Resumed()
			s, c := p.mustConnect(t, "second", true)
			if id, ok := PeerID(&s.state); !ok || id != p.api.ID {
				t.Errorf("resumed server sees %q %v", id, ok)
			}
			if id, ok := PeerID(&c.state); !ok || id != p.web.ID {
				t.Errorf("resumed client sees %q %v", id, ok)
			}
			if v.max == 0 && c.state.Version != tls.VersionTLS13 {
				t.Errorf("version %x", c.state.Version)
			}
			if p.web.Resumed() != before+1 || p.api.Resumed() == 0 {
				t.Errorf("Resumed: server %d (was %d), client %d", p.web.Resumed(), before, p.api.Resumed())
			}
			// Each resumption hands out a new ticket, which resumes too.
			p.mustConnect(t, "third", true)
		})
	}
}

func TestResumeRefusedWhenPeerNoLongerAuthorized(t *testing.T) {
	p := newResumePair(t, nil, nil, 0)
	p.mustConnect(t, "first", false)
	p.mustConnect(t, "second", true)
	p.deny.Store(true)
	s, c := p.handshake(t)
	if s.err == nil || !strings.Contains(s.err.Error(), "policy changed") || c.err == nil {
		t.Fatalf("after the policy changed: server err %v, client err %v; want the caller refused", s.err, c.err)
	}
	fullHandshake(t, s.err)
	if s.state.DidResume {
		t.Fatal("refused peer resumed")
	}
	// The policy allows it again: nothing stale is left behind.
	p.deny.Store(false)
	p.mustConnect(t, "allowed again", true)
}

// TestVerifyConnectionRefusesResumed checks the authoritative check on its
// own: the state of a resumed connection, verified again after the bundle
// or the policy changed, is refused, and a refusal on the client empties
// its session cache.
func TestVerifyConnectionRefusesResumed(t *testing.T) {
	p := newResumePair(t, nil, nil, 0)
	p.mustConnect(t, "first", false)
	s, c := p.mustConnect(t, "second", true)
	if err := p.srv.VerifyConnection(s.state); err != nil {
		t.Fatalf("server re-verification of a good session: %v", err)
	}
	p.deny.Store(true)
	if err := p.srv.VerifyConnection(s.state); err == nil || !strings.Contains(err.Error(), "policy changed") {
		t.Fatalf("server re-verification after the policy changed: %v", err)
	}
	cache := p.cli.ClientSessionCache.(*sessionCache)
	if cache.len() == 0 {
		t.Fatal("client cache empty after a resumed connection")
	}
	setRoots(t, p.api, caRoot(t, newCADir(t, testTD)))
	if err := p.cli.VerifyConnection(c.state); err == nil || !strings.Contains(err.Error(), "unknown authority") {
		t.Fatalf("client re-verification after its bundle lost the root: %v", err)
	}
	if cache.len() != 0 {
		t.Error("client cache kept its sessions after a refused resumption")
	}
}

func TestResumeRefusedAfterRootRemoved(t *testing.T) {
	t.Run("server bundle", func(t *testing.T) {
		p := newResumePair(t, nil, nil, 0)
		p.mustConnect(t, "first", false)
		p.mustConnect(t, "second", true)
		// A new root joins the server's bundle (the first step of a CA
		// rotation): the session's root is still there, it resumes.
		newRoot := caRoot(t, newCADir(t, testTD))
		setRoots(t, p.web, caRoot(t, p.dir), newRoot)
		p.mustConnect(t, "root added", true)
		// The old root leaves: the client's chain no longer verifies.
		setRoots(t, p.web, newRoot)
		s, c := p.handshake(t)
		if s.state.DidResume || c.state.DidResume {
			t.Fatal("resumed a session whose root left the bundle")
		}
		if s.err == nil || !strings.Contains(s.err.Error(), "unknown authority") || c.err == nil {
			t.Fatalf("server err %v, client err %v; want a full handshake refused for an unknown authority", s.err, c.err)
		}
		fullHandshake(t, s.err)
	})
	t.Run("client bundle", func(t *testing.T) {
		p := newResumePair(t, nil, nil, 0)
		p.mustConnect(t, "first", false)
		p.mustConnect(t, "second", true)
		setRoots(t, p.api, caRoot(t, newCADir(t, testTD)))
		s, c := p.handshake(t)
		if s.state.DidResume || c.state.DidResume {
			t.Fatal("resumed a session whose root left the bundle")
		}
		if c.err == nil || !strings.Contains(c.err.Error(), "unknown authority") || s.err == nil {
			t.Fatalf("server err %v, client err %v; want a full handshake refused for an unknown authority", s.err, c.err)
		}
		fullHandshake(t, c.err)
	})
}

func TestResumeEndsWithPeerCertificate(t *testing.T) {
	const ttl = time.Hour
	t.Run("server", func(t *testing.T) {
		clk := newFakeClock()
		p := newResumePair(t, clk, nil, 4*ttl)
		renew(t, p.api, p.dir, time.Now(), ttl)
		p.mustConnect(t, "first", false)
		s, _ := p.mustConnect(t, "second", true)
		oldSerial := s.state.PeerCertificates[0].SerialNumber
		// api renews; its session still carries the old certificate, which
		// then expires on the server's clock.
		renew(t, p.api, p.dir, time.Now().Add(ttl/2), ttl)
		clk.Advance(ttl + time.Minute)
		s, _ = p.mustConnect(t, "old certificate expired", false)
		if s.state.PeerCertificates[0].SerialNumber.Cmp(oldSerial) == 0 {
			t.Fatal("server accepted the expired certificate")
		}
		p.mustConnect(t, "new certificate", true)
		// No renewal in time: the full handshake fails too.
		clk.Advance(ttl)
		s, c := p.handshake(t)
		if s.state.DidResume || s.err == nil || !strings.Contains(s.err.Error(), "expired") || c.err == nil {
			t.Fatalf("after the client's certificate expired: resumed %v, server err %v, client err %v", s.state.DidResume, s.err, c.err)
		}
		fullHandshake(t, s.err)
	})
	t.Run("client", func(t *testing.T) {
		clk := newFakeClock()
		p := newResumePair(t, nil, clk, ttl)
		p.mustConnect(t, "first", false)
		p.mustConnect(t, "second", true)
		clk.Advance(ttl + time.Minute) // the server's certificate expired
		s, c := p.handshake(t)
		if c.state.DidResume || s.state.DidResume {
			t.Fatal("client resumed a session of an expired server certificate")
		}
		if c.err == nil || !strings.Contains(c.err.Error(), "expired") {
			t.Fatalf("client err %v, want the full handshake refused for an expired certificate", c.err)
		}
		fullHandshake(t, c.err)
	})
}

func TestTicketKeysRotate(t *testing.T) {
	clk := newFakeClock()
	p := newResumePair(t, clk, nil, 8*TicketKeyRotation)
	p.mustConnect(t, "first", false)
	clk.Advance(TicketKeyRotation * 3 / 2)
	// Encrypted with the previous key, which still decrypts; the new
	// ticket uses the new key.
	p.mustConnect(t, "previous key", true)
	k := p.web.tkeys.Load()
	if len(k.keys) != 2 {
		t.Fatalf("%d ticket keys after one rotation, want 2", len(k.keys))
	}
	clk.Advance(TicketKeyRotation * 21 / 10)
	p.mustConnect(t, "ticket key forgotten", false)
	if k := p.web.tkeys.Load(); len(k.keys) != 1 {
		t.Fatalf("%d ticket keys after a long pause, want 1", len(k.keys))
	}
	p.mustConnect(t, "fresh key", true)
}

func TestSessionCacheBounded(t *testing.T) {
	m := startManager(t, newCADir(t, testTD), "spiffe://"+testTD+"/service/web", 0)
	c := newSessionCache(m, 2)
	st := &tls.ClientSessionState{}
	for _, k := range []string{"a", "b", "c"} {
		c.Put(k, st)
	}
	if c.len() != 2 {
		t.Fatalf("len %d, want 2", c.len())
	}
	if _, ok := c.Get("a"); ok {
		t.Error("oldest entry kept")
	}
	if _, ok := c.Get("c"); !ok {
		t.Error("newest entry lost")
	}
	c.Put("c", nil)
	if _, ok := c.Get("c"); ok || c.len() != 1 {
		t.Error("Put(nil) kept the entry")
	}
}

// TestResumeOverHTTP: an HTTP/1.1 and an HTTP/2 client on a ClientTLS
// config resume their second connection to an http.Server on ServerTLS;
// the TLS 1.3 ticket arrives after the handshake and is read with the
// response.
func TestResumeOverHTTP(t *testing.T) {
	for _, proto := range []string{"http/1.1", "h2"} {
		t.Run(proto, func(t *testing.T) {
			p := newResumePair(t, nil, nil, 0)
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			srv := &http.Server{TLSConfig: p.srv.Clone(), Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.TLS.DidResume {
					io.WriteString(w, "resumed "+r.Proto)
				} else {
					io.WriteString(w, "full "+r.Proto)
				}
			})}
			go srv.ServeTLS(ln, "", "")
			defer srv.Close()
			url := "https://" + ln.Addr().String() + "/"
			cli := p.cli.Clone()
			cli.NextProtos = []string{proto}
			tr := &http.Transport{TLSClientConfig: cli, ForceAttemptHTTP2: proto == "h2"}
			defer tr.CloseIdleConnections()
			want := map[string]string{"http/1.1": "HTTP/1.1", "h2": "HTTP/2.0"}[proto]
			for i, w := range []string{"full " + want, "resumed " + want, "resumed " + want} {
				resp, err := (&http.Client{Transport: tr}).Get(url)
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if string(body) != w {
					t.Fatalf("request %d: %q, want %q", i, body, w)
				}
				tr.CloseIdleConnections()
			}
		})
	}
}

func TestVerificationMemo(t *testing.T) {
	p := newResumePair(t, nil, nil, 0)
	p.mustConnect(t, "first", false)
	p.mustConnect(t, "second", true)
	p.web.verifiedMu.Lock()
	n := len(p.web.verified)
	p.web.verifiedMu.Unlock()
	if n != 1 {
		t.Fatalf("server memo holds %d chains, want 1 (api's)", n)
	}
	// A new bundle value: the memo is not used, and its old entries go.
	setRoots(t, p.web, caRoot(t, p.dir))
	p.mustConnect(t, "same roots, new bundle value", true)
	p.web.verifiedMu.Lock()
	for _, v := range p.web.verified {
		if v.bundle != p.web.cur.Load().bundle {
			t.Error("memo kept a result for a bundle no longer current")
		}
	}
	p.web.verifiedMu.Unlock()
}
