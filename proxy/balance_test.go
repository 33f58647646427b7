package proxy

import (
	"net/http"
	"testing"
	"time"
)

// TestInFlightAndEjection: the Handler counts requests in flight per
// upstream until their responses end, and ejects an upstream it could not
// reach EjectAfter times in a row until it is reached again.
func TestInFlightAndEjection(t *testing.T) {
	release := make(chan struct{})
	entered := make(chan struct{}, 1)
	_, slow := plainUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		<-release
		w.Write([]byte("done"))
	}))
	addr := startProxy(t, &Handler{Route: fixedRoute(slow)})
	done := make(chan int, 1)
	go func() {
		code, _ := getStatus(http.DefaultClient, "http://"+addr+"/")
		done <- code
	}()
	select {
	case <-entered:
	case <-time.After(5 * time.Second):
		t.Fatal("request never reached the upstream")
	}
	if n := slow.InFlight(); n != 1 {
		t.Fatalf("in flight during the request = %d, want 1", n)
	}
	close(release)
	if code := <-done; code != 200 {
		t.Fatalf("status %d", code)
	}
	deadline := time.Now().Add(5 * time.Second)
	for slow.InFlight() != 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := slow.InFlight(); n != 0 {
		t.Fatalf("in flight after the response = %d, want 0", n)
	}

	a := refusedAddr(t)
	dead := &Upstream{Key: a, Addr: a}
	_, good := plainUpstream(t, http.HandlerFunc(echoHandler))
	paddr := startProxy(t, &Handler{Route: fixedRoute(dead, good)})
	for i := 1; i <= EjectAfter; i++ {
		if dead.Ejected(time.Now()) {
			t.Fatalf("ejected after %d failures, want %d", i-1, EjectAfter)
		}
		if code, err := getStatus(http.DefaultClient, "http://"+paddr+"/"); err != nil || code != 200 {
			t.Fatalf("request %d: %d %v (the good upstream should answer)", i, code, err)
		}
	}
	if !dead.Ejected(time.Now()) {
		t.Fatalf("not ejected after %d refused connections", EjectAfter)
	}
	if dead.Ejected(time.Now().Add(EjectFor + time.Second)) {
		t.Fatal("still ejected after EjectFor")
	}
	if dead.InFlight() != 0 || good.InFlight() != 0 {
		t.Fatalf("in flight left over: dead %d, good %d", dead.InFlight(), good.InFlight())
	}
	good.reached(false)
	good.reached(true)
	if good.failStreak.Load() != 0 {
		t.Fatal("a success did not end the failure streak")
	}
}
