package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/tlsmgr"
)

func runCmd(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := run(context.Background(), args, &out, &errOut)
	return out.String() + errOut.String(), err
}

// TestCARotateCommands: the three steps from the command line, each one
// refused out of order with a message that says what to run instead.
func TestCARotateCommands(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	if _, err := runCmd(t, "ca", "init", "--trust-domain", "rot.test", "--dir", dir); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		args    []string
		wantErr string // "" for success
		wantOut string
	}{
		{[]string{"switch"}, "cannot switch: no rotation is under way; `meshd ca rotate begin` starts one", ""},
		{[]string{"finish"}, "cannot finish: no rotation is under way", ""},
		{[]string{"begin"}, "", "ca.crt holds both"},
		{[]string{"begin"}, "cannot begin: the rotation has begun", ""},
		{[]string{"finish"}, "`meshd ca rotate switch` is next", ""},
		{[]string{"switch"}, "", "operator.crt re-issued"},
		{[]string{"switch"}, "cannot switch: the rotation has switched", ""},
		{[]string{"finish"}, "", "old root dropped"},
		{[]string{"finish"}, "cannot finish: no rotation is under way", ""},
	}
	for _, s := range steps {
		out, err := runCmd(t, append(append([]string{"ca", "rotate"}, s.args...), "--dir", dir)...)
		switch {
		case s.wantErr == "" && err != nil:
			t.Fatalf("ca rotate %v: %v", s.args, err)
		case s.wantErr != "" && (err == nil || !strings.Contains(err.Error(), s.wantErr) || errors.Is(err, errUsage)):
			t.Fatalf("ca rotate %v: %v, want an error (exit 1) saying %q", s.args, err, s.wantErr)
		case !strings.Contains(out, s.wantOut):
			t.Fatalf("ca rotate %v printed %q, want %q", s.args, out, s.wantOut)
		}
	}
	if _, err := runCmd(t, "ca", "rotate", "sideways", "--dir", dir); !errors.Is(err, errUsage) {
		t.Errorf("an unknown step: %v, want a usage error", err)
	}
	if _, err := runCmd(t, "ca", "rotate", "begin"); !errors.Is(err, errUsage) {
		t.Errorf("begin without --dir: %v, want a usage error", err)
	}
}

// TestCAStatusCommand: `meshd ca status` against an admin API: exit 0 only
// when every member is at the CA directory's step, a table naming what
// each node trusts, and refused records listed with their reason.
func TestCAStatusCommand(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	if _, err := runCmd(t, "ca", "init", "--trust-domain", "rot.test", "--dir", dir); err != nil {
		t.Fatal(err)
	}
	r, err := tlsmgr.RotateBegin(dir)
	if err != nil {
		t.Fatal(err)
	}
	oldFP, newFP := tlsmgr.Fingerprint(r.CA.Cert), tlsmgr.Fingerprint(r.Next)
	both := []string{oldFP, newFP}
	var view mesh.CAView
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/ca" {
			http.NotFound(w, r)
			return
		}
		json.NewEncoder(w).Encode(view)
	}))
	defer srv.Close()
	admin := strings.TrimPrefix(srv.URL, "http://")

	view = mesh.CAView{Self: mesh.MemberInfo{Name: "gw-1", Roots: both, SVIDRoot: oldFP}, Members: []mesh.MemberInfo{
		{Pool: "region", Name: "gw-1", Role: "gateway", Region: "eu", Roots: both, SVIDRoot: oldFP},
		{Pool: "region", Name: "web-1", Role: "sidecar", Region: "eu", Roots: both, SVIDRoot: oldFP},
	}}
	out, err := runCmd(t, "ca", "status", "--admin", admin, "--dir", dir)
	if err != nil {
		t.Fatalf("every node at begin: %v\n%s", err, out)
	}
	if !strings.Contains(out, "trust "+oldFP+","+newFP+", SVIDs from "+oldFP) || !strings.Contains(out, "web-1") {
		t.Errorf("output:\n%s", out)
	}

	view.Members[1].Roots = []string{oldFP}
	out, err = runCmd(t, "ca", "status", "--admin", admin, "--dir", dir)
	if err == nil || !strings.Contains(err.Error(), "1 of 2 behind") || !strings.Contains(out, "behind: does not trust "+newFP) {
		t.Errorf("a node without the new root: %v\n%s", err, out)
	}

	view.Members[1].Roots = both
	view.Refused = []mesh.RefusedRecord{{Pool: "region", Name: "legacy-1", Reason: "chain not to the bundle: x509: certificate signed by unknown authority"}}
	out, err = runCmd(t, "ca", "status", "--admin", admin, "--dir", dir)
	if err == nil || !strings.Contains(out, "refused record of legacy-1 (region pool): chain not to the bundle") {
		t.Errorf("a refused record: %v\n%s", err, out)
	}

	// ca rotate switch --admin refuses while a node is behind, and runs
	// once every node has taken begin.
	view.Refused = nil
	view.Members[1].Roots = []string{oldFP}
	out, err = runCmd(t, "ca", "rotate", "switch", "--dir", dir, "--admin", admin)
	if err == nil || !strings.Contains(err.Error(), "refused, the step before has not reached every node") || !strings.Contains(out, "web-1") {
		t.Fatalf("switch with a node behind: %v\n%s", err, out)
	}
	if r, err := tlsmgr.ReadRotation(dir); err != nil || r.Step != tlsmgr.StepBegun {
		t.Fatalf("a refused switch changed the directory: %v %v", r, err)
	}
	view.Members[1].Roots = both
	if out, err := runCmd(t, "ca", "rotate", "switch", "--dir", dir, "--admin", admin); err != nil {
		t.Fatalf("switch with every node at begin: %v\n%s", err, out)
	}

	// Without --dir the asked node's own state is the target.
	view.Refused = nil
	view.Self.SVIDRoot = newFP
	out, err = runCmd(t, "ca", "status", "--admin", admin)
	if err == nil || !strings.Contains(out, "from node gw-1") || !strings.Contains(out, "SVID from "+oldFP+", not "+newFP) {
		t.Errorf("target from the node: %v\n%s", err, out)
	}
}
