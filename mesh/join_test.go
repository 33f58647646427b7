package mesh

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

func adminGetTCP(n *Node, path string) (int, string, error) {
	resp, err := http.Get("http://" + n.Addrs()["admin"] + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// freePort returns a 127.0.0.1 address nothing listens on (for now).
func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestReadyNeedsASeed: a node none of whose seeds answers is not ready
// (it would serve a mesh of one), unless allow-alone; a node without seeds
// is the first node and is ready; the node is ready once a seed answers.
func TestReadyNeedsASeed(t *testing.T) {
	m := newTestMesh(t)
	seed := freePort(t)
	lonely := m.start(Config{Role: RoleGateway, Name: "gw-2", Region: "eu", Join: []string{seed}})
	alone := m.start(Config{Role: RoleGateway, Name: "gw-3", Region: "eu", Join: []string{freePort(t)}, AllowAlone: true})

	code, body, err := adminGetTCP(lonely, "/readyz")
	if err != nil || code != http.StatusServiceUnavailable || body != "not joined: no seed answered\n" {
		t.Errorf("readyz of a node whose seed does not answer: %d %q %v; want 503 %q", code, body, err, "not joined: no seed answered")
	}
	if lonely.Ready() {
		t.Error("Ready() with no seed answering")
	}
	if code, body, err := adminGetTCP(alone, "/readyz"); err != nil || code != http.StatusOK {
		t.Errorf("readyz with allow-alone: %d %q %v; want 200", code, body, err)
	}

	first := m.start(Config{Role: RoleGateway, Name: "gw-1", Region: "eu", GossipAddr: seed})
	if code, body, err := adminGetTCP(first, "/readyz"); err != nil || code != http.StatusOK {
		t.Errorf("readyz of a first node (no seeds): %d %q %v; want 200", code, body, err)
	}
	poll(t, 10*time.Second, "ready once the seed answers", func() error {
		if code, body, err := adminGetTCP(lonely, "/readyz"); err != nil || code != http.StatusOK {
			return fmt.Errorf("readyz %d %q %v", code, body, err)
		}
		return nil
	})
}

// TestGossipBadPacketsMetric: junk sent to a gossip port is counted in
// meshd_gossip_bad_packets_total, per pool.
func TestGossipBadPacketsMetric(t *testing.T) {
	m := newTestMesh(t)
	gw := m.start(Config{Role: RoleGateway, Name: "gw-1", Region: "eu"})
	conn, err := net.Dial("udp", gw.Addrs()["gossip"])
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	metric := func(pool string) (float64, error) {
		_, body, err := adminGetTCP(gw, "/metrics")
		if err != nil {
			return 0, err
		}
		for _, l := range strings.Split(body, "\n") {
			if strings.HasPrefix(l, "meshd_gossip_bad_packets_total{") && strings.Contains(l, `pool="`+pool+`"`) {
				f := strings.Fields(l)
				return strconv.ParseFloat(f[len(f)-1], 64)
			}
		}
		return 0, fmt.Errorf("no meshd_gossip_bad_packets_total for pool %s in /metrics", pool)
	}
	const total = 300
	for sent := 0; sent < total; {
		// Batches, each waited for, so that no socket buffer drops any.
		for range 50 {
			if _, err := conn.Write([]byte("junk")); err != nil {
				t.Fatal(err)
			}
			sent++
		}
		poll(t, 10*time.Second, "junk counted", func() error {
			if v, err := metric("region"); err != nil || v < float64(sent) {
				return fmt.Errorf("region counter %v (%v), sent %d", v, err, sent)
			}
			return nil
		})
	}
	if v, err := metric("region"); err != nil || v != total {
		t.Errorf("region counter %v (%v), want %d", v, err, total)
	}
	if v, err := metric("global"); err != nil || v != 0 {
		t.Errorf("global counter %v (%v), want 0", v, err)
	}
}
