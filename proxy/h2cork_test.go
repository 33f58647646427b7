package proxy

import (
	"bytes"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"
)

// writesConn records each Write as one element.
type writesConn struct {
	net.Conn
	mu     sync.Mutex
	writes [][]byte
	err    error
	closed bool
}

func (c *writesConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, c.err
	}
	c.writes = append(c.writes, append([]byte(nil), p...))
	return len(p), nil
}

func (c *writesConn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	return nil
}

func (c *writesConn) got() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var s []string
	for _, w := range c.writes {
		s = append(s, string(w))
	}
	return s
}

func equalWrites(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestCorkConnPassesThroughWithoutHold(t *testing.T) {
	under := &writesConn{}
	c := newCorkConn(under)
	for _, p := range []string{"a", "bb", "ccc"} {
		if n, err := c.Write([]byte(p)); n != len(p) || err != nil {
			t.Fatalf("Write(%q) = %d, %v", p, n, err)
		}
	}
	if got := under.got(); !equalWrites(got, []string{"a", "bb", "ccc"}) {
		t.Fatalf("writes %q", got)
	}
}

func TestCorkConnJoinsHeldWriteWithTheNext(t *testing.T) {
	under := &writesConn{}
	c := newCorkConn(under)
	c.hold()
	buf := []byte("HEADERS")
	if n, err := c.Write(buf); n != len(buf) || err != nil {
		t.Fatalf("held Write = %d, %v", n, err)
	}
	copy(buf, "xxxxxxx") // the caller may reuse its buffer at once
	if got := under.got(); len(got) != 0 {
		t.Fatalf("a held write went out: %q", got)
	}
	if n, err := c.Write([]byte("DATA")); n != 4 || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	if n, err := c.Write([]byte("next")); n != 4 || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	if got := under.got(); !equalWrites(got, []string{"HEADERSDATA", "next"}) {
		t.Fatalf("writes %q, want the held one joined with the next, then the rest alone", got)
	}
}

func TestCorkConnHeldWriteGoesOutAlone(t *testing.T) {
	// The DATA never comes (a window at zero, a reset stream): the held
	// bytes still go out, and a wrong announcement is forgotten.
	under := &writesConn{}
	c := newCorkConn(under)
	c.hold()
	c.hold()
	_, _ = c.Write([]byte("HEADERS"))
	waitFor(t, "the held write", 5*time.Second, func() bool { return len(under.got()) == 1 })
	_, _ = c.Write([]byte("later"))
	if got := under.got(); !equalWrites(got, []string{"HEADERS", "later"}) {
		t.Fatalf("writes %q", got)
	}
}

func TestCorkConnCloseWritesHeld(t *testing.T) {
	under := &writesConn{}
	c := newCorkConn(under)
	c.hold()
	_, _ = c.Write([]byte("alert"))
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if got := under.got(); !equalWrites(got, []string{"alert"}) || !under.closed {
		t.Fatalf("writes %q, closed %v", got, under.closed)
	}
}

func TestCorkConnReportsFailedHeldWrite(t *testing.T) {
	under := &writesConn{}
	c := newCorkConn(under)
	c.hold()
	_, _ = c.Write([]byte("HEADERS"))
	boom := errors.New("broken pipe")
	under.mu.Lock()
	under.err = boom
	under.mu.Unlock()
	if n, err := c.Write([]byte("DATA")); n != 0 || !errors.Is(err, boom) {
		t.Fatalf("Write = %d, %v; want 0, %v", n, err, boom)
	}
	if _, err := c.Write([]byte("more")); !errors.Is(err, boom) {
		t.Fatalf("after a failed write: %v", err)
	}
}

func TestCorkConnHoldsNoLargeWrite(t *testing.T) {
	under := &writesConn{}
	c := newCorkConn(under)
	c.hold()
	big := bytes.Repeat([]byte("x"), corkMaxHeld+1)
	_, _ = c.Write(big)
	if got := under.got(); len(got) != 1 || len(got[0]) != len(big) {
		t.Fatalf("a write over corkMaxHeld was held: %d writes", len(got))
	}
}

func TestH2WriterBuffered(t *testing.T) {
	get := httptest.NewRequest(http.MethodGet, "/", nil)
	head := httptest.NewRequest(http.MethodHead, "/", nil)
	for _, tc := range []struct {
		name string
		r    *http.Request
		do   func(w *h2Writer)
		want bool
	}{
		{"small body", get, func(w *h2Writer) { _, _ = w.Write(make([]byte, 1024)) }, true},
		{"body at the server's buffer size", get, func(w *h2Writer) { _, _ = w.Write(make([]byte, h2HandlerBufferSize)) }, true},
		{"body over it", get, func(w *h2Writer) {
			_, _ = w.Write(make([]byte, h2HandlerBufferSize))
			_, _ = w.Write([]byte("x"))
		}, false},
		{"no body", get, func(w *h2Writer) { w.WriteHeader(http.StatusNoContent) }, false},
		{"flushed", get, func(w *h2Writer) { _, _ = w.Write([]byte("x")); w.Flush() }, false},
		{"informational first", get, func(w *h2Writer) { w.WriteHeader(http.StatusEarlyHints); _, _ = w.Write([]byte("x")) }, false},
		{"HEAD", head, func(w *h2Writer) { _, _ = w.Write([]byte("x")) }, false},
	} {
		w := &h2Writer{ResponseWriter: httptest.NewRecorder()}
		tc.do(w)
		if got := w.buffered(tc.r); got != tc.want {
			t.Errorf("%s: buffered %v, want %v", tc.name, got, tc.want)
		}
	}
}
