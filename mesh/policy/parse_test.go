package policy

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"
)

func mustParse(t *testing.T, doc string) *Document {
	t.Helper()
	d, err := Parse("p.yaml", []byte(doc))
	if err != nil {
		t.Fatalf("Parse: %v\n%s", err, doc)
	}
	return d
}

// TestParseExample parses testdata/example.yaml, the document the
// package comment describes, and checks every setting and what each
// rule inherits.
func TestParseExample(t *testing.T) {
	data, err := os.ReadFile("testdata/example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	doc, err := Parse("example.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	if doc.Version != 7 {
		t.Errorf("Version = %d", doc.Version)
	}
	wantDomains := map[string]string{"www.example.com": "web", "example.com": "web", "api.example.com": "api"}
	if !reflect.DeepEqual(doc.Domains, wantDomains) {
		t.Errorf("Domains = %v", doc.Domains)
	}
	if len(doc.Services) != 3 || doc.Services["billing"] == nil {
		t.Fatalf("Services = %v", doc.Services)
	}

	web := doc.Services["web"]
	if web.Name != "web" || !reflect.DeepEqual(web.Domains, []string{"www.example.com", "example.com"}) {
		t.Errorf("web = %+v", web)
	}
	def := web.Default
	wantWebRetries := Retries{
		Attempts: 3, On: RetryConnectFailure | RetryRefusedStream | Retry502 | Retry503 | Retry504 | RetryTimeout,
		Budget: 0.2, MinPerSecond: 10, BackoffBase: 25 * time.Millisecond, BackoffMax: 250 * time.Millisecond,
		ReplayBody: 64 << 10,
	}
	want := Route{
		Name:        "default",
		Split:       []Weight{{"v1", 90}, {"v2", 10}},
		Timeouts:    Timeouts{Connect: time.Second, FirstByte: 5 * time.Second, Total: 30 * time.Second, Idle: time.Minute},
		Retries:     wantWebRetries,
		RateLimit:   &RateLimit{PerCaller: Rate{50, time.Second}, PerIP: Rate{100, time.Second}, Total: Rate{1000, time.Second}, Burst: 20},
		Concurrency: Concurrency{Soft: 100, Hard: 200},
		Outlier:     Outlier{ConsecutiveFailures: 5, Ejection: 30 * time.Second, MaxEjected: 0.1},
		Failover:    Failover{Overprovisioning: 1.4},
		Affinity:    &Affinity{Header: "X-User"},
		Mirror:      &Mirror{Subset: "v2", Fraction: 0.05},
		Fault: &Fault{
			Delay: &FaultDelay{Fraction: 0.1, Duration: 100 * time.Millisecond},
			Abort: &FaultAbort{Fraction: 0.01, Status: 503},
		},
	}
	if !reflect.DeepEqual(*def, want) {
		t.Errorf("web default =\n%+v\nwant\n%+v", *def, want)
	}
	if len(web.Routes) != 3 {
		t.Fatalf("web has %d routes", len(web.Routes))
	}

	// api-canary: a fixed subset; everything else inherited.
	canary := web.Routes[0]
	wantCanary := want
	wantCanary.Name, wantCanary.Subset, wantCanary.Split, wantCanary.match = "api-canary", "v2", nil, canary.match
	if !reflect.DeepEqual(*canary, wantCanary) {
		t.Errorf("api-canary =\n%+v\nwant\n%+v", *canary, wantCanary)
	}

	// Rule 1: its own split, total timeout (connect, first-byte and idle
	// inherited), and retries as a whole: attempts 1 with the default
	// conditions, not the service's.
	login := web.Routes[1]
	wantLogin := want
	wantLogin.Name, wantLogin.Split, wantLogin.match = "1", []Weight{{"v1", 50}, {"v2", 50}}, login.match
	wantLogin.Timeouts.Total = 500 * time.Millisecond
	wantLogin.Retries = defaultRetries
	wantLogin.Retries.Attempts = 1
	if !reflect.DeepEqual(*login, wantLogin) {
		t.Errorf("rule 1 =\n%+v\nwant\n%+v", *login, wantLogin)
	}
	if web.Routes[2].Name != "2" || web.Routes[2].Subset != "v1" || web.Routes[2].Split != nil {
		t.Errorf("rule 2 = %+v", web.Routes[2])
	}

	api := doc.Services["api"]
	if api.Default.Timeouts != (Timeouts{Total: 2 * time.Second}) || *api.Default.Affinity != (Affinity{Cookie: "session"}) {
		t.Errorf("api default = %+v", api.Default)
	}
	if api.Default.Split != nil || api.Default.RateLimit != nil || api.Default.Concurrency != (Concurrency{}) {
		t.Errorf("api default has settings it did not write: %+v", api.Default)
	}
	export := api.Routes[0]
	if export.Timeouts != (Timeouts{Total: 5 * time.Minute, Idle: 30 * time.Second}) ||
		*export.RateLimit != (RateLimit{PerCaller: Rate{3000, time.Minute}}) || export.Affinity != api.Default.Affinity {
		t.Errorf("export = %+v", export)
	}

	// A service that sets nothing gets the defaults.
	billing := doc.Services["billing"]
	if !reflect.DeepEqual(billing.Default, DefaultRoute()) || billing.Routes != nil || billing.Domains != nil {
		t.Errorf("billing = %+v, default %+v", billing, billing.Default)
	}
}

func TestParseDefaults(t *testing.T) {
	if defaultRetries.Attempts != 2 || defaultRetries.On.String() != "connect-failure,refused-stream" ||
		defaultRetries.Budget != 0.2 || defaultRetries.MinPerSecond != 10 ||
		defaultRetries.BackoffBase != 25*time.Millisecond || defaultRetries.BackoffMax != 250*time.Millisecond ||
		defaultRetries.ReplayBody != 64<<10 {
		t.Errorf("defaultRetries = %+v", defaultRetries)
	}
	if defaultOutlier != (Outlier{5, 30 * time.Second, 0.1}) || defaultFailover != (Failover{1.4}) {
		t.Errorf("defaults = %+v %+v", defaultOutlier, defaultFailover)
	}
	// A partial block keeps the defaults of the fields it leaves out.
	doc := mustParse(t, `services:
  web:
    retries: {budget: 50%}
    outlier: {ejection: 1m}
    routes:
      - match: {path: /a}
        retries: {on: [503]}
`)
	web := doc.Services["web"]
	r := defaultRetries
	r.Budget = 0.5
	if web.Default.Retries != r {
		t.Errorf("retries = %+v, want %+v", web.Default.Retries, r)
	}
	if o := web.Default.Outlier; o != (Outlier{5, time.Minute, 0.1}) {
		t.Errorf("outlier = %+v", o)
	}
	r = defaultRetries
	r.On = Retry503
	if got := web.Routes[0].Retries; got != r {
		t.Errorf("route retries = %+v, want %+v (a whole block, from the defaults)", got, r)
	}
	if web.Routes[0].Outlier != web.Default.Outlier {
		t.Errorf("route outlier not inherited")
	}
}

// TestParseValues covers the value syntaxes: sizes, percentages,
// rates, durations, scalars as strings.
func TestParseValues(t *testing.T) {
	for _, tc := range []struct {
		yaml  string
		check func(r *Route) bool
	}{
		{`retries: {replay-body: 1MiB}`, func(r *Route) bool { return r.Retries.ReplayBody == 1<<20 }},
		{`retries: {replay-body: 1000}`, func(r *Route) bool { return r.Retries.ReplayBody == 1000 }},
		{`retries: {replay-body: 0}`, func(r *Route) bool { return r.Retries.ReplayBody == 0 }},
		{`retries: {replay-body: 512B}`, func(r *Route) bool { return r.Retries.ReplayBody == 512 }},
		{`retries: {replay-body: 16MiB}`, func(r *Route) bool { return r.Retries.ReplayBody == 16<<20 }},
		{`retries: {budget: 0.5%}`, func(r *Route) bool { return r.Retries.Budget == 0.005 }},
		{`retries: {budget: 0%, min-per-second: 0}`, func(r *Route) bool { return r.Retries.Budget == 0 && r.Retries.MinPerSecond == 0 }},
		{`retries: {min-per-second: 2.5}`, func(r *Route) bool { return r.Retries.MinPerSecond == 2.5 }},
		{`retries: {on: []}`, func(r *Route) bool { return r.Retries.On == 0 }},
		{`retries: {backoff: {base: 1s, max: 1s}}`, func(r *Route) bool { return r.Retries.BackoffBase == time.Second }},
		{`retries: {backoff: {max: 1s}}`, func(r *Route) bool {
			return r.Retries.BackoffBase == 25*time.Millisecond && r.Retries.BackoffMax == time.Second
		}},
		{`rate-limit: {total: 10/h, global: true}`, func(r *Route) bool { return *r.RateLimit == RateLimit{Total: Rate{10, time.Hour}, Global: true} }},
		{`rate-limit: {per-ip: 3000/m}`, func(r *Route) bool { return r.RateLimit.PerIP == Rate{3000, time.Minute} }},
		{`mirror: {subset: v2, percent: "12.5%"}`, func(r *Route) bool { return *r.Mirror == Mirror{"v2", 0.125} }},
		{`mirror: {subset: v2, percent: 100}`, func(r *Route) bool { return r.Mirror.Fraction == 1 }},
		{`mirror: {subset: v2, percent: 0}`, func(r *Route) bool { return r.Mirror.Fraction == 0 }},
		{`fault: {abort: {percent: 0.1, status: 429}}`, func(r *Route) bool { return r.Fault.Delay == nil && *r.Fault.Abort == FaultAbort{0.001, 429} }},
		{`concurrency: {hard: 5}`, func(r *Route) bool { return r.Concurrency == Concurrency{Hard: 5} }},
		{`concurrency: {soft: 5}`, func(r *Route) bool { return r.Concurrency == Concurrency{Soft: 5} }},
		{`failover: {overprovisioning: 1}`, func(r *Route) bool { return r.Failover.Overprovisioning == 1 }},
		{`failover: {}`, func(r *Route) bool { return r.Failover == defaultFailover }},
		{`affinity: {header: X-USER-ID}`, func(r *Route) bool { return r.Affinity.Header == "X-User-Id" }},
		{`timeouts: {first-byte: 1m30s}`, func(r *Route) bool { return r.Timeouts == Timeouts{FirstByte: 90 * time.Second} }},
		{`timeout: 24h`, func(r *Route) bool { return r.Timeouts.Total == 24*time.Hour }},
		{`split: {a: 0, b: 1}`, func(r *Route) bool { return reflect.DeepEqual(r.Split, []Weight{{"a", 0}, {"b", 1}}) }},
		{`split: {"1": 1}`, func(r *Route) bool { return r.Split[0].Subset == "1" }},
		{`split: {v1: 1000000}`, func(r *Route) bool { return r.Split[0].Weight == 1000000 }},
	} {
		doc, err := Parse("p.yaml", []byte("services: {web: {"+tc.yaml+"}}\n"))
		if err != nil {
			t.Errorf("%s: %v", tc.yaml, err)
			continue
		}
		if r := doc.Services["web"].Default; !tc.check(r) {
			t.Errorf("%s: got %+v", tc.yaml, r)
		}
	}
	// Flow and block styles, comments and quoting all mean the same.
	a := mustParse(t, "services: {web: {domains: [a.example], split: {v1: 1}}}")
	b := mustParse(t, "# policy\nservices:\n  web:\n    domains:\n      - 'a.example' # the site\n    split:\n      \"v1\": 1\n")
	if !reflect.DeepEqual(a, b) {
		t.Errorf("styles differ:\n%+v\n%+v", a, b)
	}
	if d := mustParse(t, "{}"); d.Version != 0 || len(d.Services) != 0 || d.Services == nil || d.Domains == nil {
		t.Errorf("empty mapping = %+v", d)
	}
	if d := mustParse(t, "services: {}\nversion: 18446744073709551615\n"); d.Version != 1<<64-1 {
		t.Errorf("Version = %d", d.Version)
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		doc  string
		pos  string // line:col, or line when the YAML parser gives no column
		path string
		msg  string
	}{
		{"empty", "", "1:1", "", "empty document"},
		{"only a comment", "# nothing\n", "1:1", "", "empty document"},
		{"scalar document", "hello\n", "1:1", "", `want a mapping, not "hello"`},
		{"unknown top field", "version: 1\nservics: {}\n", "2:1", "", `unknown field "servics"`},
		{"duplicate field", "version: 1\nversion: 2\n", "2:1", "", `duplicate field "version"`},
		{"version string", "version: seven\n", "1:10", "version", `want a positive integer, not "seven"`},
		{"version zero", "version: 0\n", "1:10", "version", `want a positive integer, not "0"`},
		{"version negative", "version: -1\n", "1:10", "version", `want a positive integer, not "-1"`},
		{"services list", "services: [web]\n", "1:11", "services", "want a mapping, not a list"},
		{"service name", "services:\n  Web: {}\n", "2:3", "services", `service name "Web" is not a DNS label`},
		{"service name too long", "services:\n  " + strings.Repeat("a", 64) + ": {}\n", "2:3", "services", "is not a DNS label"},
		{"service null", "services:\n  web:\n", "2:7", "services.web", "want a mapping, not null"},
		{"unknown service field", "services:\n  web:\n    domain: [a.com]\n", "3:5", "services.web", `unknown field "domain"`},
		{"domains scalar", "services:\n  web:\n    domains: a.com\n", "3:14", "services.web.domains", `want a list, not "a.com"`},
		{"domain uppercase", "services:\n  web:\n    domains: [a.com, A.com]\n", "3:22", "services.web.domains[1]", `domain "A.com" must be lowercase`},
		{"domain wildcard", "services:\n  web:\n    domains: ['*.a.com']\n", "3:15", "services.web.domains[0]", `domain "*.a.com" is not a DNS name`},
		{"domain trailing dot", "services:\n  web:\n    domains: [a.com.]\n", "3:15", "services.web.domains[0]", "is not a DNS name"},
		{"domain ip", "services:\n  web:\n    domains: [10.0.0.1]\n", "3:15", "services.web.domains[0]", `domain "10.0.0.1" is not a DNS name`},
		{"domain with port", "services:\n  web:\n    domains: [\"a.com:443\"]\n", "3:15", "services.web.domains[0]", "is not a DNS name"},
		{"domain twice", "services:\n  web:\n    domains: [a.com, a.com]\n", "3:22", "services.web.domains[1]", `duplicate domain "a.com"`},
		{"domain two owners", "services:\n  web: {domains: [a.com]}\n  api: {domains: [b.com, a.com]}\n", "3:26", "services.api.domains[1]", `domain "a.com" is already owned by service "web"`},
		{"split negative", "services:\n  web:\n    split: {v1: -1, v2: 1}\n", "3:17", "services.web.split.v1", "-1 is out of range [0, 1000000]"},
		{"split too heavy", "services:\n  web:\n    split: {v1: 1000001}\n", "3:17", "services.web.split.v1", "out of range"},
		{"split zero sum", "services:\n  web:\n    split: {v1: 0, v2: 0}\n", "3:12", "services.web.split", "weights add up to 0"},
		{"split subset name", "services:\n  web:\n    split: {V1: 1}\n", "3:13", "services.web.split", `subset "V1" is not a DNS label`},
		{"split percent", "services:\n  web:\n    split: {v1: 90%}\n", "3:17", "services.web.split.v1", `want an integer, not "90%"`},
		{"split empty", "services:\n  web:\n    split: {}\n", "3:12", "services.web.split", "want at least one subset"},
		{"timeout int", "services:\n  web:\n    timeout: 2\n", "3:14", "services.web.timeout", `want a duration like "250ms" or "2s", not "2"`},
		{"timeout zero", "services:\n  web:\n    timeout: 0s\n", "3:14", "services.web.timeout", "duration 0s is out of range (0, 24h0m0s]"},
		{"timeout huge", "services:\n  web:\n    timeout: 25h\n", "3:14", "services.web.timeout", "out of range"},
		{"timeout twice", "services:\n  web:\n    timeouts: {total: 1s}\n    timeout: 2s\n", "4:5", "services.web.timeout", "set timeout or timeouts.total, not both"},
		{"timeouts unknown", "services:\n  web:\n    timeouts: {read: 1s}\n", "3:16", "services.web.timeouts", `unknown field "read"`},
		{"attempts zero", "services:\n  web:\n    retries: {attempts: 0}\n", "3:25", "services.web.retries.attempts", "0 is out of range [1, 10]"},
		{"retry on unknown", "services:\n  web:\n    retries: {on: [503, 500]}\n", "3:25", "services.web.retries.on[1]", `unknown condition "500" (want connect-failure, refused-stream, 502, 503, 504 or timeout)`},
		{"retry on twice", "services:\n  web:\n    retries: {on: [503, 503]}\n", "3:25", "services.web.retries.on[1]", `duplicate condition "503"`},
		{"budget over", "services:\n  web:\n    retries: {budget: 120%}\n", "3:23", "services.web.retries.budget", "percentage 120% is out of range [0%, 100%]"},
		{"budget bare", "services:\n  web:\n    retries: {budget: 20}\n", "3:23", "services.web.retries.budget", `want a percentage like "20%", not "20"`},
		{"backoff order", "services:\n  web:\n    retries: {backoff: {base: 1s}}\n", "3:31", "services.web.retries.backoff.base", "backoff base 1s is above backoff max 250ms"},
		{"replay-body unit", "services:\n  web:\n    retries: {replay-body: 64KB}\n", "3:28", "services.web.retries.replay-body", `want a size like "64KiB", "1MiB" or a number of bytes, not "64KB"`},
		{"replay-body huge", "services:\n  web:\n    retries: {replay-body: 1GiB}\n", "3:28", "services.web.retries.replay-body", "more than the limit of 16777216 bytes"},
		{"rate unit", "services:\n  web:\n    rate-limit: {total: 50/d}\n", "3:25", "services.web.rate-limit.total", `want a rate like "50/s", "3000/m" or "10/h", not "50/d"`},
		{"rate zero", "services:\n  web:\n    rate-limit: {total: 0/s}\n", "3:25", "services.web.rate-limit.total", "rate count 0 is out of range"},
		{"rate-limit empty", "services:\n  web:\n    rate-limit: {burst: 5}\n", "3:17", "services.web.rate-limit", "want at least one of per-caller, per-ip or total"},
		{"global not bool", "services:\n  web:\n    rate-limit: {total: 1/s, global: no}\n", "3:38", "services.web.rate-limit.global", `want true or false, not "no"`},
		{"concurrency order", "services:\n  web:\n    concurrency: {soft: 10, hard: 5}\n", "3:35", "services.web.concurrency.hard", "hard limit 5 is below soft limit 10"},
		{"outlier failures", "services:\n  web:\n    outlier: {consecutive-failures: 0}\n", "3:37", "services.web.outlier.consecutive-failures", "0 is out of range [1, 1000]"},
		{"overprovisioning", "services:\n  web:\n    failover: {overprovisioning: 0.5}\n", "3:34", "services.web.failover.overprovisioning", "0.5 is out of range [1, 100]"},
		{"affinity both", "services:\n  web:\n    affinity: {header: a, cookie: b}\n", "3:15", "services.web.affinity", "want exactly one of header or cookie"},
		{"affinity header name", "services:\n  web:\n    affinity: {header: \"x user\"}\n", "3:24", "services.web.affinity.header", `"x user" is not a valid header name`},
		{"mirror no percent", "services:\n  web:\n    mirror: {subset: v2}\n", "3:13", "services.web.mirror", "want subset and percent"},
		{"mirror percent over", "services:\n  web:\n    mirror: {subset: v2, percent: 101}\n", "3:35", "services.web.mirror.percent", "101 is out of range [0, 100]"},
		{"abort status", "services:\n  web:\n    fault: {abort: {percent: 1, status: 700}}\n", "3:41", "services.web.fault.abort.status", "700 is out of range [200, 599]"},
		{"delay no duration", "services:\n  web:\n    fault: {delay: {percent: 1}}\n", "3:20", "services.web.fault.delay", "want percent and duration"},
		{"fault empty", "services:\n  web:\n    fault: {}\n", "3:12", "services.web.fault", "want delay, abort or both"},
		{"routes mapping", "services:\n  web:\n    routes: {a: 1}\n", "3:13", "services.web.routes", "want a list, not a mapping"},
		{"route unknown field", "services:\n  web:\n    routes:\n      - match: {path: /}\n        subsets: v1\n", "5:9", "services.web.routes[0]", `unknown field "subsets"`},
		{"route outlier", "services:\n  web:\n    routes:\n      - outlier: {ejection: 1s}\n", "4:9", "services.web.routes[0].outlier", "outlier is a setting of the service's instances: set it on the service, not on a route"},
		{"route domains", "services:\n  web:\n    routes:\n      - domains: [a.com]\n", "4:9", "services.web.routes[0]", `unknown field "domains"`},
		{"route name", "services:\n  web:\n    routes:\n      - name: API\n", "4:15", "services.web.routes[0].name", `route name "API" is not a DNS label`},
		{"route name default", "services:\n  web:\n    routes:\n      - name: default\n", "4:15", "services.web.routes[0].name", `route name "default" is reserved`},
		{"route name twice", "services:\n  web:\n    routes:\n      - {name: \"1\", match: {path: /a}}\n      - {match: {path: /b}}\n", "5:9", "services.web.routes[1]", `route name "1" is already the name of routes[0]`},
		{"subset and split", "services:\n  web:\n    routes:\n      - subset: v1\n        split: {v1: 1}\n", "5:9", "services.web.routes[0].split", "set subset or split, not both"},
		{"subset name", "services:\n  web:\n    routes:\n      - subset: v_1\n", "4:17", "services.web.routes[0].subset", `subset "v_1" is not a DNS label`},
		{"unreachable", "services:\n  web:\n    routes:\n      - subset: v1\n      - match: {path: /}\n", "5:9", "services.web.routes[1]", "unreachable: services.web.routes[0] matches every request"},
		{"match unknown", "services:\n  web:\n    routes:\n      - match: {host: a.com}\n", "4:17", "services.web.routes[0].match", `unknown field "host"`},
		{"path relative", "services:\n  web:\n    routes:\n      - match: {path: api}\n", "4:23", "services.web.routes[0].match.path", `path "api" must start with /`},
		{"prefix with query", "services:\n  web:\n    routes:\n      - match: {path-prefix: \"/a?b\"}\n", "4:30", "services.web.routes[0].match.path-prefix", "without query or fragment"},
		{"method lowercase", "services:\n  web:\n    routes:\n      - match: {methods: [GET, post]}\n", "4:32", "services.web.routes[0].match.methods[1]", `method "post" is not an uppercase token like GET or POST`},
		{"methods empty", "services:\n  web:\n    routes:\n      - match: {methods: []}\n", "4:26", "services.web.routes[0].match.methods", "want at least one method"},
		{"matcher unknown", "services:\n  web:\n    routes:\n      - match:\n          headers:\n            x-env: {suffix: staging}\n", "6:21", "services.web.routes[0].match.headers.x-env", `unknown matcher "suffix" (want exact, prefix or regex)`},
		{"matcher two", "services:\n  web:\n    routes:\n      - match: {headers: {x-env: {exact: a, prefix: b}}}\n", "4:34", "services.web.routes[0].match.headers.x-env", "want exactly one of exact, prefix or regex"},
		{"matcher list", "services:\n  web:\n    routes:\n      - match: {headers: {x-env: [a]}}\n", "4:34", "services.web.routes[0].match.headers.x-env", "want a string, not a list"},
		{"regex bad", "services:\n  web:\n    routes:\n      - match: {headers: {x-env: {regex: \"(\"}}}\n", "4:42", "services.web.routes[0].match.headers.x-env.regex", "bad regular expression: error parsing regexp: missing closing )"},
		{"regex long", "services:\n  web:\n    routes:\n      - match: {headers: {x-env: {regex: " + strings.Repeat("a", maxRegexLen+1) + "}}}\n", "4:42", "services.web.routes[0].match.headers.x-env.regex", "1025 bytes, more than the limit of 1024"},
		{"header host", "services:\n  web:\n    routes:\n      - match: {headers: {Host: a.com}}\n", "4:27", "services.web.routes[0].match.headers.Host", "match the host by the service's domains, not by header"},
		{"header twice", "services:\n  web:\n    routes:\n      - match: {headers: {X-Env: a, x-env: b}}\n", "4:37", "services.web.routes[0].match.headers.x-env", `header "x-env" is matched twice (names are case-insensitive)`},
		{"header name", "services:\n  web:\n    routes:\n      - match: {headers: {\"x env\": a}}\n", "4:27", "services.web.routes[0].match.headers", `"x env" is not a valid header name`},
		{"header null", "services:\n  web:\n    routes:\n      - match: {headers: {x-env: }}\n", "4:34", "services.web.routes[0].match.headers.x-env", "want a string, not null"},
		{"anchor", "services:\n  web: &w {}\n  api: *w\n", "2:8", "services.web", "anchors are not allowed in a policy document"},
		{"anchored value", "services:\n  web: {timeout: &v 1s}\n  api: {timeout: *v}\n", "2:18", "services.web.timeout", "anchors are not allowed"},
		{"merge key", "services:\n  web: {<<: {timeout: 1s}}\n", "2:9", "services.web", `unknown field "<<"`},
		{"tag", "version: !!int 7\n", "1:10", "version", "tags are not allowed in a policy document"},
		{"custom tag", "services: !policy {}\n", "1:11", "services", "tags are not allowed"},
		{"key not a scalar", "services:\n  [a]: {}\n", "2:3", "services", "want a field name, not a list"},
		{"syntax", "services:\n  web: {domains: [a.com}\n", "2", "", "did not find expected ',' or ']'"},
		{"tab indent", "services:\n\tweb: {}\n", "2", "", "found character that cannot start any token"},
		{"two documents", "version: 1\n---\nversion: 2\n", "2:1", "", "more than one YAML document"},
		{"control character", "version: 1\x00\n", "1:11", "", "control character U+0000"},
		{"escape character", "services:\n  web: {}\x1b\n", "2:10", "", "control character U+001B"},
		{"not utf-8", "services:\n  w\xffb: {}\n", "2:4", "", "not UTF-8"},
		{"too big", "#" + strings.Repeat("x", MaxDocumentSize), "1:1", "", "document is 262145 bytes, more than the limit of 262144"},
		{"too many services", manyServices(maxServices + 1), "1:11", "services", "1001 services, more than the limit of 1000"},
		{"too many routes", "services: {web: {routes: [" + strings.Repeat("{match: {path: /}},", maxRoutes+1) + "]}}", "1:26", "services.web.routes", "101 entries, more than the limit of 100"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("p.yaml", []byte(tc.doc))
			if err == nil {
				t.Fatalf("no error for\n%s", tc.doc)
			}
			prefix := "p.yaml:" + tc.pos + ": "
			if tc.path != "" {
				prefix += tc.path + ": "
			}
			if !strings.HasPrefix(err.Error(), prefix) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("error\n  %v\nwant\n  %s…%s", err, prefix, tc.msg)
			}
			var pe *Error
			if !errors.As(err, &pe) || pe.Path != tc.path || pe.File != "p.yaml" {
				t.Errorf("error %#v is not an *Error with path %q", err, tc.path)
			}
		})
	}
}

func manyServices(n int) string {
	var b strings.Builder
	b.WriteString("services: {")
	for i := range n {
		fmt.Fprintf(&b, "s%d: {},", i)
	}
	b.WriteString("}")
	return b.String()
}

func TestParseLimits(t *testing.T) {
	// Exactly at the limits is fine.
	mustParse(t, manyServices(maxServices))
	var b strings.Builder
	b.WriteString("services: {web: {routes: [")
	for i := range maxRoutes {
		fmt.Fprintf(&b, "{match: {path: /%d}},", i)
	}
	b.WriteString("]}}")
	mustParse(t, b.String())
	mustParse(t, "services: {web: {routes: [{match: {headers: {x: {regex: "+strings.Repeat("a", maxRegexLen)+"}}}}]}}")
}

// bigDocument is near the size limit and close to the worst a document
// can cost: as many rules as fit, each with header matchers.
func bigDocument() []byte {
	var b strings.Builder
	b.WriteString("services:\n")
	for s := 0; b.Len() < MaxDocumentSize-8<<10; s++ {
		fmt.Fprintf(&b, "  s%d:\n    domains: [s%d.example.com]\n    routes:\n", s, s)
		for r := range maxRoutes {
			fmt.Fprintf(&b, "      - {match: {path-prefix: /r%d, methods: [GET, POST], headers: {a: x, b: {prefix: y}, c: {regex: '^z+$'}}}, subset: v%d}\n", r, r%3)
		}
	}
	return []byte(b.String())
}

func BenchmarkParse(b *testing.B) {
	example, err := os.ReadFile("testdata/example.yaml")
	if err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct {
		name string
		doc  []byte
	}{{"example", example}, {"big", bigDocument()}} {
		if _, err := Parse("b.yaml", bc.doc); err != nil {
			b.Fatalf("%s: %v", bc.name, err)
		}
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(int64(len(bc.doc)))
			b.ReportAllocs()
			for b.Loop() {
				Parse("b.yaml", bc.doc)
			}
		})
	}
}
