package bgp

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"
)

// DefaultUpHold is the hold-down a [Gate] applies before announcing.
const DefaultUpHold = 5 * time.Second

// Gate is the health gate between the mesh's "this edge can serve" signal
// and the announcement: it says withdraw as soon as the edge cannot serve,
// and announce only once the edge has been able to serve for UpHold without
// interruption. A flapping edge therefore keeps its route withdrawn instead
// of flapping it across the internet, where route flap damping would
// punish it for much longer than the flap (RFC 2439, RFC 7196).
//
// The hold-down also applies to the first announcement after start, so a
// crash-looping edge never announces. The zero Gate is ready to use; its
// methods are safe for concurrent use.
type Gate struct {
	// UpHold is how long the edge must be able to serve, without
	// interruption, before the gate says announce. Default 0 means
	// DefaultUpHold (5 s); negative means no hold-down.
	UpHold time.Duration
	// Logger receives Run's errors. Default: slog.Default().
	Logger *slog.Logger

	mu       sync.Mutex
	canServe bool
	upSince  time.Time // when canServe last became true
	announce bool
	since    time.Time // when announce last changed
	changes  uint64
}

// Decision is the gate's answer to one observation.
type Decision struct {
	// Announce says whether the prefixes should be announced now.
	Announce bool
	// Recheck, when positive, is how long until the decision changes by
	// itself (the hold-down ends) if the signal stays the same: call Update
	// again after it.
	Recheck time.Duration
}

// GateStatus is the gate's state for the admin API.
type GateStatus struct {
	CanServe bool      `json:"can_serve"`
	Announce bool      `json:"announce"`
	Since    time.Time `json:"since,omitzero"`
	Changes  uint64    `json:"changes"`
}

func (g *Gate) upHold() time.Duration {
	switch {
	case g.UpHold == 0:
		return DefaultUpHold
	case g.UpHold < 0:
		return 0
	}
	return g.UpHold
}

// Update records that at time now the edge can (or cannot) serve and
// returns what to announce. It only computes; it never blocks or sleeps,
// so it is tested with any clock.
func (g *Gate) Update(now time.Time, canServe bool) Decision {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !canServe {
		g.canServe = false
		g.upSince = time.Time{}
		g.setLocked(now, false)
		return Decision{}
	}
	if !g.canServe {
		g.canServe = true
		g.upSince = now
	}
	if g.announce {
		return Decision{Announce: true}
	}
	if left := g.upSince.Add(g.upHold()).Sub(now); left > 0 {
		return Decision{Recheck: left}
	}
	g.setLocked(now, true)
	return Decision{Announce: true}
}

func (g *Gate) setLocked(now time.Time, announce bool) {
	if g.announce != announce || g.since.IsZero() {
		if g.announce != announce {
			g.changes++
		}
		g.announce = announce
		g.since = now
	}
}

// Status returns the gate's current state.
func (g *Gate) Status() GateStatus {
	g.mu.Lock()
	defer g.mu.Unlock()
	return GateStatus{CanServe: g.canServe, Announce: g.announce, Since: g.since, Changes: g.changes}
}

// Run drives apply from the canServe signal until ctx ends or canServe is
// closed; both return nil. The edge starts as unable to serve. apply is
// called with each changed decision (typically [Speaker.SetAnnounced]);
// a failed apply is retried every second, except that ErrDraining is
// accepted as final for announcing, and ErrStopped ends Run with that error.
func (g *Gate) Run(ctx context.Context, canServe <-chan bool, apply func(context.Context, bool) error) error {
	log := g.Logger
	if log == nil {
		log = slog.Default()
	}
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	var (
		ready   bool
		applied = -1 // -1 unknown, 0 withdrawn, 1 announced
	)
	for {
		d := g.Update(time.Now(), ready)
		want := 0
		if d.Announce {
			want = 1
		}
		wait := d.Recheck
		if want != applied {
			err := apply(ctx, d.Announce)
			switch {
			case err == nil, d.Announce && errors.Is(err, ErrDraining):
				applied = want
			case errors.Is(err, ErrStopped):
				return err
			case ctx.Err() != nil:
				return nil
			default:
				log.Warn("bgp gate: apply failed; retrying", "announce", d.Announce, "err", err)
				if wait <= 0 || wait > retryInterval {
					wait = retryInterval
				}
			}
		}
		if wait > 0 {
			timer.Reset(wait)
		}
		select {
		case <-ctx.Done():
			return nil
		case v, ok := <-canServe:
			if !ok {
				return nil
			}
			ready = v
		case <-timer.C:
		}
		timer.Stop()
	}
}
