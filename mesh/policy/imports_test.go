package policy

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
)

// TestImports keeps policy pure: the standard library and the YAML
// parser only, so that `meshd check policy`, the fuzzers and every node
// read a document through the same few dependencies.
func TestImports(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-json=ImportPath,Standard", ".").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	seen := 0
	for dec.More() {
		var p struct {
			ImportPath string
			Standard   bool
		}
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		seen++
		switch {
		case p.Standard, p.ImportPath == "github.com/meshd/meshd/mesh/policy", p.ImportPath == "go.yaml.in/yaml/v3":
		default:
			t.Errorf("policy imports %s: only the standard library and go.yaml.in/yaml/v3 are allowed", p.ImportPath)
		}
	}
	if seen < 10 {
		t.Fatalf("go list returned %d packages: the check saw nothing", seen)
	}
}
