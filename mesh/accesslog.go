package mesh

import (
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/meshd/meshd/proxy"
)

// HeaderRequestID identifies a request across every hop and every log.
const HeaderRequestID = "X-Request-Id"

// requestID gives every public request an ID the edge chose: a client's
// own X-Request-Id is replaced, because it is not a mesh identity and could
// collide with or impersonate another request in the logs.
func requestID(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var b [12]byte
		var x [24]byte
		rand.Read(b[:])
		hex.Encode(x[:], b[:])
		r.Header[HeaderRequestID] = []string{string(x[:])}
		next.ServeHTTP(w, r)
	})
}

// accessLog writes one record per request to log at info level, after
// the response ended: who asked, what, the status, the bytes sent, the
// time taken, the cache's verdict and the trace ID ("" when the edge does
// not trace).
func accessLog(log *slog.Logger, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rw := recorderPool.Get().(*statusRecorder)
		rw.ResponseWriter, rw.status, rw.bytes = w, 0, 0
		defer func() {
			log.LogAttrs(r.Context(), slog.LevelInfo, "access",
				slog.String("id", r.Header.Get(HeaderRequestID)),
				// The edge's trace, when it traces: its span set the
				// traceparent the request went on with.
				slog.String("trace", proxy.TraceID(r.Header)),
				slog.String("client", r.RemoteAddr),
				slog.String("proto", r.Proto),
				slog.String("method", r.Method),
				slog.String("host", r.Host),
				slog.String("uri", r.RequestURI),
				slog.Int("status", rw.code(r)),
				slog.Int64("bytes", rw.bytes),
				slog.Duration("took", time.Since(start)),
				slog.String("cache", w.Header().Get("Cache-Status")),
			)
			rw.ResponseWriter = nil
			recorderPool.Put(rw)
		}()
		next.ServeHTTP(rw, r)
	})
}

var recorderPool = sync.Pool{New: func() any { return new(statusRecorder) }}

// statusRecorder notes the status and body size of a response. It keeps
// Flush (the cache and the proxy stream through it) and Unwrap (for
// http.ResponseController).
type statusRecorder struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 && code >= 200 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(p []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	n, err := s.ResponseWriter.Write(p)
	s.bytes += int64(n)
	return n, err
}

func (s *statusRecorder) Flush() {
	if f, ok := s.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

func (s *statusRecorder) code(r *http.Request) int {
	if s.status == 0 {
		if r.Context().Err() != nil {
			return 499 // nothing was written: the client went away first
		}
		return http.StatusOK // net/http's implicit answer
	}
	return s.status
}

var _ http.Flusher = (*statusRecorder)(nil)
