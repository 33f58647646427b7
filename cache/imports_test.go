package cache

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
)

// TestImports keeps cache a leaf: no other meshd package, and none of
// the libraries that belong to other leaves.
func TestImports(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-json=ImportPath", ".").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	forbidden := []string{
		"github.com/hashicorp/memberlist", "github.com/hashicorp/go-metrics", "github.com/osrg/gobgp", "github.com/quic-go",
		"github.com/spiffe", "github.com/caddyserver", "go.yaml.in/yaml",
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	seen := 0
	for dec.More() {
		var p struct{ ImportPath string }
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		seen++
		if strings.HasPrefix(p.ImportPath, "github.com/meshd/meshd/") && p.ImportPath != "github.com/meshd/meshd/cache" {
			t.Errorf("cache imports meshd package %s", p.ImportPath)
		}
		for _, f := range forbidden {
			if strings.HasPrefix(p.ImportPath, f) {
				t.Errorf("cache imports %s, which belongs to another leaf", p.ImportPath)
			}
		}
	}
	if seen < 10 {
		t.Fatalf("go list returned %d packages: the check saw nothing", seen)
	}
}
