package gossip

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// TestKeyRotation: three members rotate the pool key in the three steps
// (install everywhere, use everywhere, remove the old one everywhere)
// without a restart; records keep flowing and nobody leaves at any step.
// Then a node with only the new key joins, and one with only the old key
// cannot.
func TestKeyRotation(t *testing.T) {
	a, b, c := threeNodes(t)
	all := []*Cluster{a, b, c}
	newKey := bytes.Repeat([]byte{7}, 32)
	step := 0
	check := func(what string) {
		t.Helper()
		step++
		rec := []byte(strings.Repeat("r", step))
		if err := a.SetRecord(rec); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, what+": a's record everywhere, three members", func() bool {
			return hasRecord(b, "a", rec) && hasRecord(c, "a", rec) &&
				seesExactly(a, "a", "b", "c") && seesExactly(b, "a", "b", "c") && seesExactly(c, "a", "b", "c")
		})
	}
	if err := a.UseKey(newKey); err == nil {
		t.Fatal("UseKey of a key not installed succeeded")
	}
	for i, n := range all {
		if err := n.InstallKey(newKey); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			check("installed at a only")
		}
	}
	check("installed everywhere")
	for i, n := range all {
		if err := n.UseKey(newKey); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			check("used at a only") // b and c accept it already
		}
	}
	check("used everywhere")
	if err := a.RemoveKey(newKey); err == nil {
		t.Fatal("removing the key in use succeeded")
	}
	for _, n := range all {
		if err := n.RemoveKey(testKey); err != nil {
			t.Fatal(err)
		}
		if p, keys := n.KeyringKeys(); !bytes.Equal(p, newKey) || len(keys) != 1 {
			t.Fatalf("%s keyring after the rotation: primary %x, %d keys", n.Name, p, len(keys))
		}
	}
	check("old key removed")

	d := newNode(t, "d", joining(a), func(c *Cluster) { c.Key = newKey })
	waitFor(t, 10*time.Second, "d, with only the new key, joins", func() bool { return seesExactly(a, "a", "b", "c", "d") })
	old := newNode(t, "old", func(c *Cluster) { c.Key = testKey; c.Join = []string{a.Addr()} })
	time.Sleep(time.Second)
	if seesExactly(old, "a", "b", "c", "d", "old") || len(a.Members()) != 4 {
		t.Errorf("a node with only the removed key joined: a sees %v, old sees %v", names(a.Members()), names(old.Members()))
	}
	_ = d
}
