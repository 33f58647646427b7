package tlsmgr

import (
	"context"
	"crypto/tls"
	"io"
	"net"
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

// BenchmarkMTLSHandshake measures one full mTLS handshake (TLS 1.3, no
// resumption, both sides verified by go-spiffe) over loopback.
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
	cliCfg, err := api.ClientTLS(webID)
	if err != nil {
		b.Fatal(err)
	}
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
	buf := make([]byte, 1)
	for b.Loop() {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		tc := tls.Client(c, cliCfg)
		if _, err := io.ReadFull(tc, buf); err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
}
