package tlsmgr

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"syscall"
	"testing"
	"time"
)

// BenchmarkIssue measures minting one SVID (P-256 key + signature), the
// work a renewal does.
func BenchmarkIssue(b *testing.B) {
	dir := b.TempDir()
	if err := InitCA(dir, testTD); err != nil {
		b.Fatal(err)
	}
	ca, err := LoadCA(dir)
	if err != nil {
		b.Fatal(err)
	}
	now := time.Now()
	for b.Loop() {
		if _, err := ca.mint("spiffe://"+testTD+"/service/web", time.Hour, now); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkMTLSHandshake measures one mTLS handshake between two tlsmgr
// configs over loopback (TLS 1.3, both sides in this process): "full"
// without a client session cache, so both sides verify each other's chain
// with go-spiffe; "resumed" with the ClientTLS config as it is, so every
// connection after the first resumes the session and is re-authorized.
// Besides ns/op (wall time) it reports cpu-ns/op: the process's user and
// system CPU time per handshake, client and server together.
func BenchmarkMTLSHandshake(b *testing.B) {
	dir := b.TempDir()
	if err := InitCA(dir, testTD); err != nil {
		b.Fatal(err)
	}
	webID := "spiffe://" + testTD + "/service/web"
	start := func(id string) *Manager {
		m := &Manager{CADir: dir, ID: id, Logger: discardLogger()}
		if err := m.Start(context.Background()); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { m.Close() })
		return m
	}
	web, api := start(webID), start("spiffe://"+testTD+"/service/api")
	srvCfg := web.ServerTLS(nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				tc := tls.Server(c, srvCfg)
				if tc.Handshake() == nil {
					tc.Write([]byte{1})
					io.Copy(io.Discard, tc)
				}
			}()
		}
	}()
	for _, resumed := range []bool{false, true} {
		name := "full"
		if resumed {
			name = "resumed"
		}
		b.Run(name, func(b *testing.B) {
			cliCfg, err := api.ClientTLS(webID)
			if err != nil {
				b.Fatal(err)
			}
			cliCfg.ServerName = "127.0.0.1"
			if !resumed {
				cliCfg.ClientSessionCache = nil
			}
			buf := make([]byte, 1)
			connect := func() bool {
				c, err := net.Dial("tcp", ln.Addr().String())
				if err != nil {
					b.Fatal(err)
				}
				defer c.Close()
				tc := tls.Client(c, cliCfg)
				// The server's byte comes after its ticket: once it is
				// read, the client has stored the next session.
				if _, err := io.ReadFull(tc, buf); err != nil {
					b.Fatal(err)
				}
				return tc.ConnectionState().DidResume
			}
			connect() // the session the others resume
			cpu0 := cpuTime()
			for b.Loop() {
				if connect() != resumed {
					b.Fatalf("DidResume %v, want %v", !resumed, resumed)
				}
			}
			b.ReportMetric(float64((cpuTime()-cpu0).Nanoseconds())/float64(b.N), "cpu-ns/op")
		})
	}
}

// cpuTime is the user and system CPU time of the process so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
