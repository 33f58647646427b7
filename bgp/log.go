package bgp

import (
	"context"
	"log/slog"
)

// LevelFatal is the slog level at or above which a gobgp log record is
// treated as fatal: the speaker stops and reports the message through
// [Speaker.Err]. gobgp v4 logs through *slog.Logger and has no fatal level
// of its own (its unrecoverable errors are panics), so this level is the
// one place where a library that wants to die cannot be ignored.
const LevelFatal = slog.LevelError + 4

// libraryHandler is the slog.Handler given to gobgp. It tags records with
// component=gobgp, counts errors for the metrics, and turns a fatal record
// into a call of onFatal, which never lets it pass silently.
type libraryHandler struct {
	next     slog.Handler
	countErr func(uint64) uint64
	onFatal  func(msg string)
}

var _ slog.Handler = (*libraryHandler)(nil)

// newLibraryLogger wraps base for gobgp. onFatal must not be nil: a logger
// whose fatal path could return silently is a bug, so it panics at once.
func newLibraryLogger(base *slog.Logger, countErr func(uint64) uint64, onFatal func(string)) *slog.Logger {
	if onFatal == nil {
		panic("bgp: library logger needs a fatal handler")
	}
	return slog.New(&libraryHandler{
		next:     base.With("component", "gobgp").Handler(),
		countErr: countErr,
		onFatal:  onFatal,
	})
}

func (h *libraryHandler) Enabled(ctx context.Context, l slog.Level) bool {
	// Errors and fatal records are always handled, even when the base
	// logger would discard them, so the counter and the fatal path work.
	return l >= slog.LevelError || h.next.Enabled(ctx, l)
}

func (h *libraryHandler) Handle(ctx context.Context, r slog.Record) error {
	var err error
	if h.next.Enabled(ctx, r.Level) {
		err = h.next.Handle(ctx, r)
	}
	if r.Level >= slog.LevelError && h.countErr != nil {
		h.countErr(1)
	}
	if r.Level >= LevelFatal {
		h.onFatal(r.Message)
	}
	return err
}

func (h *libraryHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	c := *h
	c.next = h.next.WithAttrs(attrs)
	return &c
}

func (h *libraryHandler) WithGroup(name string) slog.Handler {
	c := *h
	c.next = h.next.WithGroup(name)
	return &c
}
