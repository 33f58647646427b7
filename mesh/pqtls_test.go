package mesh

import (
	"crypto/tls"
	"net"
	"testing"
	"time"
)

// TestPostQuantumKeyExchange: a mesh hop and the public edge negotiate
// X25519MLKEM768 with a peer that offers it (Go's crypto/tls, as every
// meshd node is), and still talk X25519 to one that does not.
func TestPostQuantumKeyExchange(t *testing.T) {
	m := newTestMesh(t)
	gw := m.start(Config{Role: RoleGateway, Name: "gw-eu", Region: "eu"})
	edge := m.start(Config{Role: RoleEdge, Name: "edge-1", Region: "eu", WANJoin: []string{gw.Addrs()["wan-gossip"]},
		PublicHTTPS: "127.0.0.1:0", DataDir: t.TempDir(), NoHTTP3: true})
	mesh, err := edge.ids.ClientTLS(gw.ID(), "http/1.1")
	if err != nil {
		t.Fatal(err)
	}
	public := &tls.Config{InsecureSkipVerify: true, ServerName: "web.localhost"} // only the key exchange is looked at
	for _, c := range []struct {
		name, addr string
		cfg        *tls.Config
	}{
		{"mesh hop (edge to gateway)", gw.Addrs()["mesh"], mesh},
		{"public edge", edge.Addrs()["public-https"], public},
	} {
		for _, curves := range [][]tls.CurveID{nil, {tls.X25519}} {
			cfg := c.cfg.Clone()
			cfg.CurvePreferences = curves
			conn, err := tls.DialWithDialer(&netDialer, "tcp", c.addr, cfg)
			if err != nil {
				t.Fatalf("%s: %v", c.name, err)
			}
			got := conn.ConnectionState().CurveID
			conn.Close()
			want := tls.X25519MLKEM768
			if curves != nil {
				want = tls.X25519
			}
			if got != want {
				t.Errorf("%s, client offering %v: negotiated %v, want %v", c.name, curves, got, want)
			}
		}
	}
}

var netDialer = net.Dialer{Timeout: 5 * time.Second}
