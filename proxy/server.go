package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of Server.
const (
	DefaultReadHeaderTimeout = 10 * time.Second
	DefaultServerIdleTimeout = 120 * time.Second
	DefaultMaxHeaderBytes    = 64 << 10
)

// Server is one listener: plain HTTP/1.1, or TLS with HTTP/2 and HTTP/1.1
// chosen by ALPN. Set the fields, then Start; Shutdown drains it. A Server
// is started at most once.
type Server struct {
	// Addr is the "host:port" to listen on; port 0 picks a free port.
	// Required.
	Addr string
	// TLS enables TLS with ALPN "h2" and "http/1.1"; it must provide a
	// certificate (Certificates, GetCertificate or GetConfigForClient) and
	// is cloned at Start. Nil means plain HTTP/1.1 only: no h2c, because
	// meshd only speaks cleartext on loopback to applications.
	TLS *tls.Config
	// Handler serves every request. Required.
	Handler http.Handler
	// Logger receives listener errors; TLS handshake failures (scanners,
	// clients that give up) at debug level, others at warn.
	// Default slog.Default().
	Logger *slog.Logger
	// ReadHeaderTimeout bounds reading a request's header section, the
	// defence against slow-header clients. Default 10 s. Bodies have no
	// deadline: they stream, and uploads may take long.
	ReadHeaderTimeout time.Duration
	// IdleTimeout closes keep-alive connections idle for this long.
	// Default 120 s.
	IdleTimeout time.Duration
	// MaxHeaderBytes bounds a request's header section. Default 64 KiB.
	MaxHeaderBytes int

	inflight atomic.Int64

	mu      sync.Mutex
	started bool
	srv     *http.Server
	ln      net.Listener
	done    chan struct{} // closed when Serve returned
}

// Validate reports a missing or bad field.
func (s *Server) Validate() error {
	if s.Addr == "" {
		return errors.New("proxy: server: Addr is required")
	}
	if _, _, err := net.SplitHostPort(s.Addr); err != nil {
		return fmt.Errorf("proxy: server: Addr %q: %w", s.Addr, err)
	}
	switch {
	case s.Handler == nil:
		return errors.New("proxy: server: Handler is required")
	case s.ReadHeaderTimeout < 0:
		return fmt.Errorf("proxy: server: ReadHeaderTimeout %v is negative", s.ReadHeaderTimeout)
	case s.IdleTimeout < 0:
		return fmt.Errorf("proxy: server: IdleTimeout %v is negative", s.IdleTimeout)
	case s.MaxHeaderBytes < 0:
		return fmt.Errorf("proxy: server: MaxHeaderBytes %d is negative", s.MaxHeaderBytes)
	case s.TLS != nil && len(s.TLS.Certificates) == 0 && s.TLS.GetCertificate == nil && s.TLS.GetConfigForClient == nil:
		return errors.New("proxy: server: TLS has no certificate (Certificates, GetCertificate or GetConfigForClient)")
	}
	return nil
}

// Start validates the fields and binds the listener synchronously, so a port
// in use is reported here, naming the address ("listen tcp
// 127.0.0.1:8080: bind: address already in use"); then it serves in the
// background. ctx bounds the bind only: stop the server with Shutdown.
func (s *Server) Start(ctx context.Context) error {
	if err := s.Validate(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started {
		return fmt.Errorf("proxy: server %s already started", s.Addr)
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", s.Addr)
	if err != nil {
		return fmt.Errorf("proxy: %w", err)
	}
	logger := s.Logger
	if logger == nil {
		logger = slog.Default()
	}
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	srv := &http.Server{
		Handler:           inflightHandler{h: s.Handler, n: &s.inflight},
		ReadHeaderTimeout: orDefault(s.ReadHeaderTimeout, DefaultReadHeaderTimeout),
		IdleTimeout:       orDefault(s.IdleTimeout, DefaultServerIdleTimeout),
		MaxHeaderBytes:    orDefault(s.MaxHeaderBytes, DefaultMaxHeaderBytes),
		ErrorLog:          log.New(serverLogWriter{logger: logger, addr: ln.Addr().String()}, "", 0),
		Protocols:         &protocols,
	}
	if s.TLS != nil {
		protocols.SetHTTP2(true)
		// ServeTLS clones the configuration and sets ALPN to h2 and
		// http/1.1 from Protocols.
		srv.TLSConfig = s.TLS.Clone()
		srv.HTTP2 = &http.HTTP2Config{}
	}
	s.srv, s.ln, s.started = srv, ln, true
	s.done = make(chan struct{})
	go func() {
		defer close(s.done)
		var err error
		if s.TLS != nil {
			err = srv.ServeTLS(ln, "", "")
		} else {
			err = srv.Serve(ln)
		}
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Error("proxy: listener stopped", "addr", ln.Addr().String(), "err", err)
		}
	}()
	return nil
}

// BoundAddr returns the address the listener is bound to (with the port
// chosen for port 0), or "" before Start. (A method named Addr cannot exist
// beside the Addr field.)
func (s *Server) BoundAddr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return ""
	}
	return s.ln.Addr().String()
}

// InFlight returns the number of requests being served now; drain logic
// polls it.
func (s *Server) InFlight() int64 { return s.inflight.Load() }

// Shutdown stops accepting connections, closes idle ones, waits for
// in-flight requests to finish (HTTP/2 clients get GOAWAY) and returns. When
// ctx ends first, the remaining connections are closed and ctx's error is
// returned. Shutdown before Start does nothing.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	srv, done := s.srv, s.done
	s.mu.Unlock()
	if srv == nil {
		return nil
	}
	err := srv.Shutdown(ctx)
	if err != nil {
		_ = srv.Close()
		err = fmt.Errorf("proxy: shutdown of %s: %w", s.Addr, err)
	}
	<-done // Serve returns at once after Shutdown or Close.
	return err
}

// inflightHandler counts requests being served. The counter is decremented
// in a defer, so requests ended by panic(http.ErrAbortHandler) count too.
type inflightHandler struct {
	h http.Handler
	n *atomic.Int64
}

func (ih inflightHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ih.n.Add(1)
	defer ih.n.Add(-1)
	ih.h.ServeHTTP(w, r)
}

// serverLogWriter turns net/http's log lines into slog records. TLS
// handshake errors are routine on a public port and go to debug.
type serverLogWriter struct {
	logger *slog.Logger
	addr   string
}

func (w serverLogWriter) Write(p []byte) (int, error) {
	msg := strings.TrimSuffix(string(p), "\n")
	level := slog.LevelWarn
	if strings.HasPrefix(msg, "http: TLS handshake error") {
		level = slog.LevelDebug
	}
	w.logger.Log(context.Background(), level, "proxy: "+msg, "addr", w.addr)
	return len(p), nil
}
