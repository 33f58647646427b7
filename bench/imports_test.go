package bench

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
)

// TestImports keeps the benchmark directory apart from meshd's packages:
// it measures the binary from outside, as a user runs it.
func TestImports(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-test", "-json=ImportPath", "./...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	seen := 0
	for dec.More() {
		var p struct{ ImportPath string }
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		seen++
		if strings.HasPrefix(p.ImportPath, "github.com/meshd/meshd") && !strings.HasPrefix(p.ImportPath, "github.com/meshd/meshd/bench") {
			t.Errorf("bench imports meshd package %s", p.ImportPath)
		}
	}
	if seen < 10 {
		t.Fatalf("go list returned %d packages: the check saw nothing", seen)
	}
}
