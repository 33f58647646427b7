package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"strings"
	"testing"
	"time"
)

// startFloor runs the command with -floor on port 0 and returns its address.
func startFloor(t *testing.T) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var out syncBuffer
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"-floor", "-listen", "127.0.0.1:0"}, &out, io.Discard) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	})
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if s := out.String(); strings.HasSuffix(s, "\n") {
			return strings.TrimSpace(strings.TrimPrefix(s, "floor listening on "))
		}
	}
	t.Fatal("floor did not report its address")
	return ""
}

// TestFloorServes: the floor answers the cacheable objects with their
// bytes on one kept-alive connection, HEAD without a body, other targets 404.
func TestFloorServes(t *testing.T) {
	addr := startFloor(t)
	o := newOrigin()
	client := &http.Client{Transport: &http.Transport{}}
	reused := 0
	for i, path := range []string{"/1k", "/100k", "/1k"} {
		trace := &httptrace.ClientTrace{GotConn: func(ci httptrace.GotConnInfo) {
			if ci.Reused {
				reused++
			}
		}}
		req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), "GET", "http://"+addr+path, nil)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%d GET %s: %v", i, path, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 || !bytes.Equal(body, o.objects[path].body) {
			t.Fatalf("GET %s: %v, status %d, %d bytes", path, err, resp.StatusCode, len(body))
		}
		if cc := resp.Header.Get("Cache-Control"); cc != "public, max-age=3600" {
			t.Errorf("GET %s: Cache-Control %q", path, cc)
		}
	}
	if reused != 2 {
		t.Errorf("%d of 2 later requests reused the connection", reused)
	}
	resp, err := client.Head("http://" + addr + "/100k")
	if err != nil || resp.StatusCode != 200 || resp.ContentLength != 100<<10 {
		t.Fatalf("HEAD /100k: %v %+v", err, resp)
	}
	resp.Body.Close()
	resp, err = client.Get("http://" + addr + "/2k")
	if err != nil || resp.StatusCode != 404 {
		t.Fatalf("GET /2k: %v %+v", err, resp)
	}
	resp.Body.Close()
}

// TestFloorRefuses: what the floor does not serve ends the connection
// without a response; pipelined requests are answered in order.
func TestFloorRefuses(t *testing.T) {
	addr := startFloor(t)
	exchange := func(raw string) string {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(c, raw); err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(c)
		if err != nil {
			t.Fatalf("%q: %v", raw, err)
		}
		return string(got)
	}
	for _, raw := range []string{
		"POST /1k HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx",
		"GET /1k HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"GET /1k HTTP/1.0\r\n\r\n",
		"nonsense\r\n\r\n",
		"GET /1k HTTP/1.1\r\n" + strings.Repeat("X-Long: "+strings.Repeat("a", 100)+"\r\n", 100) + "\r\n",
	} {
		if got := exchange(raw); got != "" {
			t.Errorf("%.40q answered %.40q", raw, got)
		}
	}
	got := exchange("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\n\r\nDELETE / HTTP/1.1\r\n\r\n")
	br := bufio.NewReader(strings.NewReader(got))
	for _, want := range []int{200, 404} {
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != want {
			t.Fatalf("pipelined: %v %+v, want %d", err, resp, want)
		}
	}
	if rest, _ := io.ReadAll(br); len(rest) != 0 {
		t.Errorf("DELETE answered: %q", rest)
	}
}
