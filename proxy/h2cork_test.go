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

// record returns one TLS application data record of n bytes in all.
func record(n int) []byte {
	p := bytes.Repeat([]byte{'r'}, n)
	p[0], p[1], p[2], p[3], p[4] = 23, 3, 3, byte((n-5)>>8), byte(n-5)
	return p
}

func TestCorkConnJoinsFullRecordsOnHTTP2(t *testing.T) {
	// 16406: TLS 1.3 (the content type byte); 16413: TLS 1.2 AES-GCM.
	full, full12, tail := record(tlsFullRecord+1), record(tlsFullRecord+8), record(5+9+17)
	if fullRecord(record(tlsFullRecord-1)) || fullRecord(tail) || !fullRecord(full12) {
		t.Fatal("fullRecord misjudges record lengths")
	}
	for _, h2 := range []bool{false, true} {
		under := &writesConn{}
		c := newCorkConn(under)
		if h2 {
			c.serveH2()
		}
		for _, p := range [][]byte{full, full, tail, tail} {
			if n, err := c.Write(p); n != len(p) || err != nil {
				t.Fatalf("Write = %d, %v", n, err)
			}
		}
		got := under.got()
		want := []string{string(full), string(full), string(tail), string(tail)}
		if h2 {
			want = []string{string(full) + string(full) + string(tail), string(tail)}
		}
		if !equalWrites(got, want) {
			t.Errorf("h2 %v: %d writes of %v bytes, want %d", h2, len(got), lens(got), len(want))
		}
	}
}

func TestCorkConnFullRecordAtTheEndGoesOut(t *testing.T) {
	under := &writesConn{}
	c := newCorkConn(under)
	c.serveH2()
	full := record(tlsFullRecord)
	_, _ = c.Write(full)
	waitFor(t, "the kept record", 5*time.Second, func() bool { return len(under.got()) == 1 })
}

func lens(s []string) []int {
	var n []int
	for _, x := range s {
		n = append(n, len(x))
	}
	return n
}

// countingCork counts the announcements an h2Writer makes.
func countingCork() (*corkConn, *writesConn) {
	under := &writesConn{}
	return newCorkConn(under), under
}

func TestH2WriterAnnouncesHeadersFollowedByData(t *testing.T) {
	for _, tc := range []struct {
		name string
		head bool
		do   func(w *h2Writer)
		want int // announcements
	}{
		{"small body, at the return", false, func(w *h2Writer) { _, _ = w.Write(make([]byte, 1024)) }, 1},
		{"body at the server's buffer size", false, func(w *h2Writer) { _, _ = w.Write(make([]byte, h2HandlerBufferSize)) }, 1},
		{"body over it, at the overflowing write", false, func(w *h2Writer) {
			_, _ = w.Write(make([]byte, h2HandlerBufferSize))
			_, _ = w.Write([]byte("x"))
			_, _ = w.Write(make([]byte, 3*h2HandlerBufferSize))
		}, 1},
		{"no body", false, func(w *h2Writer) { w.WriteHeader(http.StatusNoContent) }, 0},
		{"flush before any body", false, func(w *h2Writer) { w.WriteHeader(http.StatusOK); w.Flush(); _, _ = w.Write([]byte("x")) }, 0},
		{"flushed body, then more", false, func(w *h2Writer) { _, _ = w.Write([]byte("x")); w.Flush(); _, _ = w.Write([]byte("y")); w.Flush() }, 1},
		{"HEAD", true, func(w *h2Writer) { _, _ = w.Write([]byte("x")) }, 0},
	} {
		cork, _ := countingCork()
		w := &h2Writer{ResponseWriter: httptest.NewRecorder(), cork: cork, head: tc.head}
		tc.do(w)
		w.done()
		if cork.pending != tc.want {
			t.Errorf("%s: %d announcements, want %d", tc.name, cork.pending, tc.want)
		}
	}
}
