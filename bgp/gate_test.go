package bgp

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

func TestGateUpdate(t *testing.T) {
	type step struct {
		at       time.Duration // since t0
		canServe bool
		announce bool
		recheck  time.Duration
	}
	tests := []struct {
		name    string
		upHold  time.Duration
		steps   []step
		changes uint64
	}{
		{
			name: "hold-down before the first announcement",
			steps: []step{
				{0, true, false, 5 * time.Second},
				{2 * time.Second, true, false, 3 * time.Second},
				{4999 * time.Millisecond, true, false, time.Millisecond},
				{5 * time.Second, true, true, 0},
				{60 * time.Second, true, true, 0},
			},
			changes: 1,
		},
		{
			name: "down is immediate, up waits again",
			steps: []step{
				{0, true, false, 5 * time.Second},
				{5 * time.Second, true, true, 0},
				{6 * time.Second, false, false, 0},
				{7 * time.Second, true, false, 5 * time.Second},
				{11 * time.Second, true, false, time.Second},
				{12 * time.Second, true, true, 0},
			},
			changes: 3,
		},
		{
			name: "flapping edge never announces",
			steps: []step{
				{0, true, false, 5 * time.Second},
				{4 * time.Second, false, false, 0},
				{5 * time.Second, true, false, 5 * time.Second},
				{9 * time.Second, false, false, 0},
				{10 * time.Second, true, false, 5 * time.Second},
				{14 * time.Second, false, false, 0},
			},
			changes: 0,
		},
		{
			name:   "custom hold-down",
			upHold: 30 * time.Second,
			steps: []step{
				{0, true, false, 30 * time.Second},
				{29 * time.Second, true, false, time.Second},
				{30 * time.Second, true, true, 0},
			},
			changes: 1,
		},
		{
			name:   "no hold-down",
			upHold: -1,
			steps: []step{
				{0, false, false, 0},
				{time.Second, true, true, 0},
				{2 * time.Second, false, false, 0},
			},
			changes: 2,
		},
		{
			name: "cannot serve from the start",
			steps: []step{
				{0, false, false, 0},
				{10 * time.Second, false, false, 0},
			},
			changes: 0,
		},
	}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := &Gate{UpHold: tt.upHold}
			for _, s := range tt.steps {
				d := g.Update(t0.Add(s.at), s.canServe)
				if d.Announce != s.announce || d.Recheck != s.recheck {
					t.Fatalf("at %v canServe=%v: got %+v, want announce=%v recheck=%v", s.at, s.canServe, d, s.announce, s.recheck)
				}
				st := g.Status()
				if st.Announce != s.announce || st.CanServe != s.canServe {
					t.Fatalf("at %v: status %+v disagrees with decision", s.at, st)
				}
			}
			if got := g.Status().Changes; got != tt.changes {
				t.Errorf("changes = %d, want %d", got, tt.changes)
			}
		})
	}
}

type applyLog struct {
	mu    sync.Mutex
	calls []applyCall
	err   func(announce bool) error
}

type applyCall struct {
	at       time.Time
	announce bool
}

func (l *applyLog) apply(_ context.Context, announce bool) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.calls = append(l.calls, applyCall{time.Now(), announce})
	if l.err != nil {
		return l.err(announce)
	}
	return nil
}

func (l *applyLog) snapshot() []applyCall {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]applyCall(nil), l.calls...)
}

// TestGateRun drives Run in a synctest bubble, where time is fake and
// advances only when every goroutine is blocked, so the test observes the
// exact instants at which the gate announces and withdraws.
func TestGateRun(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		t0 := time.Now()
		ready := make(chan bool)
		var log applyLog
		g := &Gate{}
		done := make(chan error, 1)
		go func() { done <- g.Run(ctx, ready, log.apply) }()

		synctest.Wait()
		ready <- true               // t0: can serve
		time.Sleep(7 * time.Second) // announced at t0+5s
		ready <- false              // t0+7s: withdraw at once
		time.Sleep(time.Second)     //
		ready <- true               // t0+8s: hold-down again
		time.Sleep(2 * time.Second) //
		ready <- false              // t0+10s: flap before the hold-down ends
		ready <- true               // t0+10s
		time.Sleep(6 * time.Second) // announced at t0+15s
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("Run = %v, want nil after cancel", err)
		}

		want := []struct {
			at       time.Duration
			announce bool
		}{
			{0, false}, // initial state: withdrawn
			{5 * time.Second, true},
			{7 * time.Second, false},
			{15 * time.Second, true},
		}
		got := log.snapshot()
		if len(got) != len(want) {
			t.Fatalf("apply calls = %v, want %v", got, want)
		}
		for i, w := range want {
			if got[i].at.Sub(t0) != w.at || got[i].announce != w.announce {
				t.Errorf("call %d = %+v at %v, want announce=%v at %v", i, got[i], got[i].at.Sub(t0), w.announce, w.at)
			}
		}
	})
}

func TestGateRunRetriesAndStops(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		t0 := time.Now()
		ready := make(chan bool)
		failures := 2
		log := applyLog{err: func(announce bool) error {
			if announce && failures > 0 {
				failures--
				return errors.New("gobgp busy")
			}
			if announce {
				return ErrStopped
			}
			return nil
		}}
		g := &Gate{UpHold: -1, Logger: slog.New(slog.DiscardHandler)}
		done := make(chan error, 1)
		go func() { done <- g.Run(t.Context(), ready, log.apply) }()
		ready <- true
		err := <-done
		if !errors.Is(err, ErrStopped) {
			t.Fatalf("Run = %v, want ErrStopped", err)
		}
		got := log.snapshot()
		// withdrawn at start, then announce at 0s (fails), 1s (fails), 2s (stopped).
		if len(got) != 4 || got[3].at.Sub(t0) != 2*time.Second {
			t.Fatalf("apply calls = %+v, want 4 with the last one at 2s", got)
		}
	})
}

func TestGateRunAcceptsDraining(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ready := make(chan bool)
		log := applyLog{err: func(announce bool) error {
			if announce {
				return ErrDraining
			}
			return nil
		}}
		g := &Gate{UpHold: -1}
		done := make(chan error, 1)
		go func() { done <- g.Run(t.Context(), ready, log.apply) }()
		ready <- true
		time.Sleep(time.Minute) // no retries: draining is final
		ready <- false          // a withdrawal still goes through
		close(ready)
		if err := <-done; err != nil {
			t.Fatalf("Run = %v, want nil when the signal closes", err)
		}
		got := log.snapshot()
		if len(got) != 3 || got[1].announce != true || got[2].announce != false {
			t.Fatalf("apply calls = %+v, want withdraw, announce (draining), withdraw", got)
		}
	})
}
