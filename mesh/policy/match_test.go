package policy

import (
	"fmt"
	"math"
	"net/http"
	"strings"
	"testing"
)

const resolveDoc = `services:
  web:
    split: {v1: 90, v2: 10}
    timeouts: {connect: 1s, total: 30s}
    routes:
      - name: login
        match: {path: /login, methods: [POST, PUT]}
      - name: api
        match: {path-prefix: /api}
        subset: v2
      - name: static
        match: {path-prefix: /static/}
      - name: canary
        match: {headers: {X-Canary: "1"}}
      - name: curl
        match: {headers: {user-agent: {regex: "^curl/"}}}
      - name: ops
        match: {path-prefix: /, headers: {x-team: {prefix: ops-}, x-env: {exact: staging}}}
      - name: empty
        match: {headers: {x-empty: {exact: ""}}}
      - name: present
        match: {headers: {x-any: {prefix: ""}}}
`

func TestResolve(t *testing.T) {
	web := mustParse(t, resolveDoc).Services["web"]
	for _, tc := range []struct {
		method, path string
		h            http.Header
		want         string
	}{
		{"POST", "/login", nil, "login"},
		{"PUT", "/login", nil, "login"},
		{"GET", "/login", nil, "default"},
		{"post", "/login", nil, "default"}, // methods are case-sensitive (RFC 9110 §9.1)
		{"POST", "/login/", nil, "default"},
		{"POST", "/Login", nil, "default"},

		// path-prefix is by whole segments.
		{"GET", "/api", nil, "api"},
		{"GET", "/api/", nil, "api"},
		{"GET", "/api/users/7", nil, "api"},
		{"GET", "/apiary", nil, "default"},
		{"GET", "/ap", nil, "default"},
		{"GET", "/API", nil, "default"},
		// A prefix that ends in / matches only below it.
		{"GET", "/static/app.js", nil, "static"},
		{"GET", "/static/", nil, "static"},
		{"GET", "/static", nil, "default"},

		// Header names match in any case: net/http canonicalizes the
		// request's, Parse the document's.
		{"GET", "/", http.Header{"X-Canary": {"1"}}, "canary"},
		{"GET", "/", http.Header{http.CanonicalHeaderKey("x-canary"): {"1"}}, "canary"},
		{"GET", "/", http.Header{"X-Canary": {"0"}}, "default"},
		{"GET", "/", http.Header{"X-Canary": {"1 "}}, "default"},
		{"GET", "/", http.Header{"X-Canary": {"0", "1"}}, "canary"}, // any one value
		{"GET", "/", http.Header{"X-Canary": {"0, 1"}}, "default"},  // one field line, compared whole
		// Order: the first rule that matches wins, so the api rule's
		// subset beats the canary header.
		{"GET", "/api/x", http.Header{"X-Canary": {"1"}}, "api"},

		{"GET", "/", http.Header{"User-Agent": {"curl/8.5.0"}}, "curl"},
		{"GET", "/", http.Header{"User-Agent": {"Mozilla/5.0 curl/8"}}, "default"},
		{"GET", "/", http.Header{"User-Agent": {"Mozilla/5.0", "curl/8"}}, "curl"},

		// Every condition of a match must hold.
		{"GET", "/x", http.Header{"X-Team": {"ops-db"}, "X-Env": {"staging"}}, "ops"},
		{"GET", "/x", http.Header{"X-Team": {"ops-db"}, "X-Env": {"prod"}}, "default"},
		{"GET", "/x", http.Header{"X-Team": {"dev"}, "X-Env": {"staging"}}, "default"},
		{"GET", "/x", http.Header{"X-Team": {"ops-"}, "X-Env": {"staging"}}, "ops"},
		{"GET", "/x", http.Header{"X-Env": {"staging"}}, "default"},
		{"GET", "*", http.Header{"X-Team": {"ops-db"}, "X-Env": {"staging"}}, "default"},

		{"GET", "/", http.Header{"X-Empty": {""}}, "empty"},
		{"GET", "/", http.Header{"X-Empty": {"a"}}, "default"},
		{"GET", "/", http.Header{"X-Any": {"whatever"}}, "present"},
		{"GET", "/", http.Header{"X-Any": {""}}, "present"},
		{"GET", "/", http.Header{"X-Any": {}}, "default"}, // present with no value: absent
		{"GET", "/", nil, "default"},
	} {
		got := web.Resolve(tc.method, tc.path, tc.h)
		if got.Name != tc.want {
			t.Errorf("Resolve(%s %s %v) = %s, want %s", tc.method, tc.path, tc.h, got.Name, tc.want)
		}
	}

	// Inheritance: api has its own subset and no split; login keeps the
	// service's split and timeouts.
	api := web.Resolve("GET", "/api", nil)
	if api.Subset != "v2" || api.Split != nil || api.Timeouts != web.Default.Timeouts {
		t.Errorf("api = %+v", api)
	}
	login := web.Resolve("POST", "/login", nil)
	if login.Subset != "" || len(login.Split) != 2 || login.Timeouts.Connect != 1e9 || login.Retries != defaultRetries {
		t.Errorf("login = %+v", login)
	}
}

func TestResolveNoRules(t *testing.T) {
	svc := mustParse(t, "services: {web: {}}").Services["web"]
	if got := svc.Resolve("GET", "/", nil); got != svc.Default {
		t.Errorf("Resolve = %+v, want the default", got)
	}
	// A rule with no match (or an empty one) catches every request.
	svc = mustParse(t, "services: {web: {routes: [{match: {path: /a}, subset: a}, {match: {}, subset: b}]}}").Services["web"]
	if got := svc.Resolve("PATCH", "/zzz", nil); got.Subset != "b" {
		t.Errorf("Resolve = %+v, want the catch-all rule", got)
	}
}

func TestResolveAllocs(t *testing.T) {
	web := mustParse(t, resolveDoc).Services["web"]
	h := http.Header{"User-Agent": {"Mozilla/5.0", "curl/8.5.0"}, "X-Team": {"ops-db"}}
	allocs := testing.AllocsPerRun(1000, func() {
		web.Resolve("GET", "/x", h)
		web.Resolve("GET", "/api/users", h)
		web.Resolve("GET", "/nothing", nil)
	})
	if allocs != 0 {
		t.Errorf("Resolve allocates %v times per run, want 0", allocs)
	}
}

func TestPickSubset(t *testing.T) {
	doc := mustParse(t, `services:
  web:
    split: {v2: 10, v1: 90}
    routes:
      - {name: all-v2, match: {path: /a}, split: {v1: 0, v2: 100}}
      - {name: three, match: {path: /b}, split: {a: 1, b: 2, c: 1, z: 0}}
      - {name: fixed, match: {path: /c}, subset: canary}
  any: {}
`)
	web := doc.Services["web"]
	// count picks over a grid of n midpoints of [0,1): the exact share
	// of each subset when n is a multiple of the weights' sum.
	count := func(r *Route, n int) map[string]int {
		got := map[string]int{}
		for i := range n {
			got[r.PickSubset((float64(i)+0.5)/float64(n))]++
		}
		return got
	}
	for _, tc := range []struct {
		r    *Route
		n    int
		want map[string]int
	}{
		{web.Default, 1000, map[string]int{"v1": 900, "v2": 100}},
		{web.Default, 100000, map[string]int{"v1": 90000, "v2": 10000}},
		{web.Resolve("GET", "/a", nil), 1000, map[string]int{"v2": 1000}},
		{web.Resolve("GET", "/b", nil), 4000, map[string]int{"a": 1000, "b": 2000, "c": 1000}},
		{web.Resolve("GET", "/c", nil), 10, map[string]int{"canary": 10}},
		{doc.Services["any"].Default, 10, map[string]int{"": 10}},
	} {
		if got := count(tc.r, tc.n); !mapsEqual(got, tc.want) {
			t.Errorf("%s: picks %v, want %v", tc.r.Name, got, tc.want)
		}
	}
	// Subsets own consecutive intervals in name order; the edges and
	// values outside [0,1) stay in range.
	for _, tc := range []struct {
		u    float64
		want string
	}{
		{0, "v1"}, {0.8999, "v1"}, {0.9, "v2"}, {math.Nextafter(1, 0), "v2"},
		{-1, "v1"}, {1, "v2"}, {7, "v2"}, {math.NaN(), "v1"}, {math.Inf(1), "v2"}, {math.Inf(-1), "v1"},
	} {
		if got := web.Default.PickSubset(tc.u); got != tc.want {
			t.Errorf("PickSubset(%v) = %q, want %q", tc.u, got, tc.want)
		}
	}
	// A zero weight is never picked, not even at the top end.
	three := web.Resolve("GET", "/b", nil)
	for _, u := range []float64{math.Nextafter(1, 0), 1, 2} {
		if got := three.PickSubset(u); got != "c" {
			t.Errorf("PickSubset(%v) = %q, want c", u, got)
		}
	}
	if n := testing.AllocsPerRun(100, func() { web.Default.PickSubset(0.5) }); n != 0 {
		t.Errorf("PickSubset allocates %v times", n)
	}
}

func mapsEqual(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// BenchmarkResolve resolves requests on a 5-rule service: one that
// matches the first rule, one that is tried against all five and
// matches the last (a regex), and one that matches none.
func BenchmarkResolve(b *testing.B) {
	doc, err := Parse("bench.yaml", []byte(`services:
  web:
    split: {v1: 90, v2: 10}
    routes:
      - match: {path: /login, methods: [POST]}
      - match: {path-prefix: /api, headers: {x-canary: "1"}}
        subset: v2
      - match: {path-prefix: /static/}
      - match: {headers: {x-team: {prefix: ops-}, x-env: {exact: staging}}}
      - match: {headers: {user-agent: {regex: "^curl/"}}}
        subset: v1
`))
	if err != nil {
		b.Fatal(err)
	}
	web := doc.Services["web"]
	browser := http.Header{"User-Agent": {"Mozilla/5.0"}, "Accept": {"*/*"}}
	curl := http.Header{"User-Agent": {"curl/8.5.0"}, "X-Team": {"dev"}, "Accept": {"*/*"}}
	for _, bc := range []struct {
		name, method, path string
		h                  http.Header
		want               int // index of the rule, -1 for the default
	}{
		{"first", "POST", "/login", browser, 0},
		{"last", "GET", "/api/v1/users", curl, 4},
		{"none", "GET", "/index.html", browser, -1},
	} {
		want := web.Default
		if bc.want >= 0 {
			want = web.Routes[bc.want]
		}
		if got := web.Resolve(bc.method, bc.path, bc.h); got != want {
			b.Fatalf("%s: Resolve = %s, want %s", bc.name, got.Name, want.Name)
		}
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				web.Resolve(bc.method, bc.path, bc.h)
			}
		})
	}
}

func TestRegexpSize(t *testing.T) {
	for _, tc := range []struct {
		re string
		ok bool
	}{
		{`^curl/`, true},
		{`(?i)^mozilla/5\.0 .*(iphone|android)`, true},
		{`^\pL+$`, true},
		{`^[a-z0-9-]{1,63}$`, true},
		{`^(?:[a-f0-9]{2}){16}$`, true},
		{`\pL{1000}`, false},
		{`.{1000}.{1000}.{1000}.{1000}.{1000}.{1000}`, false},
		{`(?:abcdefghij){600}`, false},
	} {
		_, err := Parse("p.yaml", []byte("services: {web: {routes: [{match: {headers: {x: {regex: '"+tc.re+"'}}}}]}}"))
		if (err == nil) != tc.ok {
			t.Errorf("%s: err = %v, want ok = %v", tc.re, err, tc.ok)
		}
		if err != nil && !strings.Contains(err.Error(), "regular expression too large") {
			t.Errorf("%s: err = %v", tc.re, err)
		}
	}
	// Per document: 11 patterns of about 4700 instructions each.
	var b strings.Builder
	b.WriteString("services: {web: {routes: [")
	for i := range 11 {
		fmt.Fprintf(&b, "{match: {headers: {x: {regex: '.{1000}.{1000}.{1000}.{1000}.{%d}'}}}},", 690+i)
	}
	b.WriteString("]}}")
	_, err := Parse("p.yaml", []byte(b.String()))
	if err == nil || !strings.Contains(err.Error(), "services.web.routes[10].match.headers.x.regex: regular expressions too large") {
		t.Errorf("err = %v", err)
	}
}
