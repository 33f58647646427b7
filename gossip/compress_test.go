package gossip

import (
	"bytes"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

// A LAN pool sends its packets uncompressed (each compressed packet costs
// a 64 KiB LZW table); a member that still compresses, as an older meshd
// did, is understood, and understands, both ways: small records by
// broadcast and a large one over TCP.
func TestLANUncompressedInteroperates(t *testing.T) {
	t.Parallel()
	if cfg, _ := LAN.config(); cfg.EnableCompression {
		t.Error("LAN profile compresses its packets")
	}
	if cfg, _ := WAN.config(); !cfg.EnableCompression {
		t.Error("WAN profile does not compress its packets")
	}
	compressing := func(c *Cluster) {
		c.tune = func(cfg *memberlist.Config, _ *timings) { cfg.EnableCompression = true }
	}
	a := newNode(t, "a")
	b := newNode(t, "b", compressing, joining(a))
	big := bytes.Repeat([]byte("0123456789abcdef"), 40<<10/16)
	for _, step := range []struct {
		what   string
		ra, rb []byte
	}{{"small records", []byte("rec-a"), []byte("rec-b")}, {"40 KiB records", append([]byte("a"), big...), append([]byte("b"), big...)}} {
		if err := a.SetRecord(step.ra); err != nil {
			t.Fatal(err)
		}
		if err := b.SetRecord(step.rb); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, step.what+" both ways", func() bool {
			return hasRecord(a, "b", step.rb) && hasRecord(b, "a", step.ra)
		})
	}
}
