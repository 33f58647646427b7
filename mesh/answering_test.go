package mesh

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// TestFailedMemberThatAnswersIsKept: web-1's gossip goes silent (its pool
// stops without leaving, as when a starved node's probes and acks are
// late) while its proxy keeps serving. The caller's gossip declares web-1
// dead, yet every request of a steady stream is answered: web-1 stays in
// the caller's catalog while it answers. Once the stream stops, it goes.
func TestFailedMemberThatAnswersIsKept(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for gossip's failure detection: skipped with -short")
	}
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		io.WriteString(w, "web")
	}))
	defer app.Close()
	m := newTestMesh(t)
	gw := m.start(Config{Role: RoleGateway, Name: "gw-eu", Region: "eu"})
	web := m.start(Config{Role: RoleSidecar, Name: "web-1", Region: "eu", Service: "web",
		Upstream: app.Listener.Addr().String(), Join: []string{gw.Addrs()["gossip"]}})
	api := m.start(Config{Role: RoleSidecar, Name: "api-1", Region: "eu", Service: "api",
		Upstream: nameApp(t, "api"), Join: []string{gw.Addrs()["gossip"]}})
	out := api.Addrs()["outbound"]
	wantBody(t, out, "web.mesh", 200, "web")

	inPool := func() bool {
		for _, mem := range api.lan.Members() {
			if mem.Name == "web-1" {
				return true
			}
		}
		return false
	}
	// web-1's gossip stops without a leave message; its listeners serve on.
	if err := web.lan.Shutdown(); err != nil {
		t.Fatal(err)
	}
	var sent, failed int
	declared := time.Time{}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		resp, body, err := edgeGet(out, "web.mesh", "/")
		sent++
		if err != nil || resp.StatusCode != 200 || body != "web" {
			failed++
			if failed <= 3 {
				code := 0
				if resp != nil {
					code = resp.StatusCode
				}
				t.Errorf("request %d: %d %q %v", sent, code, body, err)
			}
		}
		if declared.IsZero() && !inPool() {
			declared = time.Now()
		}
		// Go on for 3 s after gossip declared web-1 dead: more than
		// answeringWindow, and several re-checks of the kept member.
		if !declared.IsZero() && time.Since(declared) > 3*time.Second {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if declared.IsZero() {
		t.Fatal("the caller's gossip never declared web-1 failed")
	}
	if failed > 0 {
		t.Fatalf("%d of %d requests failed while web-1 answered but gossip had declared it dead", failed, sent)
	}
	if !api.keeping.Load() {
		t.Fatal("the caller does not report keeping a member")
	}
	t.Logf("%d requests, none failed; gossip declared web-1 dead and the caller kept it", sent)

	// Without answers for answeringWindow, web-1 leaves the catalog.
	poll(t, 10*time.Second, "web-1 dropped once no answer came", func() error {
		if api.keeping.Load() {
			return errString("still kept")
		}
		return nil
	})
	resp, _, err := edgeGet(out, "web.mesh", "/")
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("web with its only instance gone from gossip and silent: %d, want 503", resp.StatusCode)
	}
}

type errString string

func (e errString) Error() string { return string(e) }
