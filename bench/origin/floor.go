package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// The floor: the least a Go program spends to answer an HTTP/1.1 request
// with bytes it already holds. It reads a request head line by line, looks
// the target up among responses serialized once at start and writes the
// whole response in one system call; no header parsing, no allocation per
// request, nothing a real server must do. The cache benchmark runs it
// beside meshd's edge: meshd/go-floor is what meshd's own work costs on
// top of Go's runtime and the kernel, and go-floor/nginx shows what any Go
// server starts with on the machine that ran the benchmark.

// floorResponses are the full responses of the floor, by request target:
// each cacheable object with the header fields a cache hit of it carries.
func floorResponses(o *origin) map[string][]byte {
	out := make(map[string][]byte)
	for name := range sizes {
		obj := o.objects["/"+name]
		var b bytes.Buffer
		fmt.Fprintf(&b, "HTTP/1.1 200 OK\r\nCache-Control: %s\r\nContent-Type: %s\r\nEtag: %s\r\nLast-Modified: %s\r\n",
			obj.cacheControl[0], contentType[0], obj.etag[0], lastModified[0])
		fmt.Fprintf(&b, "Date: %s\r\nAge: 0\r\nCache-Status: floor; hit\r\nContent-Length: %d\r\n\r\n",
			lastModified[0], len(obj.body))
		b.Write(obj.body)
		out["/"+name] = b.Bytes()
	}
	out["/healthz"] = []byte("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
	return out
}

var floorNotFound = []byte("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")

// errFloorRequest ends a connection whose request the floor does not serve.
var errFloorRequest = errors.New("floor: not a bodiless GET or HEAD request")

// floorMaxHead bounds a request head; the benchmark's are a few lines.
const floorMaxHead = 8 << 10

// serveFloor accepts connections on ln until it is closed.
func serveFloor(ln net.Listener, responses map[string][]byte) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			_ = floorConn(c, responses)
		}()
	}
}

// floorConn answers the requests of one connection in order. A request
// that is not a GET or HEAD of an HTTP/1.1 target, or that announces a
// body, ends the connection.
func floorConn(c net.Conn, responses map[string][]byte) error {
	br := bufio.NewReaderSize(c, 4096)
	for {
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Minute))
		line, err := br.ReadSlice('\n')
		if err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
		method, rest, ok := bytes.Cut(line, []byte(" "))
		target, proto, ok2 := bytes.Cut(rest, []byte(" "))
		head := string(method) == "HEAD"
		if !ok || !ok2 || (!head && string(method) != "GET") || !bytes.HasPrefix(proto, []byte("HTTP/1.1")) {
			return errFloorRequest
		}
		resp, found := responses[string(target)]
		if !found {
			resp = floorNotFound
		}
		for n := len(line); ; {
			l, err := br.ReadSlice('\n')
			if err != nil {
				return err
			}
			if n += len(l); n > floorMaxHead {
				return errFloorRequest
			}
			if len(bytes.TrimRight(l, "\r\n")) == 0 {
				break
			}
			name, _, _ := bytes.Cut(l, []byte(":"))
			if bytes.EqualFold(name, []byte("Content-Length")) || bytes.EqualFold(name, []byte("Transfer-Encoding")) {
				return errFloorRequest
			}
		}
		if head {
			resp = resp[:bytes.Index(resp, []byte("\r\n\r\n"))+4]
		}
		if _, err := c.Write(resp); err != nil {
			return err
		}
	}
}
