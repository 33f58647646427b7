package proxy

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImports keeps proxy a leaf: it imports no other meshd package, and
// of the third-party libraries only quic-go (which lives here and nowhere
// else) and what quic-go itself needs. golang.org/x/net/http2 is for tests
// only (the raw frame client of the abuse tests): the listeners configure
// HTTP/2 through net/http.
func TestImports(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}} {{.Standard}}", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	const self = "github.com/meshd/meshd/proxy"
	allowed := []string{"github.com/quic-go/", "golang.org/x/"}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		path, std, _ := strings.Cut(line, " ")
		switch {
		case path == self:
		case strings.HasPrefix(path, "github.com/meshd/meshd"):
			t.Errorf("proxy imports meshd package %s", path)
		case path == "golang.org/x/net/http2":
			t.Errorf("proxy imports %s outside its tests", path)
		case std == "true":
		case !hasAnyPrefix(path, allowed):
			t.Errorf("proxy imports third-party package %s (only quic-go belongs to proxy)", path)
		}
	}
}

func hasAnyPrefix(s string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}
