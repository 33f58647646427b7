package main

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

// TestWaitPrintsReasons: `meshd wait` prints each new reason /readyz
// gives while a node starts (once each, however often it asks), then
// ready, and exits 0.
func TestWaitPrintsReasons(t *testing.T) {
	var asked atomic.Int64
	admin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := asked.Add(1)
		switch {
		case n <= 3:
			http.Error(w, "no SVID yet", http.StatusServiceUnavailable)
		case n <= 5:
			http.Error(w, "no catalog yet: 0 members", http.StatusServiceUnavailable)
		default:
			w.Write([]byte("ready\n"))
		}
	}))
	defer admin.Close()
	var out, errb bytes.Buffer
	addr := strings.TrimPrefix(admin.URL, "http://")
	if err := cmdWait(context.Background(), []string{"--admin", addr, "--timeout", "20s"}, &out, &errb); err != nil {
		t.Fatalf("%v: %s", err, errb.String())
	}
	want := addr + ": waiting: no SVID yet\n" + addr + ": waiting: no catalog yet: 0 members\n"
	if errb.String() != want || out.String() != addr+": ready\n" {
		t.Errorf("stderr %q, stdout %q; want %q and ready", errb.String(), out.String(), want)
	}
}
