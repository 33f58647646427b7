package policy

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// parseSeeds are documents for FuzzParse to start from: valid ones and
// ones that fail in each part of the parser.
var parseSeeds = []string{
	signDoc,
	resolveDoc,
	"",
	"{}",
	"version: 1\n",
	"services: {web: {domains: [a.com], split: {v1: 1, v2: 0}}}",
	"services: {web: {timeout: 1s, timeouts: {connect: 1s, idle: 2m}}}",
	"services: {web: {retries: {attempts: 3, on: [502, timeout], budget: 5%, backoff: {base: 1ms, max: 1s}, replay-body: 1MiB}}}",
	"services: {web: {rate-limit: {per-caller: 5/s, per-ip: 10/m, total: 1/h, burst: 3, global: true}}}",
	"services: {web: {concurrency: {soft: 1, hard: 2}, outlier: {consecutive-failures: 1, ejection: 1s, max-ejected: 50%}, failover: {overprovisioning: 2}}}",
	"services: {web: {affinity: {cookie: s}, mirror: {subset: a, percent: 1}, fault: {delay: {percent: 1, duration: 1s}, abort: {percent: 2, status: 500}}}}",
	"services: {web: {routes: [{name: a, match: {path: /a, methods: [GET]}, subset: x}, {match: {path-prefix: /b/, headers: {x: y, z: {regex: 'a+'}}}}]}}",
	"services:\n  web:\n    routes:\n      - match: {headers: {x-env: {suffix: staging}}}\n",
	"services: {web: &a {}, api: *a}",
	"version: !!str 1",
	"a: [\n",
	"- a\n- b\n",
	"---\n---\n",
	"services: {web: {domains: [a.com]}, api: {domains: [a.com]}}",
	"services: {web: {split: {v1: 0}}}",
	"\xef\xbb\xbfversion: 1\n",
	"version: 1\r\nservices: {}\r\n",
}

func FuzzParse(f *testing.F) {
	for _, s := range parseSeeds {
		f.Add([]byte(s))
	}
	if b, err := os.ReadFile("testdata/example.yaml"); err == nil {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		doc, err := Parse("f.yaml", data)
		if err != nil {
			checkError(t, err, "f.yaml")
			return
		}
		checkDocument(t, doc)
		// The document means what its YAML says, not how it is laid out:
		// the same YAML written out again parses to the same policy.
		var n yaml.Node
		if err := yaml.Unmarshal(data, &n); err != nil {
			t.Fatalf("Parse accepted what yaml.Unmarshal refuses: %v", err)
		}
		out, err := yaml.Marshal(&n)
		if err != nil {
			return // yaml.v3 cannot always write back what it read
		}
		again, err := Parse("again.yaml", out)
		if err != nil {
			t.Fatalf("re-encoded document fails: %v\n--- in:\n%s\n--- out:\n%s", err, data, out)
		}
		if a, b := describe(doc), describe(again); a != b {
			t.Fatalf("re-encoded document differs:\n%s\n%s", a, b)
		}
	})
}

// checkError: every error is an *Error with a position in the file.
func checkError(t *testing.T, err error, name string) {
	t.Helper()
	var pe *Error
	if !errors.As(err, &pe) {
		t.Fatalf("error %v (%T) is not an *Error", err, err)
	}
	if pe.Line < 1 || pe.Column < 0 || pe.File != name || pe.Msg == "" {
		t.Fatalf("error %#v has no position", pe)
	}
	if !strings.HasPrefix(err.Error(), name+":"+strconv.Itoa(pe.Line)+":") {
		t.Fatalf("error %q does not start with its position", err)
	}
}

// checkDocument checks what every parsed document promises.
func checkDocument(t *testing.T, doc *Document) {
	t.Helper()
	if doc.Services == nil || doc.Domains == nil || len(doc.Services) > maxServices {
		t.Fatalf("bad document %+v", doc)
	}
	owned := 0
	for name, svc := range doc.Services {
		if svc.Name != name || svc.Default == nil || svc.Default.Name != DefaultRouteName || len(svc.Routes) > maxRoutes {
			t.Fatalf("bad service %q: %+v", name, svc)
		}
		for _, d := range svc.Domains {
			if doc.Domains[d] != name {
				t.Fatalf("domain %q of %q is owned by %q", d, name, doc.Domains[d])
			}
			owned++
		}
		names := map[string]bool{}
		for _, r := range append(slices.Clone(svc.Routes), svc.Default) {
			if r.Name == "" || names[r.Name] {
				t.Fatalf("service %q: route name %q empty or twice", name, r.Name)
			}
			names[r.Name] = true
			checkRoute(t, r)
			// Resolve finds the rule for requests built from its match,
			// or an earlier rule.
			m := r.match
			path := "/"
			if m.hasPath {
				path = m.path
			} else if m.hasPrefix {
				path = m.prefix
			}
			method := "GET"
			if len(m.methods) > 0 {
				method = m.methods[0]
			}
			h := http.Header{}
			for _, hm := range m.headers {
				if hm.kind != matchRegex {
					h[hm.name] = []string{hm.value}
				}
			}
			got := svc.Resolve(method, path, h)
			if got == nil {
				t.Fatal("Resolve returned nil")
			}
			if !got.match.matches(method, path, h) {
				t.Fatalf("Resolve returned %q, which does not match", got.Name)
			}
		}
	}
	if owned != len(doc.Domains) {
		t.Fatalf("Domains has %d entries, services own %d", len(doc.Domains), owned)
	}
}

func checkRoute(t *testing.T, r *Route) {
	t.Helper()
	if r.Subset != "" && r.Split != nil {
		t.Fatalf("route %q has a subset and a split", r.Name)
	}
	sum := 0
	for i, w := range r.Split {
		if w.Weight < 0 || (i > 0 && r.Split[i-1].Subset >= w.Subset) {
			t.Fatalf("route %q: bad split %v", r.Name, r.Split)
		}
		sum += w.Weight
	}
	if r.Split != nil && sum == 0 {
		t.Fatalf("route %q: split adds up to 0", r.Name)
	}
	for _, u := range []float64{0, 0.3, 0.99999} {
		s := r.PickSubset(u)
		if r.Split != nil && !slices.ContainsFunc(r.Split, func(w Weight) bool { return w.Subset == s && w.Weight > 0 }) {
			t.Fatalf("route %q: PickSubset(%v) = %q, not in %v", r.Name, u, s, r.Split)
		}
	}
	rt := r.Retries
	if rt.Attempts < 1 || rt.Budget < 0 || rt.Budget > 1 || rt.BackoffBase <= 0 || rt.BackoffBase > rt.BackoffMax || rt.ReplayBody < 0 {
		t.Fatalf("route %q: bad retries %+v", r.Name, rt)
	}
	if r.Outlier.ConsecutiveFailures < 1 || r.Failover.Overprovisioning < 1 {
		t.Fatalf("route %q: bad outlier/failover %+v %+v", r.Name, r.Outlier, r.Failover)
	}
}

// describe writes out everything a document says, compiled matches
// included, to compare two parses.
func describe(doc *Document) string {
	b, _ := json.Marshal(doc)
	var s strings.Builder
	s.Write(b)
	names := make([]string, 0, len(doc.Services))
	for n := range doc.Services {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		for _, r := range doc.Services[n].Routes {
			m := r.match
			fmt.Fprintf(&s, "\n%s/%s: %v %q %v %q %q", n, r.Name, m.hasPath, m.path, m.hasPrefix, m.prefix, m.methods)
			for _, h := range m.headers {
				re := ""
				if h.re != nil {
					re = h.re.String()
				}
				fmt.Fprintf(&s, " [%s %d %q %q]", h.name, h.kind, h.value, re)
			}
		}
	}
	return s.String()
}

func FuzzUnmarshal(f *testing.F) {
	ca := newCA(f, "example.org")
	key, leaf := operatorKey(ca)
	good, err := Sign([]byte(signDoc), 3, testNow, key, []*x509.Certificate{leaf})
	if err != nil {
		f.Fatal(err)
	}
	goodJSON, err := good.Marshal()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(goodJSON)
	f.Add([]byte(`{"version":1,"signed_at":"2026-03-01T12:00:00Z","document":"eA==","chain":["eA=="],"signature":"eA=="}`))
	f.Add([]byte(`{"version":1,"signed_at":"2026-03-01T12:00:00+02:00","document":"","chain":[],"signature":null}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`null`))
	f.Add([]byte(`{"version":18446744073709551616}`))
	f.Add([]byte(`{"version":1,"version":2}`))
	f.Add([]byte(`[`))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := Unmarshal(b)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "policy: ") {
				t.Fatalf("error %q does not say where it comes from", err)
			}
			return
		}
		out, err := s.Marshal()
		if err != nil {
			t.Fatalf("Marshal of an Unmarshaled envelope: %v", err)
		}
		s2, err := Unmarshal(out)
		if err != nil || s2.Version != s.Version || !s2.SignedAt.Equal(s.SignedAt) || !bytes.Equal(s2.Document, s.Document) ||
			!bytes.Equal(s2.Signature, s.Signature) || len(s2.Chain) != len(s.Chain) {
			t.Fatalf("round trip: %v\n%+v\n%+v", err, s, s2)
		}
		// Whatever the bytes, only the operator's own envelope verifies.
		doc, id, err := s.Verify(ca.pool, "example.org", testNow)
		if err != nil {
			return
		}
		if !bytes.Equal(s.Document, good.Document) || s.Version != good.Version || !s.SignedAt.Equal(good.SignedAt) ||
			id != "spiffe://example.org/operator/alice" || doc.Version != 3 {
			t.Fatalf("forged envelope verifies: %+v", s)
		}
	})
}

func operatorKey(ca *testCA) (*ecdsaKey, *x509.Certificate) {
	k := ecKey(ca.t)
	return k.(*ecdsaKey), ca.issue("spiffe://example.org/operator/alice", k, testNow.Add(-time.Hour), testNow.Add(time.Hour))
}
