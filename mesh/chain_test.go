package mesh

import (
	"testing"

	"github.com/meshd/meshd/mesh/policy"
)

// A split is exact at every scale: any 100 consecutive requests of a 90/10
// route at one node send 10 ± 2 to v2, and a 0/100 split never sends one
// to the subset weighted 0.
func TestSplitDraws(t *testing.T) {
	doc, err := policy.Parse("p.yaml", []byte("services:\n  web:\n    split: {v1: 90, v2: 10}\n  db:\n    split: {blue: 0, green: 100}\n"))
	if err != nil {
		t.Fatal(err)
	}
	tab := compileRoutes(doc)
	web := doc.Services["web"].Default
	var picks []string
	for range 5000 {
		picks = append(picks, web.PickSubset(tab.draw(web)))
	}
	for i := 0; i+100 <= len(picks); i += 37 {
		n := 0
		for _, p := range picks[i : i+100] {
			if p == "v2" {
				n++
			}
		}
		if n < 8 || n > 12 {
			t.Fatalf("requests %d to %d: %d went to v2, want 10 ± 2", i, i+100, n)
		}
	}
	db := doc.Services["db"].Default
	for range 1000 {
		if s := db.PickSubset(tab.draw(db)); s != "green" {
			t.Fatalf("0/100 split picked %q", s)
		}
	}
}
