package tlsmgr

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// dirFiles returns every file of dir and its bytes.
func dirFiles(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = b
	}
	return out
}

func bundleOf(t *testing.T, dir string) []*x509.Certificate {
	t.Helper()
	ca, err := LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	return ca.Roots
}

func TestParseBundle(t *testing.T) {
	a, b := newCADir(t, testTD), newCADir(t, testTD)
	pa, _ := os.ReadFile(filepath.Join(a, CACertFile))
	pb, _ := os.ReadFile(filepath.Join(b, CACertFile))
	roots, td, err := parseBundle(append(append([]byte("# a comment before the first block\n"), pb...), pa...))
	if err != nil {
		t.Fatal(err)
	}
	if td.Name() != testTD || len(roots) != 2 {
		t.Fatalf("trust domain %q, %d roots; want %s and 2", td.Name(), len(roots), testTD)
	}
	if !roots[0].Equal(bundleOf(t, b)[0]) || !roots[1].Equal(bundleOf(t, a)[0]) {
		t.Error("roots not in file order")
	}
	var many []byte
	for range maxRoots + 1 {
		p, _ := os.ReadFile(filepath.Join(newCADir(t, testTD), CACertFile))
		many = append(many, p...)
	}
	if _, _, err := parseBundle(many); err == nil || !strings.Contains(err.Error(), "more than 8 certificates") {
		t.Errorf("a bundle of %d roots: %v, want refused", maxRoots+1, err)
	}
	if _, _, err := parseBundle(nil); err == nil || !strings.Contains(err.Error(), "no PEM block") {
		t.Errorf("empty bundle: %v", err)
	}
}

// TestLoadCAIssuingRoot: in a bundle of two roots, ca.key picks the root
// that issues, whichever place it has in ca.crt; without ca.key, Cert is
// the first root.
func TestLoadCAIssuingRoot(t *testing.T) {
	a, b := newCADir(t, testTD), newCADir(t, testTD)
	read := func(dir, name string) []byte {
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	ra, rb := bundleOf(t, a)[0], bundleOf(t, b)[0]
	for _, tt := range []struct {
		name      string
		bundle    []byte
		key       []byte
		want      *x509.Certificate
		wantRoots []*x509.Certificate
	}{
		{"key of the second root", append(read(a, CACertFile), read(b, CACertFile)...), read(b, CAKeyFile), rb, []*x509.Certificate{ra, rb}},
		{"key of the first root", append(read(b, CACertFile), read(a, CACertFile)...), read(a, CAKeyFile), ra, []*x509.Certificate{rb, ra}},
		{"no key", append(read(b, CACertFile), read(a, CACertFile)...), nil, rb, []*x509.Certificate{rb, ra}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			os.WriteFile(filepath.Join(dir, CACertFile), tt.bundle, 0o644)
			if tt.key != nil {
				os.WriteFile(filepath.Join(dir, CAKeyFile), tt.key, 0o600)
			}
			ca, err := LoadCA(dir)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.EqualFunc(ca.Roots, tt.wantRoots, (*x509.Certificate).Equal) || !ca.Cert.Equal(tt.want) {
				t.Fatalf("roots %v, issuing %s; want %v and %s", Fingerprints(ca.Roots), Fingerprint(ca.Cert),
					Fingerprints(tt.wantRoots), Fingerprint(tt.want))
			}
			if tt.key == nil {
				return
			}
			svid, err := ca.mint("spiffe://"+testTD+"/service/web", time.Hour, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			if err := svid.Certificates[0].CheckSignatureFrom(tt.want); err != nil {
				t.Errorf("minted from the wrong root: %v", err)
			}
		})
	}
}

// TestRotateSteps: what each step writes, and that a step run out of
// order says what to run instead and changes nothing.
func TestRotateSteps(t *testing.T) {
	dir := newCADir(t, testTD)
	if err := WriteOperator(dir, "ops"); err != nil {
		t.Fatal(err)
	}
	old := bundleOf(t, dir)[0]
	oldKey, _ := os.ReadFile(filepath.Join(dir, CAKeyFile))

	refused := func(step string, f func(string) (*Rotation, error), want string) {
		t.Helper()
		before := dirFiles(t, dir)
		_, err := f(dir)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("%s: %v, want an error saying %q", step, err, want)
		}
		if after := dirFiles(t, dir); !maps.EqualFunc(before, after, bytes.Equal) {
			t.Fatalf("%s refused but changed the directory", step)
		}
	}
	refused("switch before begin", RotateSwitch, "cannot switch: no rotation is under way; `meshd ca rotate begin` starts one")
	refused("finish before begin", RotateFinish, "cannot finish: no rotation is under way")

	r, err := RotateBegin(dir)
	if err != nil {
		t.Fatal(err)
	}
	roots := bundleOf(t, dir)
	if r.Step != StepBegun || len(roots) != 2 || !roots[0].Equal(old) || !roots[1].Equal(r.Next) {
		t.Fatalf("after begin: step %s, %d roots; want begun, old then new", r.Step, len(roots))
	}
	if key, _ := os.ReadFile(filepath.Join(dir, CAKeyFile)); !bytes.Equal(key, oldKey) {
		t.Fatal("begin changed ca.key: SVIDs must still come from the old root")
	}
	if fi, err := os.Stat(filepath.Join(dir, CANextKeyFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("ca.next.key: %v %v, want mode 0600", fi, err)
	}
	if !strings.Contains(r.Next.Subject.CommonName, "meshd root CA "+testTD+" ") {
		t.Errorf("new root's name %q does not tell it from the old one", r.Next.Subject.CommonName)
	}
	newRoot := r.Next
	refused("begin twice", RotateBegin, "cannot begin: the rotation has begun")
	refused("finish before switch", RotateFinish, "cannot finish: the rotation has begun (the new root "+Fingerprint(newRoot)+" is trusted, the old one still issues); `meshd ca rotate switch` is next")

	r, err = RotateSwitch(dir)
	if err != nil {
		t.Fatal(err)
	}
	if r.Step != StepSwitched || !r.CA.Cert.Equal(newRoot) || !r.Prev.Equal(old) || len(r.CA.Roots) != 2 {
		t.Fatalf("after switch: step %s, issuing %s, prev %s", r.Step, Fingerprint(r.CA.Cert), Fingerprint(r.Prev))
	}
	for _, gone := range []string{CANextCertFile, CANextKeyFile} {
		if _, err := os.Stat(filepath.Join(dir, gone)); err == nil {
			t.Errorf("%s still there after switch", gone)
		}
	}
	if key, _ := os.ReadFile(filepath.Join(dir, CAPrevKeyFile)); !bytes.Equal(key, oldKey) {
		t.Error("ca.prev.key is not the old ca.key")
	}
	op, err := LoadOperator(filepath.Join(dir, OperatorCertFile), filepath.Join(dir, OperatorKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := op.Chain[0].CheckSignatureFrom(newRoot); err != nil || !strings.HasSuffix(op.ID, "/operator/ops") {
		t.Errorf("operator certificate %s not re-issued from the new root: %v", op.ID, err)
	}
	refused("switch twice", RotateSwitch, "cannot switch: the rotation has switched")
	refused("begin after switch", RotateBegin, "`meshd ca rotate finish` is next")

	r, err = RotateFinish(dir)
	if err != nil {
		t.Fatal(err)
	}
	roots = bundleOf(t, dir)
	if r.Step != StepNone || len(roots) != 1 || !roots[0].Equal(newRoot) || !r.CA.Cert.Equal(newRoot) {
		t.Fatalf("after finish: step %s, roots %v", r.Step, Fingerprints(roots))
	}
	want := []string{CACertFile, CAKeyFile, GossipKeyFile, OperatorCertFile, OperatorKeyFile}
	if got := slices.Sorted(maps.Keys(dirFiles(t, dir))); !slices.Equal(got, slices.Sorted(slices.Values(want))) {
		t.Errorf("files after finish %v, want %v", got, want)
	}
	refused("finish twice", RotateFinish, "cannot finish: no rotation is under way")

	// A second rotation starts from the finished one.
	if _, err := RotateBegin(dir); err != nil {
		t.Fatalf("a second begin: %v", err)
	}
}

func TestRotateRefusesBadDirectory(t *testing.T) {
	dir := newCADir(t, testTD)
	certOnly := certOnlyDir(t, dir)
	if _, err := RotateBegin(certOnly); err == nil || !strings.Contains(err.Error(), "rotating the root needs the CA key") {
		t.Errorf("begin without ca.key: %v", err)
	}
	// A bundle of two roots by hand, no rotation files: begin refuses.
	two := filepath.Join(t.TempDir(), "ca")
	os.MkdirAll(two, 0o700)
	p1, _ := os.ReadFile(filepath.Join(dir, CACertFile))
	p2, _ := os.ReadFile(filepath.Join(newCADir(t, testTD), CACertFile))
	k1, _ := os.ReadFile(filepath.Join(dir, CAKeyFile))
	os.WriteFile(filepath.Join(two, CACertFile), append(p1, p2...), 0o644)
	os.WriteFile(filepath.Join(two, CAKeyFile), k1, 0o600)
	if _, err := RotateBegin(two); err == nil || !strings.Contains(err.Error(), "holds 2 roots but no rotation is under way") {
		t.Errorf("begin on a two-root bundle: %v", err)
	}
	// ca.next.crt whose root is not in ca.crt.
	if _, err := RotateBegin(dir); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, CACertFile), p1, 0o644)
	if _, err := RotateSwitch(dir); err == nil || !strings.Contains(err.Error(), "is not in ca.crt") {
		t.Errorf("switch with ca.next.crt missing from the bundle: %v", err)
	}
}

func startRotating(t *testing.T, dir, id string, logs io.Writer) *Manager {
	t.Helper()
	m := &Manager{CADir: dir, ID: id, TTL: time.Hour, PollInterval: 20 * time.Millisecond, RemintJitter: 100 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(logs, nil))}
	if err := m.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func copyDir(t *testing.T, src string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "ca")
	os.MkdirAll(dst, 0o700)
	for name, b := range dirFiles(t, src) {
		if err := os.WriteFile(filepath.Join(dst, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

// TestManagerFollowsRotation: nodes minting from a CA directory take each
// step of a rotation from it: the new bundle, then SVIDs from the new
// root, then the bundle without the old root. At every step a new
// handshake between them succeeds, a connection opened before the rotation
// keeps working, and after finish a node still on the old root is refused
// as unknown_root with a log line naming it.
func TestManagerFollowsRotation(t *testing.T) {
	dir := newCADir(t, testTD)
	staleDir := copyDir(t, dir)
	srvLog := &logBuffer{}
	srvID, cliID, staleID := "spiffe://"+testTD+"/gateway/eu/gw-1", "spiffe://"+testTD+"/service/web", "spiffe://"+testTD+"/service/legacy"
	srv := startRotating(t, dir, srvID, srvLog)
	cli := startRotating(t, dir, cliID, io.Discard)
	staleLog := &logBuffer{}
	stale := startRotating(t, staleDir, staleID, staleLog)
	old := bundleOf(t, dir)[0]

	// A connection opened before the rotation, used after every step.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		tc := tls.Server(c, srv.ServerTLS(nil))
		defer tc.Close()
		io.Copy(tc, tc) // echo
	}()
	ccfg, _ := cli.ClientTLS(srvID)
	live, err := tls.Dial("tcp", ln.Addr().String(), ccfg)
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	echo := func(step string) {
		t.Helper()
		live.SetDeadline(time.Now().Add(5 * time.Second))
		msg := []byte("after " + step)
		if _, err := live.Write(msg); err != nil {
			t.Fatalf("%s: the open connection: %v", step, err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(live, got); err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("%s: the open connection read %q, %v", step, got, err)
		}
	}
	fresh := func(step string, client *Manager, want bool) (s, c hsResult) {
		t.Helper()
		cfg, err := client.ClientTLS(srvID)
		if err != nil {
			t.Fatal(err)
		}
		s, c = handshake(t, srv.ServerTLS(nil), cfg)
		if ok := s.err == nil && c.err == nil; ok != want {
			t.Fatalf("%s: a new handshake from %s: server %v, client %v; want success %v", step, client.ID, s.err, c.err, want)
		}
		return s, c
	}
	state := func(ms ...*Manager) string {
		var b strings.Builder
		for _, m := range ms {
			b.WriteString(strings.Join(m.Roots(), "+") + "/" + m.SVIDRoot() + " ")
		}
		return b.String()
	}
	wait := func(step, want string) {
		t.Helper()
		start := time.Now()
		waitFor(t, 10*time.Second, step+" reaching both nodes", func() bool { return state(srv, cli) == want })
		t.Logf("%s reached both nodes in %v", step, time.Since(start).Round(time.Millisecond))
	}
	fo := Fingerprint(old)
	if got, want := state(srv, cli), fo+"/"+fo+" "+fo+"/"+fo+" "; got != want {
		t.Fatalf("before: %q, want %q", got, want)
	}

	r, err := RotateBegin(dir)
	if err != nil {
		t.Fatal(err)
	}
	fn := Fingerprint(r.Next)
	wait("begin", fo+"+"+fn+"/"+fo+" "+fo+"+"+fn+"/"+fo+" ")
	if srv.Renewals() != 0 {
		t.Errorf("begin made the node re-mint (%d renewals): its SVID from the old root is still good", srv.Renewals())
	}
	echo("begin")
	fresh("begin", cli, true)
	fresh("begin", stale, true) // the old root still issues: nodes not yet updated are fine

	if _, err := RotateSwitch(dir); err != nil {
		t.Fatal(err)
	}
	wait("switch", fo+"+"+fn+"/"+fn+" "+fo+"+"+fn+"/"+fn+" ")
	echo("switch")
	fresh("switch", cli, true)
	if n := srvLog.count("svid minted from the new issuing root"); n != 1 {
		t.Errorf("%d log lines about minting from the new root, want 1", n)
	}

	if _, err := RotateFinish(dir); err != nil {
		t.Fatal(err)
	}
	wait("finish", fn+"/"+fn+" "+fn+"/"+fn+" ")
	echo("finish")
	fresh("finish", cli, true)

	// The stale node both ways: as the server a node dials (a sidecar a
	// gateway forwards to) it is refused by the node; as the client, it
	// refuses the node's SVID from the new root itself. Each side logs the
	// other by name with the reason, and counts it.
	cfg, _ := srv.ClientTLS(staleID)
	s, c := handshake(t, stale.ServerTLS(nil), cfg)
	if c.err == nil || !strings.Contains(c.err.Error(), "unknown authority") {
		t.Errorf("dialing the stale node: server %v, client %v; want refused for an unknown authority", s.err, c.err)
	}
	if got := srv.PeerRefusals()[RefusedUnknownRoot]; got != 1 {
		t.Errorf("unknown_root refusals %d, want 1", got)
	}
	for _, want := range []string{`msg="tls: refused a peer" peer=` + staleID + " reason=unknown_root issuer=\"CN=meshd root CA " + testTD} {
		if srvLog.count(want) != 1 {
			t.Errorf("no log line %s:\n%s", want, srvLog.buf.String())
		}
	}
	s, c = fresh("finish", stale, false)
	if c.err == nil || !strings.Contains(c.err.Error(), "unknown authority") {
		t.Errorf("the stale node dialing: server %v, client %v; want the stale node to refuse an unknown authority", s.err, c.err)
	}
	if got := stale.PeerRefusals()[RefusedUnknownRoot]; got != 1 {
		t.Errorf("the stale node's unknown_root refusals %d, want 1", got)
	}
	if staleLog.count("peer="+srvID+" reason=unknown_root") != 1 {
		t.Errorf("the stale node logged no refusal of %s:\n%s", srvID, staleLog.buf.String())
	}
}

// TestManagerRefusesBadBundleReload: a ca.crt that does not parse keeps
// the current bundle and SVID, is logged once, and a good one is taken
// after it.
func TestManagerRefusesBadBundleReload(t *testing.T) {
	dir := newCADir(t, testTD)
	logs := &logBuffer{}
	m := startRotating(t, dir, "spiffe://"+testTD+"/service/web", logs)
	good, _ := os.ReadFile(filepath.Join(dir, CACertFile))
	roots := m.Roots()
	writeAtomic(filepath.Join(dir, CACertFile), append(append([]byte{}, good...), "junk"...), 0o644)
	waitFor(t, 5*time.Second, "the bad bundle logged", func() bool { return logs.count("ca dir reload failed") == 1 })
	time.Sleep(100 * time.Millisecond) // several more polls: still logged once
	if logs.count("ca dir reload failed") != 1 || !slices.Equal(m.Roots(), roots) || m.BundleReloads() != 0 {
		t.Fatalf("bad bundle: %d log lines, roots %v, reloads %d", logs.count("ca dir reload failed"), m.Roots(), m.BundleReloads())
	}
	if !strings.Contains(logs.buf.String(), "after PEM block 1") {
		t.Errorf("the log does not say what is wrong:\n%s", logs.buf.String())
	}
	if err := writeAtomic(filepath.Join(dir, CACertFile), good, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := RotateBegin(dir); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the next good bundle taken", func() bool { return len(m.Roots()) == 2 && m.BundleReloads() == 1 })
}

// TestExpiredRootRefused: a root left to expire instead of being rotated:
// a handshake after its NotAfter is refused as expired, logged with the
// peer's identity and counted.
func TestExpiredRootRefused(t *testing.T) {
	dir := newCADir(t, testTD)
	clk := newFakeClock()
	srvID := "spiffe://" + testTD + "/gateway/eu/gw-1"
	srv := startClocked(t, dir, srvID, time.Hour, clk)
	logs := &logBuffer{}
	cli := &Manager{CADir: dir, ID: "spiffe://" + testTD + "/service/web", TTL: time.Hour, Now: clk.Now,
		Logger: slog.New(slog.NewTextHandler(logs, nil))}
	if err := cli.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	cfg, err := cli.ClientTLS(srvID)
	if err != nil {
		t.Fatal(err)
	}
	if s, c := handshake(t, srv.ServerTLS(nil), cfg); s.err != nil || c.err != nil {
		t.Fatalf("before expiry: %v %v", s.err, c.err)
	}
	clk.Advance(time.Until(bundleOf(t, dir)[0].NotAfter) + time.Hour)
	cfg, _ = cli.ClientTLS(srvID)
	_, c := handshake(t, srv.ServerTLS(nil), cfg)
	if c.err == nil || !strings.Contains(c.err.Error(), "expired") {
		t.Fatalf("after the root's expiry: %v, want refused as expired", c.err)
	}
	if got := cli.PeerRefusals()[RefusedExpired]; got != 1 {
		t.Errorf("expired refusals %d, want 1", got)
	}
	if logs.count(`msg="tls: refused a peer" peer=`+srvID+" reason=expired") != 1 {
		t.Errorf("no log line naming %s as expired:\n%s", srvID, logs.buf.String())
	}
}

// TestManagerMintsAtOnceWhenItsRootLeaves: a node that has not re-minted
// yet when the old root leaves the bundle (its random delay is long, or it
// missed the switch) mints from the issuing root at once instead of
// serving an SVID its peers refuse.
func TestManagerMintsAtOnceWhenItsRootLeaves(t *testing.T) {
	dir := newCADir(t, testTD)
	logs := &logBuffer{}
	m := &Manager{CADir: dir, ID: "spiffe://" + testTD + "/service/web", TTL: time.Hour, PollInterval: 20 * time.Millisecond,
		RemintJitter: time.Hour, Logger: slog.New(slog.NewTextHandler(logs, nil))}
	if err := m.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	old := Fingerprint(bundleOf(t, dir)[0])
	r, err := RotateBegin(dir)
	if err != nil {
		t.Fatal(err)
	}
	next := Fingerprint(r.Next)
	if _, err := RotateSwitch(dir); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the switch seen", func() bool { return logs.count("a new root issues") == 1 })
	if m.SVIDRoot() != old {
		t.Fatalf("SVID from %s right after switch, want still %s (a delay of up to an hour)", m.SVIDRoot(), old)
	}
	if _, err := RotateFinish(dir); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "an SVID from the new root", func() bool {
		return m.SVIDRoot() == next && slices.Equal(m.Roots(), []string{next})
	})
	if logs.count("the svid's root is no longer in it: minting from the issuing root now") != 1 {
		t.Errorf("no log line saying why it minted at once:\n%s", logs.buf.String())
	}
}
