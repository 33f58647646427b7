package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// readmeBlock returns the first ```sh block after heading in README.md.
func readmeBlock(t *testing.T, heading string) string {
	t.Helper()
	b, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	i := strings.Index(s, "\n"+heading+"\n")
	if i < 0 {
		t.Fatalf("README.md has no heading %q", heading)
	}
	s = s[i:]
	start := strings.Index(s, "\n```sh\n")
	if start < 0 {
		t.Fatalf("README.md: no ```sh block after %q", heading)
	}
	s = s[start+len("\n```sh\n"):]
	end := strings.Index(s, "\n```")
	if end < 0 {
		t.Fatalf("README.md: the block after %q does not end", heading)
	}
	return s[:end+1]
}

// freePorts returns n distinct ports free for both TCP and UDP on
// 127.0.0.1 (gossip uses both), held until all are found so none repeats.
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var closers []func()
	defer func() {
		for _, c := range closers {
			c()
		}
	}()
	var ports []int
	for tries := 0; len(ports) < n && tries < 20*n; tries++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		pc, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			ln.Close()
			continue
		}
		closers = append(closers, func() { ln.Close() }, func() { pc.Close() })
		ports = append(ports, port)
	}
	if len(ports) < n {
		t.Fatalf("found %d free ports of %d", len(ports), n)
	}
	return ports
}

// TestREADMEShell runs the README's "A two-region mesh from a shell" as a
// user would paste it into a shell: the same commands, with two changes
// only: the binary this test built instead of `go build`, and free ports
// instead of the README's, since other programs may hold those here.
func TestREADMEShell(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("curl is not installed; .ci/run installs it")
		}
		t.Skip("curl is not installed: the README's block calls it")
	}
	block := readmeBlock(t, "## A two-region mesh from a shell")
	const build = "CGO_ENABLED=0 go build -o meshd .\n"
	if !strings.HasPrefix(block, build) {
		t.Fatalf("the README's block no longer starts with %q:\n%s", build, block)
	}
	block = "cp " + meshdBin + " ./meshd\n" + strings.TrimPrefix(block, build)

	addrRE := regexp.MustCompile(`127\.0\.0\.1:(\d+)`)
	var readmePorts []string
	seen := map[string]bool{}
	for _, m := range addrRE.FindAllStringSubmatch(block, -1) {
		if !seen[m[1]] {
			seen[m[1]] = true
			readmePorts = append(readmePorts, m[1])
		}
	}
	free := freePorts(t, len(readmePorts))
	port := map[string]string{}
	for i, p := range readmePorts {
		port[p] = fmt.Sprint(free[i])
	}
	block = addrRE.ReplaceAllStringFunc(block, func(a string) string {
		return "127.0.0.1:" + port[strings.TrimPrefix(a, "127.0.0.1:")]
	})

	dir := t.TempDir()
	adminDir, err := os.MkdirTemp("", "meshd-readme-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(adminDir)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-e", "-c", block)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "MESHD_ADMIN_DIR="+adminDir+"/run", "http_proxy=", "HTTP_PROXY=", "no_proxy=")
	// Its own process group: the nodes it starts in the background are
	// stopped with it, by the group's ID, whatever the block did.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Start()
	if err != nil {
		t.Fatal(err)
	}
	pgid := cmd.Process.Pid
	defer syscall.Kill(-pgid, syscall.SIGKILL)
	err = cmd.Wait()
	got := out.String()
	if err != nil {
		t.Fatalf("the README's block failed: %v\n%s", err, got)
	}
	for _, want := range []string{
		`"service":"web"`, `"instance":"web-eu-1"`, // through the edge
		`"instance":"api-us-1"`, `"region":"us"`, // through web's sidecar, twice
		"edge-eu", "gw-us", // meshd members
	} {
		if !strings.Contains(got, want) {
			t.Errorf("the block's output lacks %s:\n%s", want, got)
		}
	}
	if n := strings.Count(got, `"instance":"api-us-1"`); n != 2 {
		t.Errorf("api answered %d of the 2 calls through web's sidecar:\n%s", n, got)
	}

	// The block ends by stopping its nodes: they drain and exit. Wait
	// (bounded) for the group to be gone; the deferred kill is the backstop.
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) && syscall.Kill(-pgid, 0) == nil {
		time.Sleep(100 * time.Millisecond)
	}
	if syscall.Kill(-pgid, 0) == nil {
		t.Errorf("nodes the block started still run 20 s after its kill")
	}
}
