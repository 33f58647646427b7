package gossip

import (
	"encoding/json"
	"errors"
	"io"
	"os/exec"
	"strings"
	"testing"
)

// TestImports keeps gossip a leaf: it imports no other meshd package, and no
// library that belongs to another leaf (ARCHITECTURE.md, STYLE.md §10-11).
func TestImports(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("go tool not on PATH")
	}
	out, err := exec.Command("go", "list", "-deps", "-json=ImportPath,Module", ".").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	const self = "github.com/meshd/meshd/gossip"
	otherLeaves := []string{
		"github.com/osrg/gobgp",            // bgp
		"github.com/dgraph-io/ristretto",   // cache
		"github.com/spiffe/go-spiffe",      // tlsmgr
		"github.com/caddyserver/certmagic", // tlsmgr
		"github.com/quic-go/quic-go",       // proxy
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	seen := 0
	for {
		var p struct{ ImportPath string }
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		seen++
		if strings.HasPrefix(p.ImportPath, "github.com/meshd/meshd") && p.ImportPath != self {
			t.Errorf("gossip depends on meshd package %s", p.ImportPath)
		}
		for _, l := range otherLeaves {
			if strings.HasPrefix(p.ImportPath, l) {
				t.Errorf("gossip depends on %s, which belongs to another leaf", p.ImportPath)
			}
		}
	}
	if seen < 10 {
		t.Fatalf("go list returned only %d packages", seen)
	}
}
