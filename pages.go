package main

import (
	"context"
	"log/slog"
	"time"
)

// dropStartupPages waits until the node serves, and a few seconds more for
// its first gossip rounds and SVID renewal timers to have run, then drops
// the binary's pages start-up left mapped (dropImagePages).
func dropStartupPages(ctx context.Context, log *slog.Logger, ready func() bool) {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for !ready() {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
	select {
	case <-ctx.Done():
		return
	case <-time.After(startupPagesDelay):
	}
	n, err := dropImagePages()
	if err != nil {
		log.Debug("could not drop start-up pages", "err", err)
		return
	}
	log.Debug("dropped start-up pages of the binary", "bytes", n)
}

// startupPagesDelay is how long after it is ready a node drops its
// start-up pages.
const startupPagesDelay = 5 * time.Second
