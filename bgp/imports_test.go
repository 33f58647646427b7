package bgp

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImports keeps bgp a leaf: it must import no other meshd package and
// none of the libraries that belong to other leaves (STYLE.md: each
// third-party library lives in one leaf).
func TestImports(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	forbidden := []string{
		"github.com/meshd/meshd/",
		"github.com/hashicorp/memberlist",
		"github.com/hashicorp/go-metrics", // gossip: memberlist reports through it
		"github.com/dgraph-io/ristretto",
		"github.com/spiffe/go-spiffe",
		"github.com/quic-go/",
		"github.com/caddyserver/",
		"go.yaml.in/yaml",
	}
	deps := strings.Fields(string(out))
	if len(deps) < 10 {
		t.Fatalf("go list returned only %d packages; the check would prove nothing", len(deps))
	}
	for _, dep := range deps {
		if dep == "github.com/meshd/meshd/bgp" {
			continue
		}
		for _, f := range forbidden {
			if strings.HasPrefix(dep, f) {
				t.Errorf("bgp imports %s (forbidden prefix %s)", dep, f)
			}
		}
	}
}
