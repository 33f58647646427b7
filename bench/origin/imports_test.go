package main

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
)

// TestImports keeps the benchmark origin free of meshd's own packages (and
// of any third-party library), so it measures the same thing for every
// server and builds with nothing but the standard library.
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
		case p.ImportPath == "github.com/meshd/meshd/bench/origin":
		case strings.HasPrefix(p.ImportPath, "github.com/meshd/meshd"):
			t.Errorf("origin imports meshd package %s", p.ImportPath)
		case !p.Standard && !strings.HasPrefix(p.ImportPath, "vendor/"):
			t.Errorf("origin imports non-standard package %s", p.ImportPath)
		}
	}
	if seen < 10 {
		t.Fatalf("go list returned %d packages: the check saw nothing", seen)
	}
}
