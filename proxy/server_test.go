package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestServerPortInUse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	addr := ln.Addr().String()
	s := &Server{Addr: addr, Handler: http.NotFoundHandler(), Logger: testLogger()}
	err = s.Start(context.Background())
	if err == nil {
		_ = s.Shutdown(context.Background())
		t.Fatal("Start on a port in use succeeded")
	}
	if !strings.Contains(err.Error(), addr) || !strings.Contains(err.Error(), "address already in use") {
		t.Errorf("error %q does not name the address and the cause", err)
	}
	if s.BoundAddr() != "" {
		t.Errorf("BoundAddr %q after a failed Start", s.BoundAddr())
	}
}

// startCase is a Server whose Start must fail with an error naming want.
type startCase struct {
	name string
	s    *Server
	want string
}

// checkStartRefused starts each server: Start must fail, name the field,
// and leave no listener bound.
func checkStartRefused(t *testing.T, tests []startCase) {
	t.Helper()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.s.Start(context.Background())
			if err == nil {
				_ = tt.s.Shutdown(context.Background())
				t.Fatal("Start succeeded")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not name %s", err, tt.want)
			}
			if tt.s.BoundAddr() != "" {
				t.Error("a failed Start bound a listener")
			}
		})
	}
}

func TestServerValidate(t *testing.T) {
	h := http.NotFoundHandler()
	tests := []startCase{
		{"no addr", &Server{Handler: h}, "Addr"},
		{"addr without port", &Server{Addr: "127.0.0.1", Handler: h}, "Addr"},
		{"no handler", &Server{Addr: "127.0.0.1:0"}, "Handler"},
		{"negative timeout", &Server{Addr: "127.0.0.1:0", Handler: h, ReadHeaderTimeout: -1}, "ReadHeaderTimeout"},
		{"negative idle", &Server{Addr: "127.0.0.1:0", Handler: h, IdleTimeout: -1}, "IdleTimeout"},
		{"negative header bytes", &Server{Addr: "127.0.0.1:0", Handler: h, MaxHeaderBytes: -1}, "MaxHeaderBytes"},
		{"tls without certificate", &Server{Addr: "127.0.0.1:0", Handler: h, TLS: tlsConfigWithoutCert()}, "certificate"},
	}
	checkStartRefused(t, tests)
}

func TestServerStartTwice(t *testing.T) {
	s := startServer(t, http.NotFoundHandler(), nil)
	if err := s.Start(context.Background()); err == nil {
		t.Fatal("second Start succeeded")
	}
}

func TestServerShutdownDrains(t *testing.T) {
	entered := make(chan struct{})
	release := make(chan struct{})
	s := &Server{Addr: "127.0.0.1:0", Logger: testLogger(), Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		<-release
		_, _ = io.WriteString(w, "finished")
	})}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	addr := s.BoundAddr()
	if s.InFlight() != 0 {
		t.Fatalf("InFlight %d before any request", s.InFlight())
	}

	type result struct {
		body string
		err  error
	}
	got := make(chan result, 1)
	go func() {
		resp, err := http.Get("http://" + addr + "/")
		if err != nil {
			got <- result{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		got <- result{string(b), err}
	}()
	<-entered
	if n := s.InFlight(); n != 1 {
		t.Fatalf("InFlight %d with one request in the handler", n)
	}

	shutdownDone := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		shutdownDone <- s.Shutdown(ctx)
	}()
	// Shutdown has begun once the listener refuses new connections.
	waitFor(t, "listener to close", 5*time.Second, func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return true
		}
		c.Close()
		return false
	})
	select {
	case err := <-shutdownDone:
		t.Fatalf("Shutdown returned (%v) while a request was in flight", err)
	default:
	}
	close(release)
	r := <-got
	if r.err != nil || r.body != "finished" {
		t.Fatalf("in-flight request: %q, %v", r.body, r.err)
	}
	select {
	case err := <-shutdownDone:
		if err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Shutdown did not return after the request finished")
	}
	if n := s.InFlight(); n != 0 {
		t.Errorf("InFlight %d after drain", n)
	}
}

func TestServerShutdownDeadline(t *testing.T) {
	entered := make(chan struct{})
	release := make(chan struct{})
	defer close(release)
	s := &Server{Addr: "127.0.0.1:0", Logger: testLogger(), Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	clientErr := make(chan error, 1)
	go func() {
		resp, err := http.Get("http://" + s.BoundAddr() + "/")
		if err == nil {
			resp.Body.Close()
		}
		clientErr <- err
	}()
	<-entered
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	err := s.Shutdown(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown = %v, want deadline exceeded", err)
	}
	select {
	case err := <-clientErr:
		if err == nil {
			t.Error("request succeeded although its connection was closed")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("connection was not closed when the drain deadline passed")
	}
}

func TestServerShutdownBeforeStart(t *testing.T) {
	if err := (&Server{}).Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func tlsConfigWithoutCert() *tls.Config { return &tls.Config{MinVersion: tls.VersionTLS12} }
