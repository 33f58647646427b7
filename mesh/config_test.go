package mesh

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func validSidecar() Config {
	c := Config{Role: RoleSidecar, Name: "web-1", Region: "eu", CADir: "/ca", Service: "web", Upstream: "127.0.0.1:8080"}
	c.SetDefaults()
	return c
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name  string
		edit  func(*Config)
		field string // "" = valid
	}{
		{"valid sidecar", func(c *Config) {}, ""},
		{"valid edge", func(c *Config) { c.Role, c.Region, c.PublicHTTP = RoleEdge, "", ":80" }, ""},
		{"valid gateway", func(c *Config) { c.Role = RoleGateway }, ""},
		{"no role", func(c *Config) { c.Role = "" }, "role"},
		{"bad role", func(c *Config) { c.Role = "router" }, "role"},
		{"bad name", func(c *Config) { c.Name = "Web_1" }, "name"},
		{"no region", func(c *Config) { c.Region = "" }, "region"},
		{"no ca", func(c *Config) { c.CADir = "" }, "ca-dir"},
		{"tiny ttl", func(c *Config) { c.SVIDTTL = time.Millisecond }, "svid-ttl"},
		{"tiny ca poll", func(c *Config) { c.CAPoll = time.Millisecond }, "ca-poll"},
		{"no upstream", func(c *Config) { c.Upstream = "" }, "upstream"},
		{"bad upstream", func(c *Config) { c.Upstream = "localhost" }, "upstream"},
		{"h2c upstream", func(c *Config) { c.UpstreamProtocol = UpstreamH2C }, ""},
		{"bad upstream protocol", func(c *Config) { c.UpstreamProtocol = "http2" }, "upstream-protocol"},
		{"bad port", func(c *Config) { c.Listen = "127.0.0.1:99999" }, "listen"},
		{"bad join", func(c *Config) { c.Join = []string{"10.0.0.1"} }, "join"},
		{"bad service", func(c *Config) { c.Service = "web.api" }, "service"},
		{"bad domain", func(c *Config) { c.Domains = []string{"a..b"} }, "domains"},
		{"bad health path", func(c *Config) { c.HealthPath = "health" }, "health-path"},
		{"edge needs public-http", func(c *Config) { c.Role = RoleEdge }, "public-http"},
		{"bad log format", func(c *Config) { c.LogFormat = "xml" }, "log-format"},
		{"bad log level", func(c *Config) { c.LogLevel = "loud" }, "log-level"},
		{"advertise port 0", func(c *Config) { c.Advertise = "10.0.0.1:0" }, "advertise"},
		{"spire and files", func(c *Config) { c.SPIFFESocket, c.CertFile, c.KeyFile = "unix:///run/spire.sock", "a", "b" }, "spiffe-socket"},
		{"cert without key", func(c *Config) { c.CertFile = "a" }, "key-file"},
		{"negative drain", func(c *Config) { c.DrainDelay = -time.Second }, "drain-delay"},
		{"fixed concurrency limit", func(c *Config) { c.ConcurrencyLimit = "200" }, ""},
		{"no concurrency limit", func(c *Config) { c.ConcurrencyLimit = "off" }, ""},
		{"bad concurrency limit", func(c *Config) { c.ConcurrencyLimit = "fast" }, "concurrency-limit"},
		{"zero concurrency limit", func(c *Config) { c.ConcurrencyLimit = "0" }, "concurrency-limit"},
		{"negative concurrency limit", func(c *Config) { c.ConcurrencyLimit = "-3" }, "concurrency-limit"},
		{"negative queue timeout", func(c *Config) { c.QueueTimeout = -time.Second }, "queue-timeout"},
		{"tiny queue timeout", func(c *Config) { c.QueueTimeout = time.Microsecond }, "queue-timeout"},
		{"huge queue timeout", func(c *Config) { c.QueueTimeout = time.Hour }, "queue-timeout"},
		{"tcp ports", func(c *Config) {
			c.TCP, c.TCPOut = []string{"pg=127.0.0.1:5432", "redis=127.0.0.1:6379"}, []string{"db/pg=127.0.0.1:15432", "cache=127.0.0.1:16379"}
		}, ""},
		{"tcp only", func(c *Config) { c.Upstream, c.TCP = "", []string{"pg=127.0.0.1:5432"} }, ""},
		{"tcp only with health path", func(c *Config) { c.Upstream, c.TCP, c.HealthPath = "", []string{"pg=127.0.0.1:5432"}, "/h" }, "health-path"},
		{"tcp without name", func(c *Config) { c.TCP = []string{"127.0.0.1:5432"} }, "tcp"},
		{"tcp numeric name", func(c *Config) { c.TCP = []string{"5432=127.0.0.1:5432"} }, "tcp"},
		{"tcp bad address", func(c *Config) { c.TCP = []string{"pg=5432"} }, "tcp"},
		{"tcp twice", func(c *Config) { c.TCP = []string{"pg=127.0.0.1:5432", "pg=127.0.0.1:5433"} }, "tcp"},
		{"tcp on a gateway", func(c *Config) { c.Role, c.TCP = RoleGateway, []string{"pg=127.0.0.1:5432"} }, "tcp"},
		{"tcp-out bad service", func(c *Config) { c.TCPOut = []string{"Db/pg=127.0.0.1:15432"} }, "tcp-out"},
		{"tcp-out no address", func(c *Config) { c.TCPOut = []string{"db/pg"} }, "tcp-out"},
		{"public tcp", func(c *Config) {
			c.Role, c.Region, c.PublicHTTP, c.PublicTCP = RoleEdge, "", ":80", []string{":5432=db/pg", "127.0.0.1:6379=cache"}
		}, ""},
		{"public tcp on a sidecar", func(c *Config) { c.PublicTCP = []string{":5432=db/pg"} }, "public-tcp"},
		{"public tcp bad", func(c *Config) {
			c.Role, c.Region, c.PublicHTTP, c.PublicTCP = RoleEdge, "", ":80", []string{"db/pg=:5432"}
		}, "public-tcp"},
		{"tcp proxy protocol", func(c *Config) { c.TCP = []string{"pg=127.0.0.1:5432,proxy-protocol"} }, ""},
		{"tcp bad option", func(c *Config) { c.TCP = []string{"pg=127.0.0.1:5432,proxy"} }, "tcp"},
		{"proxy protocol from", func(c *Config) {
			c.Role, c.Region, c.PublicHTTP, c.ProxyProtocolFrom = RoleEdge, "", ":80", []string{"10.0.0.0/24", "192.0.2.1"}
		}, ""},
		{"proxy protocol from bad", func(c *Config) {
			c.Role, c.Region, c.PublicHTTP, c.ProxyProtocolFrom = RoleEdge, "", ":80", []string{"lb"}
		}, "proxy-protocol-from"},
		{"proxy protocol from on a gateway", func(c *Config) { c.Role, c.ProxyProtocolFrom = RoleGateway, []string{"10.0.0.1"} }, "proxy-protocol-from"},
		{"udp ports", func(c *Config) {
			c.UDP, c.UDPOut, c.TCP = []string{"dns=127.0.0.1:53"}, []string{"dns/dns=127.0.0.1:1053"}, []string{"dns=127.0.0.1:53"}
		}, ""},
		{"udp only", func(c *Config) { c.Upstream, c.UDP = "", []string{"dns=127.0.0.1:53"} }, ""},
		{"udp proxy protocol", func(c *Config) { c.UDP = []string{"dns=127.0.0.1:53,proxy-protocol"} }, "udp"},
		{"udp-out twice", func(c *Config) { c.UDPOut = []string{"dns=127.0.0.1:1053", "dns/x=127.0.0.1:1053"} }, "udp-out"},
		{"tcp and udp out on one address", func(c *Config) { c.UDPOut, c.TCPOut = []string{"dns=127.0.0.1:1053"}, []string{"dns=127.0.0.1:1053"} }, ""},
		{"public udp on a sidecar", func(c *Config) { c.PublicUDP = []string{":53=dns"} }, "public-udp"},
		{"tcp-out twice", func(c *Config) { c.TCPOut = []string{"db/pg=127.0.0.1:15432", "db/x=127.0.0.1:15432"} }, "tcp-out"},
		{"otlp endpoint", func(c *Config) { c.OTLPEndpoint, c.OTLPSampleRatio = "https://collector.example:4318/v1/traces", "0.1" }, ""},
		{"otlp endpoint without path", func(c *Config) { c.OTLPEndpoint = "http://127.0.0.1:4318" }, ""},
		{"otlp endpoint not a URL", func(c *Config) { c.OTLPEndpoint = "127.0.0.1:4318" }, "otlp-endpoint"},
		{"otlp endpoint grpc scheme", func(c *Config) { c.OTLPEndpoint = "grpc://127.0.0.1:4317" }, "otlp-endpoint"},
		{"otlp endpoint no host", func(c *Config) { c.OTLPEndpoint = "http:///v1/traces" }, "otlp-endpoint"},
		{"otlp endpoint credentials", func(c *Config) { c.OTLPEndpoint = "http://user:secret@collector:4318" }, "otlp-endpoint"},
		{"otlp endpoint query", func(c *Config) { c.OTLPEndpoint = "http://collector:4318/?token=x" }, "otlp-endpoint"},
		{"otlp sample ratio 0", func(c *Config) { c.OTLPSampleRatio = "0" }, ""},
		{"otlp sample ratio above 1", func(c *Config) { c.OTLPSampleRatio = "1.5" }, "otlp-sample-ratio"},
		{"otlp sample ratio negative", func(c *Config) { c.OTLPSampleRatio = "-0.1" }, "otlp-sample-ratio"},
		{"otlp sample ratio NaN", func(c *Config) { c.OTLPSampleRatio = "NaN" }, "otlp-sample-ratio"},
		{"otlp sample ratio percent", func(c *Config) { c.OTLPSampleRatio = "10%" }, "otlp-sample-ratio"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := validSidecar()
			tt.edit(&c)
			err := c.Validate()
			if tt.field == "" {
				if err != nil {
					t.Fatalf("want valid, got %v", err)
				}
				return
			}
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("want a FieldError for %s, got %v", tt.field, err)
			}
			if fe.Field != tt.field {
				t.Fatalf("error names %q, want %q (%v)", fe.Field, tt.field, err)
			}
			if !strings.HasPrefix(err.Error(), tt.field+": ") {
				t.Fatalf("message %q does not start with the field", err)
			}
		})
	}
}

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "meshd.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadFile(t *testing.T) {
	p := writeFile(t, `# a sidecar
role: sidecar
name: web-1
region: eu
ca-dir: /etc/meshd/ca
service: web
upstream: 127.0.0.1:8080
join: [10.0.0.5:7946, 10.0.0.6:7946]
domains: www.example.com
svid-ttl: 30m
`)
	var c Config
	pos, err := LoadFile(p, &c)
	if err != nil {
		t.Fatal(err)
	}
	if c.Role != "sidecar" || c.Service != "web" || c.SVIDTTL != 30*time.Minute ||
		len(c.Join) != 2 || c.Join[1] != "10.0.0.6:7946" || len(c.Domains) != 1 {
		t.Fatalf("decoded %+v", c)
	}
	if pos.Lines["upstream"] != 7 {
		t.Fatalf("upstream line = %d, want 7", pos.Lines["upstream"])
	}
	// A value Validate refuses is reported at its line in the file.
	c.Region = "EU"
	err = pos.Annotate(c.Validate())
	if err == nil || !strings.Contains(err.Error(), p+":4: region:") {
		t.Fatalf("annotated error = %v", err)
	}
}

func TestLoadFileErrors(t *testing.T) {
	tests := []struct {
		name, body, want string
	}{
		{"unknown key", "role: edge\nlisten-addr: :80\n", ":2: listen-addr: unknown key"},
		{"bad duration", "role: edge\n\nsvid-ttl: soon\n", `:3: svid-ttl: "soon" is not a duration`},
		{"list for string", "role: [edge]\n", ":1: role: want a string"},
		{"duplicate", "role: edge\nrole: gateway\n", "role"},
		{"not a mapping", "- role\n", "must be a mapping"},
		{"syntax", "role: [edge\n", "yaml"},
		{"map in list", "join:\n  - a: b\n", "join"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var c Config
			_, err := LoadFile(writeFile(t, tt.body), &c)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tt.want)
			}
		})
	}
	var c Config
	if _, err := LoadFile(filepath.Join(t.TempDir(), "missing.yaml"), &c); err == nil {
		t.Fatal("missing file accepted")
	}
}

func FuzzLoadConfig(f *testing.F) {
	f.Add([]byte("role: edge\npublic-http: :80\n"))
	f.Add([]byte("join: [a:1, b:2]\nsvid-ttl: 1h\n"))
	f.Add([]byte("- x\n"))
	f.Add([]byte("{role: {a: b}}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var c Config
		pos, err := decodeYAML("f.yaml", data, &c)
		if err != nil {
			return
		}
		c.SetDefaults()
		_ = pos.Annotate(c.Validate())
	})
}

func TestPoolConcurrencyLimit(t *testing.T) {
	for in, want := range map[string]int{"": 0, "adaptive": 0, "off": -1, "1": 1, "250": 250} {
		c := Config{ConcurrencyLimit: in}
		if got, err := c.PoolConcurrencyLimit(); err != nil || got != want {
			t.Errorf("%q: %d, %v; want %d", in, got, err, want)
		}
	}
	c := validSidecar()
	if c.ConcurrencyLimit != "adaptive" || c.QueueTimeout != 100*time.Millisecond {
		t.Errorf("defaults: concurrency-limit %q, queue-timeout %v", c.ConcurrencyLimit, c.QueueTimeout)
	}
}
