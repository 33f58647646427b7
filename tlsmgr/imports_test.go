package tlsmgr

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImports keeps tlsmgr a leaf: it must not import another meshd package
// nor a library owned by another leaf (ARCHITECTURE.md "Packages").
func TestImports(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go command not on PATH")
	}
	out, err := exec.Command(goBin, "list", "-deps", "-f", "{{.ImportPath}}", ".").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	const self = "github.com/meshd/meshd/tlsmgr"
	forbidden := []string{
		"github.com/meshd/meshd/", // sibling packages
		"github.com/osrg/gobgp",   // bgp
		"github.com/hashicorp/memberlist",
		"github.com/hashicorp/go-metrics", // gossip: memberlist reports through it
		"github.com/dgraph-io/ristretto",
		"github.com/quic-go/",
	}
	sawSelf := false
	for _, dep := range strings.Fields(string(out)) {
		if dep == self {
			sawSelf = true
			continue
		}
		for _, f := range forbidden {
			if strings.HasPrefix(dep, f) {
				t.Errorf("tlsmgr depends on %s (forbidden prefix %s)", dep, f)
			}
		}
	}
	if !sawSelf {
		t.Fatalf("go list output does not include %s; wrong directory?\n%s", self, out)
	}
}
