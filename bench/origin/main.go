package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"
)

// object is one fixed response body with the headers that never change.
type object struct {
	body         []byte
	cacheControl []string
	etag         []string
	length       []string
}

// lastModified is fixed so that every server sees the same validators.
var lastModified = []string{time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC).Format(http.TimeFormat)}

var contentType = []string{"application/octet-stream"}

// origin serves the benchmark objects. Its header slices are shared
// between requests and never modified, so a response costs no allocation
// beyond what net/http itself makes.
type origin struct {
	objects map[string]*object
	served  atomic.Int64
}

// sizes are the benchmark's object sizes by path name.
var sizes = map[string]int{"1k": 1 << 10, "100k": 100 << 10}

func newOrigin() *origin {
	o := &origin{objects: make(map[string]*object)}
	for name, n := range sizes {
		body := makeBody(n)
		sum := sha256.Sum256(body)
		etag := []string{`"` + hex.EncodeToString(sum[:8]) + `"`}
		length := []string{strconv.Itoa(n)}
		o.objects["/"+name] = &object{body: body, cacheControl: []string{"public, max-age=3600"}, etag: etag, length: length}
		// no-store (RFC 9111 §5.2.2.5) keeps every cache out of the proxy
		// benchmark even when one is configured.
		o.objects["/nostore/"+name] = &object{body: body, cacheControl: []string{"no-store"}, etag: etag, length: length}
	}
	return o
}

// makeBody returns n bytes of printable, deterministic content, so that a
// body seen in a debugging session can be recognised and compared.
func makeBody(n int) []byte {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, n)
	for i := range b {
		b[i] = alphabet[(i*7+i/len(alphabet))%len(alphabet)]
	}
	if n > 0 {
		b[n-1] = '\n'
	}
	return b
}

// lookup maps a request path to its object; nil means 404. The query is
// ignored, so /nostore/1k?x and /nostore/1k are the same object.
func (o *origin) lookup(path string) *object {
	return o.objects[path]
}

func (o *origin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/healthz":
		w.WriteHeader(http.StatusOK)
		return
	case "/_count":
		w.Header().Set("Cache-Control", "no-store")
		fmt.Fprintf(w, "%d\n", o.served.Load())
		return
	}
	obj := o.lookup(r.URL.Path)
	if obj == nil {
		http.NotFound(w, r)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	o.served.Add(1)
	h := w.Header()
	h["Cache-Control"] = obj.cacheControl
	h["Content-Type"] = contentType
	h["Etag"] = obj.etag
	h["Last-Modified"] = lastModified
	// A validator match answers 304 (RFC 9110 §13.1.2) so that a cache
	// revalidating an entry gets what a real origin would send.
	if inm := r.Header.Get("If-None-Match"); inm != "" && inm == obj.etag[0] {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	h["Content-Length"] = obj.length
	if r.Method == http.MethodHead {
		return
	}
	_, _ = w.Write(obj.body)
}

// freePorts returns n distinct loopback ports on which both a TCP and a
// UDP socket could be bound. All sockets stay open until n are found, so
// no port is returned twice.
func freePorts(n int) ([]int, error) {
	if n < 1 || n > 100 {
		return nil, fmt.Errorf("free ports: count %d out of range 1..100", n)
	}
	var closers []io.Closer
	defer func() {
		for _, c := range closers {
			_ = c.Close()
		}
	}()
	var ports []int
	for tries := 0; len(ports) < n && tries < 20*n; tries++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("free ports: %w", err)
		}
		closers = append(closers, ln)
		port := ln.Addr().(*net.TCPAddr).Port
		pc, err := net.ListenPacket("udp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue // the UDP side is taken: try another port
		}
		closers = append(closers, pc)
		ports = append(ports, port)
	}
	if len(ports) < n {
		return nil, fmt.Errorf("free ports: found only %d of %d", len(ports), n)
	}
	return ports, nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("origin", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:0", "address to serve on")
	nPorts := fs.Int("free-ports", 0, "print this many free loopback TCP+UDP ports and exit")
	floor := fs.Bool("floor", false, "serve the floor (a bare read-and-write loop, floor.go) instead of the origin")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if *nPorts != 0 {
		ports, err := freePorts(*nPorts)
		if err != nil {
			return err
		}
		for _, p := range ports {
			fmt.Fprintln(stdout, p)
		}
		return nil
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	if *floor {
		fmt.Fprintf(stdout, "floor listening on %s\n", ln.Addr())
		errc := make(chan error, 1)
		go func() { errc <- serveFloor(ln, floorResponses(newOrigin())) }()
		select {
		case err := <-errc:
			return fmt.Errorf("serve: %w", err)
		case <-ctx.Done():
		}
		_ = ln.Close()
		return nil
	}
	srv := &http.Server{
		Handler:           newOrigin(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
	}
	fmt.Fprintf(stdout, "origin listening on %s\n", ln.Addr())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve: %w", err)
	}
	return nil
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "origin:", err)
		os.Exit(1)
	}
}
