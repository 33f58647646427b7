package proxy

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImports keeps proxy a leaf: it imports no other meshd package and no
// third-party library (it is built on the standard library only).
func TestImports(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}} {{.Standard}}", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	const self = "github.com/meshd/meshd/proxy"
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		path, std, _ := strings.Cut(line, " ")
		switch {
		case path == self:
		case strings.HasPrefix(path, "github.com/meshd/meshd"):
			t.Errorf("proxy imports meshd package %s", path)
		case std != "true":
			t.Errorf("proxy imports third-party package %s", path)
		}
	}
}
