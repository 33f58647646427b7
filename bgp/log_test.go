package bgp

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestLibraryLogger(t *testing.T) {
	var buf bytes.Buffer
	base := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelWarn}))
	var errs atomic.Uint64
	var fatal []string
	l := newLibraryLogger(base, errs.Add, func(msg string) { fatal = append(fatal, msg) }).With("Topic", "Peer")

	l.Info("chatty")
	l.Warn("slow peer")
	l.Error("bad update")
	l.Log(context.Background(), LevelFatal, "cannot go on")

	out := buf.String()
	if strings.Contains(out, "chatty") {
		t.Errorf("info record passed a warn-level base logger: %s", out)
	}
	for _, want := range []string{"slow peer", "bad update", "cannot go on", "component=gobgp", "Topic=Peer"} {
		if !strings.Contains(out, want) {
			t.Errorf("log output lacks %q:\n%s", want, out)
		}
	}
	if errs.Load() != 2 {
		t.Errorf("error count = %d, want 2 (error and fatal)", errs.Load())
	}
	if len(fatal) != 1 || fatal[0] != "cannot go on" {
		t.Errorf("fatal calls = %q", fatal)
	}

	// Errors are counted and fatals acted on even when the base logger
	// discards everything.
	quiet := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: LevelFatal + 1}))
	fatal = nil
	ql := newLibraryLogger(quiet, errs.Add, func(msg string) { fatal = append(fatal, msg) })
	ql.Error("hidden error")
	ql.Log(context.Background(), LevelFatal, "hidden fatal")
	if errs.Load() != 4 || len(fatal) != 1 {
		t.Errorf("with a silent base: errors %d, fatal %q", errs.Load(), fatal)
	}

	defer func() {
		if recover() == nil {
			t.Error("a library logger without a fatal handler was built")
		}
	}()
	newLibraryLogger(base, nil, nil)
}

// TestSpeakerFatalStops: a fatal record from gobgp stops the speaker, so
// its routes go away, and Done and Err say so.
func TestSpeakerFatalStops(t *testing.T) {
	obs := startObserver(t, "127.0.0.1", observerPeer("127.0.0.1", 0))
	sp := testSpeaker(t, Peer{Addr: netip.MustParseAddr("127.0.0.1"), ASN: observerASN, Port: uint16(obs.port)})
	sp.Logger = slog.New(slog.DiscardHandler)
	if err := sp.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sp.Stop(context.Background()) })
	eventually(t, 15*time.Second, "session", obs.established)
	if err := sp.SetAnnounced(t.Context(), true); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "announcement", func() bool { return obs.has(anycast4) })

	sp.bgp.Log().Log(context.Background(), LevelFatal, "rib corrupted")

	select {
	case <-sp.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("speaker still running after a fatal library error")
	}
	if err := sp.Err(); err == nil || !strings.Contains(err.Error(), "rib corrupted") {
		t.Errorf("Err = %v", err)
	}
	if err := sp.SetAnnounced(t.Context(), true); !errors.Is(err, ErrStopped) || !strings.Contains(err.Error(), "rib corrupted") {
		t.Errorf("SetAnnounced after fatal = %v", err)
	}
	eventually(t, 5*time.Second, "withdrawal after fatal", func() bool { return !obs.has(anycast4) })
	if st := sp.Status(); st.Running || !strings.Contains(st.Error, "rib corrupted") {
		t.Errorf("status after fatal = %+v", st)
	}
}
