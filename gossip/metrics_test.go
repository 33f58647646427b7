package gossip

import (
	"testing"
	"time"
)

// TestStats: two pools in one process keep their memberlist reports
// apart; a member that stops answering is suspected, and the suspicion is
// counted.
func TestStats(t *testing.T) {
	a := newNode(t, "a")
	b := newNode(t, "b", joining(a))
	other := newNode(t, "lone") // another pool in the same process
	waitFor(t, 5*time.Second, "a and b see each other alive", func() bool {
		sa, sb := a.Stats(), b.Stats()
		return sa.Alive == 2 && sb.Alive == 2 && sa.PacketsReceived > 0 && sb.PacketsReceived > 0
	})
	sa := a.Stats()
	if sa.PacketsSent == 0 || sa.PacketBytesSent < sa.PacketsSent || sa.PacketBytesReceived < sa.PacketsReceived {
		t.Errorf("a's packets: %+v", sa)
	}
	if sa.StreamsOpened+sa.StreamsAccepted == 0 {
		t.Errorf("a: no join stream counted: %+v", sa)
	}
	if so := other.Stats(); so.Alive != 1 || so.PacketsReceived != 0 || so.StreamsAccepted != 0 {
		t.Errorf("a lone pool counts another pool's traffic: %+v", so)
	}

	// b stops without leaving: a's probes fail and it suspects b.
	before := a.Stats().SuspectMsgs
	b.Shutdown()
	waitFor(t, 10*time.Second, "a suspects b", func() bool {
		st := a.Stats()
		return st.SuspectMsgs > before && (st.Suspect == 1 || st.Alive == 1)
	})
	if st := b.Stats(); st != (Stats{}) {
		t.Errorf("a pool after Shutdown reports %+v, want zero", st)
	}
}
