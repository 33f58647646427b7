package main

import (
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestReleaseBuild: release/build.sh makes a static linux/amd64 binary
// within the size budget whose `meshd version` names the stamped
// version, and a .deb holding it and the systemd units.
func TestReleaseBuild(t *testing.T) {
	if testing.Short() {
		t.Skip("builds meshd again: skipped with -short")
	}
	dist := t.TempDir()
	cmd := exec.Command("bash", "release/build.sh", "9.8.7-test")
	cmd.Env = append(os.Environ(), "ARCHS=amd64", "DIST="+dist)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("release/build.sh: %v\n%s", err, out)
	}
	t.Logf("%s", out)
	bin := filepath.Join(dist, "meshd-9.8.7-test-linux-amd64")
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("the release binary is dynamically linked (%v)", p.Type)
		}
	}
	f.Close()
	v, err := exec.Command(bin, "version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(v), "meshd 9.8.7-test (go1.") {
		t.Errorf("meshd version: %q, %v", v, err)
	}
	if _, err := exec.LookPath("dpkg-deb"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("dpkg-deb is missing: .ci/run installs it")
		}
		t.Skip("dpkg-deb is not installed: the .deb is not checked")
	}
	list, err := exec.Command("dpkg-deb", "-c", filepath.Join(dist, "meshd_9.8.7-test_amd64.deb")).CombinedOutput()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"./usr/bin/meshd", "./lib/systemd/system/meshd-edge.service",
		"./lib/systemd/system/meshd-gateway.service", "./lib/systemd/system/meshd-sidecar.service"} {
		if !strings.Contains(string(list), want) {
			t.Errorf("the .deb has no %s:\n%s", want, list)
		}
	}
}

// TestSystemdUnits: the units of deploy/systemd pass systemd-analyze
// verify (with ExecStart pointed at a meshd that exists).
func TestSystemdUnits(t *testing.T) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("systemd-analyze is missing: .ci/run installs systemd")
		}
		t.Skip("systemd-analyze is not installed")
	}
	units, _ := filepath.Glob("deploy/systemd/*.service")
	if len(units) != 3 {
		t.Fatalf("deploy/systemd has %d units, want edge, gateway and sidecar", len(units))
	}
	dir := t.TempDir()
	for _, u := range units {
		b, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, filepath.Base(u))
		if err := os.WriteFile(p, []byte(strings.ReplaceAll(string(b), "/usr/bin/meshd", meshdBin)), 0o644); err != nil {
			t.Fatal(err)
		}
		out, _ := exec.Command(sa, "verify", p).CombinedOutput()
		var problems []string
		for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if strings.Contains(l, filepath.Base(u)) {
				problems = append(problems, l)
			}
		}
		if len(problems) > 0 {
			t.Errorf("systemd-analyze verify %s:\n%s", filepath.Base(u), strings.Join(problems, "\n"))
		}
	}
}
