package pebbletest

import (
	"context"
	"encoding/binary"
	"net"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"
)

// query builds a one-question DNS query for name and qtype (RFC 1035 §4.1).
func query(id uint16, name string, qtype uint16) []byte {
	b := binary.BigEndian.AppendUint16(nil, id)
	b = append(b, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0) // RD; QDCOUNT 1
	for _, l := range strings.Split(name, ".") {
		b = append(b, byte(len(l)))
		b = append(b, l...)
	}
	b = append(b, 0)
	b = binary.BigEndian.AppendUint16(b, qtype)
	return binary.BigEndian.AppendUint16(b, 1) // IN
}

func TestDNSAnswer(t *testing.T) {
	tests := []struct {
		name    string
		q       []byte
		ok      bool
		host    string
		answers uint16
	}{
		{"A", query(7, "Web.Example.Test", 1), true, "web.example.test", 1},
		{"AAAA", query(8, "web.localhost", 28), true, "web.localhost", 0},
		{"CAA", query(9, "web.localhost", 257), true, "web.localhost", 0},
		{"short header", []byte{1, 2, 3}, false, "", 0},
		{"two questions", func() []byte { q := query(1, "a.test", 1); q[5] = 2; return q }(), false, "", 0},
		{"label past the end", []byte{0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 9, 'a'}, false, "", 0},
		{"label too long", append([]byte{0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 64}, make([]byte, 70)...), false, "", 0},
		{"no type", query(1, "a.test", 1)[:20], false, "", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			host, resp, ok := dnsAnswer(tt.q)
			if ok != tt.ok {
				t.Fatalf("ok = %v, want %v", ok, tt.ok)
			}
			if !ok {
				return
			}
			if host != tt.host {
				t.Errorf("name %q, want %q", host, tt.host)
			}
			if id := binary.BigEndian.Uint16(resp); id != binary.BigEndian.Uint16(tt.q) {
				t.Errorf("id %d, want the query's", id)
			}
			if resp[2]&0x80 == 0 {
				t.Error("QR bit not set")
			}
			if an := binary.BigEndian.Uint16(resp[6:]); an != tt.answers {
				t.Errorf("%d answers, want %d", an, tt.answers)
			}
			if tt.answers == 1 && !slices.Equal(resp[len(resp)-4:], []byte{127, 0, 0, 1}) {
				t.Errorf("answer %v, want 127.0.0.1", resp[len(resp)-4:])
			}
		})
	}
}

// TestDNSServer resolves through the server with Go's own resolver, which
// checks the answers' wire format, and checks the query log.
func TestDNSServer(t *testing.T) {
	s := serveDNS(t)
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", s.addr)
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ips, err := r.LookupIP(ctx, "ip4", "api.example.test")
	if err != nil {
		t.Fatal(err)
	}
	if len(ips) != 1 || !ips[0].Equal(net.IPv4(127, 0, 0, 1)) {
		t.Fatalf("resolved %v, want [127.0.0.1]", ips)
	}
	if !slices.Contains(s.names(), "api.example.test") {
		t.Fatalf("query log %v lacks api.example.test", s.names())
	}
}

func FuzzDNSAnswer(f *testing.F) {
	f.Add(query(1, "web.localhost", 1))
	f.Add(query(2, "x", 28))
	f.Add([]byte{0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 63, 'a'})
	f.Fuzz(func(t *testing.T, q []byte) {
		name, resp, ok := dnsAnswer(q)
		if !ok {
			return
		}
		if len(resp) < 12 || resp[0] != q[0] || resp[1] != q[1] || binary.BigEndian.Uint16(resp[4:]) != 1 {
			t.Fatalf("bad answer header %x for %x", resp, q)
		}
		if strings.ToLower(name) != name || len(name) > len(q) {
			t.Fatalf("name %q from %x", name, q)
		}
	})
}

// TestPebble starts Pebble and fetches the root it issues under.
func TestPebble(t *testing.T) {
	p := New(t)
	if !strings.HasPrefix(p.DirURL, "https://127.0.0.1:") {
		t.Fatalf("DirURL %q", p.DirURL)
	}
	p.Start(FreePort(t), FreePort(t))
	if roots := p.Roots(); roots == nil {
		t.Fatal("no roots")
	}
	if !strings.Contains(string(p.RootPEM()), "BEGIN CERTIFICATE") {
		t.Fatal("root is not PEM")
	}
}

// TestImports keeps pebbletest free of other meshd packages: tlsmgr's own
// tests import it, so any meshd import could form a cycle.
func TestImports(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go command not on PATH")
	}
	out, err := exec.Command(goBin, "list", "-deps", "-f", "{{.ImportPath}}", ".").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	const self = "github.com/meshd/meshd/tlsmgr/pebbletest"
	sawSelf := false
	for _, dep := range strings.Fields(string(out)) {
		if dep == self {
			sawSelf = true
		} else if first, _, _ := strings.Cut(dep, "/"); strings.Contains(first, ".") {
			// Standard packages (vendored ones too) have no dot in their
			// first element; meshd's and every library's do.
			t.Errorf("pebbletest depends on %s: it uses the standard library only", dep)
		}
	}
	if !sawSelf {
		t.Fatalf("go list output does not include %s\n%s", self, out)
	}
}
