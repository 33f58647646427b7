package proxy

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestProxyV2RoundTrip(t *testing.T) {
	tcp := func(s string) *net.TCPAddr { return net.TCPAddrFromAddrPort(netip.MustParseAddrPort(s)) }
	tests := []struct {
		src, dst net.Addr
		want     *ProxyHeader
	}{
		{tcp("203.0.113.7:51234"), tcp("198.51.100.1:5432"),
			&ProxyHeader{Src: netip.MustParseAddrPort("203.0.113.7:51234"), Dst: netip.MustParseAddrPort("198.51.100.1:5432")}},
		{tcp("[2001:db8::7]:443"), tcp("[2001:db8::1]:8443"),
			&ProxyHeader{Src: netip.MustParseAddrPort("[2001:db8::7]:443"), Dst: netip.MustParseAddrPort("[2001:db8::1]:8443")}},
		{tcp("203.0.113.7:1"), tcp("[2001:db8::1]:2"), // mixed: both as IPv6, read back unmapped
			&ProxyHeader{Src: netip.MustParseAddrPort("203.0.113.7:1"), Dst: netip.MustParseAddrPort("[2001:db8::1]:2")}},
		{net.UDPAddrFromAddrPort(netip.MustParseAddrPort("192.0.2.1:53")), net.UDPAddrFromAddrPort(netip.MustParseAddrPort("192.0.2.2:53")),
			&ProxyHeader{Src: netip.MustParseAddrPort("192.0.2.1:53"), Dst: netip.MustParseAddrPort("192.0.2.2:53")}},
		{nil, tcp("192.0.2.2:53"), &ProxyHeader{Local: true}},
	}
	for _, tt := range tests {
		b := AppendProxyV2(nil, tt.src, tt.dst)
		br := bufio.NewReader(io.MultiReader(bytes.NewReader(b), strings.NewReader("after")))
		h, err := ReadProxyHeader(br)
		if err != nil || *h != *tt.want {
			t.Errorf("%v → %v: read %+v, %v; want %+v", tt.src, tt.dst, h, err, tt.want)
		}
		if rest, _ := io.ReadAll(br); string(rest) != "after" {
			t.Errorf("%v: bytes after the header: %q", tt.src, rest)
		}
	}
}

func TestReadProxyHeader(t *testing.T) {
	v2 := func(cmd, fam byte, body ...byte) string {
		b := append([]byte{}, proxyV2Sig...)
		b = append(b, 0x20|cmd, fam, byte(len(body)>>8), byte(len(body)))
		return string(append(b, body...))
	}
	v4body := []byte{192, 0, 2, 1, 192, 0, 2, 2, 0x1f, 0x90, 0x00, 0x50}
	tests := []struct {
		in, want, err string
	}{
		{"PROXY TCP4 192.0.2.1 192.0.2.2 56324 443\r\n", "192.0.2.1:56324>192.0.2.2:443", ""},
		{"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n", "[2001:db8::1]:1>[2001:db8::2]:2", ""},
		{"PROXY UNKNOWN\r\n", "local", ""},
		{"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", "local", ""},
		{v2(1, 0x11, v4body...), "192.0.2.1:8080>192.0.2.2:80", ""},
		{v2(1, 0x11, append(v4body, 0x04, 0, 1, 'x')...), "192.0.2.1:8080>192.0.2.2:80", ""}, // a TLV, skipped
		{v2(0, 0x00), "local", ""},
		{"GET / HTTP/1.1\r\n", "", "no PROXY header"},
		{"PROXY TCP4 192.0.2.1 192.0.2.2 56324\r\n", "", "fields"},
		{"PROXY TCP4 2001:db8::1 192.0.2.2 1 2\r\n", "", "match"},
		{"PROXY TCP4 192.0.2.1 192.0.2.2 99999 443\r\n", "", "port"},
		{"PROXY UDP4 192.0.2.1 192.0.2.2 1 2\r\n", "", "protocol"},
		{"PROXY TCP4 " + strings.Repeat("1", 120) + "\r\n", "", "107"},
		{"PROXY TCP4 192.0.2.1", "", "EOF"},
		{v2(1, 0x11, v4body[:8]...), "", "want 12"},
		{v2(1, 0x21, v4body...), "", "want 36"},
		{v2(1, 0x51, v4body...), "", "family"},
		{v2(2, 0x11, v4body...), "", "command"},
		{v2(1, 0x11, v4body...)[:20], "", "addresses"},
		{strings.Replace(v2(1, 0x11, v4body...), "QUIT", "QUIX", 1), "", "signature"},
		{string(proxyV2Sig) + "\x21\x11\x10\x00", "", "over"},
	}
	for _, tt := range tests {
		h, err := ReadProxyHeader(bufio.NewReader(strings.NewReader(tt.in)))
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("%q: err %v, want one saying %q", tt.in, err, tt.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tt.in, err)
			continue
		}
		got := "local"
		if !h.Local {
			got = h.Src.String() + ">" + h.Dst.String()
		}
		if got != tt.want {
			t.Errorf("%q: %s, want %s", tt.in, got, tt.want)
		}
	}
}

// FuzzReadProxyHeader: no input makes the reader panic or read past the
// header it reports (at most the v2 fixed part plus its length, or 107
// bytes of v1).
func FuzzReadProxyHeader(f *testing.F) {
	f.Add([]byte("PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\n"))
	f.Add(AppendProxyV2(nil, &net.TCPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 1}, &net.TCPAddr{IP: net.IPv4(192, 0, 2, 2), Port: 2}))
	f.Add([]byte("PROXY UNKNOWN\r\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		br := bufio.NewReaderSize(r, 16)
		_, err := ReadProxyHeader(br)
		consumed := len(in) - r.Len() - br.Buffered()
		if err == nil && consumed > 16+maxProxyV2Len && consumed > maxProxyV1Len {
			t.Fatalf("consumed %d bytes", consumed)
		}
	})
}

// ppListener starts a ProxyProtoListener trusting trusted and echoes, for
// each connection, "REMOTE|first line" back.
func ppListener(t *testing.T, trusted ...string) (*ProxyProtoListener, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pl := &ProxyProtoListener{Listener: ln, HeaderTimeout: 500 * time.Millisecond, Logger: testLogger()}
	for _, p := range trusted {
		pl.Trusted = append(pl.Trusted, netip.MustParsePrefix(p))
	}
	t.Cleanup(func() { pl.Close() })
	go func() {
		for {
			c, err := pl.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				line, _ := bufio.NewReader(c).ReadString('\n')
				fmt.Fprintf(c, "%s|%s", c.RemoteAddr(), line)
			}()
		}
	}()
	return pl, ln.Addr().String()
}

func ppExchange(t *testing.T, addr, send string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, send)
	b, _ := io.ReadAll(c)
	return string(b)
}

// TestProxyProtoListener: a trusted peer's header sets the remote address;
// an untrusted peer's "header" is data, never believed; a trusted peer
// without a header is closed, and a slow one holds up nobody.
func TestProxyProtoListener(t *testing.T) {
	hdr := "PROXY TCP4 203.0.113.9 192.0.2.2 4242 443\r\n"
	t.Run("trusted", func(t *testing.T) {
		pl, addr := ppListener(t, "127.0.0.0/8")
		if got := ppExchange(t, addr, hdr+"hello\n"); got != "203.0.113.9:4242|hello\n" {
			t.Fatalf("got %q", got)
		}
		// A slow load balancer connection (no header yet) does not stop
		// another from being served.
		slow, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer slow.Close()
		if got := ppExchange(t, addr, hdr+"second\n"); got != "203.0.113.9:4242|second\n" {
			t.Fatalf("beside a slow connection: %q", got)
		}
		if got := ppExchange(t, addr, "hello\n"); got != "" {
			t.Fatalf("trusted peer without a header: got %q, want the connection closed", got)
		}
		if s := pl.Stats(); s.Accepted != 2 || s.Refused < 1 {
			t.Errorf("stats %+v", s)
		}
	})
	t.Run("untrusted", func(t *testing.T) {
		_, addr := ppListener(t, "192.0.2.0/24")
		got := ppExchange(t, addr, hdr)
		if !strings.HasPrefix(got, "127.0.0.1:") || !strings.HasSuffix(got, "|"+hdr) {
			t.Fatalf("untrusted peer: got %q, want its own address and the header as data", got)
		}
	})
}

// TestProxyProtoHAProxy: HAProxy, a real PROXY protocol peer, in both
// directions. meshd sends a v2 header to HAProxy (accept-proxy), HAProxy
// passes the client it read on to a ProxyProtoListener with send-proxy-v2
// and, on a second port, send-proxy (v1): the address meshd wrote arrives
// through HAProxy intact.
func TestProxyProtoHAProxy(t *testing.T) {
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("haproxy not installed (.ci/run installs it)")
		}
		t.Skip("haproxy not installed: apt-get install haproxy")
	}
	_, backend := ppListener(t, "127.0.0.0/8")
	free := func() int {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		return ln.Addr().(*net.TCPAddr).Port
	}
	v2port, v1port := free(), free()
	cfg := fmt.Sprintf(`global
  maxconn 100
defaults
  mode tcp
  timeout connect 5s
  timeout client 10s
  timeout server 10s
frontend v2
  bind 127.0.0.1:%d accept-proxy
  default_backend b2
backend b2
  server s %s send-proxy-v2
frontend v1
  bind 127.0.0.1:%d accept-proxy
  default_backend b1
backend b1
  server s %s send-proxy
`, v2port, backend, v1port, backend)
	path := filepath.Join(t.TempDir(), "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-f", path, "-db")
	var log syncBuffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill() // by its PID
		cmd.Wait()
	})
	src := &net.TCPAddr{IP: net.IPv4(203, 0, 113, 50), Port: 40000}
	dst := &net.TCPAddr{IP: net.IPv4(198, 51, 100, 10), Port: 5432}
	for _, port := range []int{v2port, v1port} {
		addr := "127.0.0.1:" + strconv.Itoa(port)
		var got string
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			c, err := net.DialTimeout("tcp", addr, time.Second)
			if err == nil {
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				c.Write(AppendProxyV2(nil, src, dst))
				io.WriteString(c, "through haproxy\n")
				b, _ := io.ReadAll(c)
				c.Close()
				if got = string(b); got != "" {
					break
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
		if want := "203.0.113.50:40000|through haproxy\n"; got != want {
			t.Fatalf("port %d: backend saw %q, want %q\nhaproxy: %s", port, got, want, log.String())
		}
	}
}
