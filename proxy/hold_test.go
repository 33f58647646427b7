package proxy

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"testing"
	"time"
)

// TestServerHold: a held server binds its port at Start but answers a
// connection only once Hold is closed, and a Shutdown while held returns.
func TestServerHold(t *testing.T) {
	hold := make(chan struct{})
	s := &Server{Addr: "127.0.0.1:0", Hold: hold, Logger: testLogger(),
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) })}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(context.Background())
	c, err := net.Dial("tcp", s.BoundAddr()) // the backlog takes it
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	br := bufio.NewReader(c)
	if _, err := br.ReadByte(); err == nil {
		t.Fatal("a held server answered")
	} else if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
		t.Fatalf("held: want a read timeout, got %v", err)
	}
	close(hold)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("after Hold closed: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}

	// Held forever: Shutdown ends the wait.
	s2 := &Server{Addr: "127.0.0.1:0", Hold: make(chan struct{}), Logger: testLogger(), Handler: http.NotFoundHandler()}
	if err := s2.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s2.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown of a held server: %v", err)
	}
}
