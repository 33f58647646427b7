package policy

import (
	"strings"
	"testing"
)

const authzDoc = `
services:
  web:
    authorization:
      default: deny
      rules:
        - name: api-all
          callers: [service/api]
        - name: no-admin
          callers: [service/*]
          match: {path-prefix: /admin}
          action: deny
        - name: services-read
          callers: [service/*, spiffe://other.meshd/service/partner]
          match: {methods: [GET, HEAD]}
        - name: public
          callers: [edge]
          match: {path-prefix: /public}
  open:
    authorization:
      rules:
        - callers: [service/batch]
          action: deny
`

// TestAuthorization: the first matching rule decides, by caller pattern,
// path and method; the default decides the rest.
func TestAuthorization(t *testing.T) {
	doc := mustParse(t, authzDoc)
	web, open := doc.Services["web"].Authz, doc.Services["open"].Authz
	const td = "test.meshd"
	id := func(p string) string { return "spiffe://" + td + "/" + p }
	for _, c := range []struct {
		a            *Authorization
		caller       string
		method, path string
		ok           bool
		rule         string
	}{
		{web, id("service/api"), "POST", "/admin/x", true, "api-all"},
		{web, id("service/batch"), "GET", "/admin", false, "no-admin"},
		{web, id("service/batch"), "GET", "/administrator", true, "services-read"}, // prefixes are segments
		{web, id("service/batch"), "GET", "/orders", true, "services-read"},
		{web, id("service/batch"), "POST", "/orders", false, "default"},
		{web, "spiffe://other.meshd/service/partner", "HEAD", "/", true, "services-read"},
		{web, "spiffe://other.meshd/service/api", "GET", "/", false, "default"}, // another trust domain is not service/api
		{web, id("edge/edge-1"), "GET", "/public/a", true, "public"},
		{web, id("edge/edge-1"), "GET", "/private", false, "default"},
		{web, id("gateway/eu/gw-1"), "GET", "/", false, "default"},
		{web, "", "GET", "/public", false, "default"},
		{open, id("service/batch"), "GET", "/", false, "0"},
		{open, id("service/api"), "DELETE", "/", true, "default"},
		{nil, id("service/x"), "GET", "/", true, "default"},
	} {
		ok, rule := c.a.Allowed(c.caller, td, c.method, c.path)
		if ok != c.ok || rule != c.rule {
			t.Errorf("%s %s %s: allowed %v by %q, want %v by %q", c.caller, c.method, c.path, ok, rule, c.ok, c.rule)
		}
	}
}

func TestAuthorizationErrors(t *testing.T) {
	for _, c := range []struct{ doc, want string }{
		{"authorization: {default: maybe}", `p.yaml:3:30: services.web.authorization.default: unknown action "maybe"`},
		{"authorization: {rules: [{callers: []}]}", "services.web.authorization.rules[0].callers: want at least one caller"},
		{"authorization: {rules: [{callers: [service/a*]}]}", `services.web.authorization.rules[0].callers[0]: caller "service/a*" is not a path`},
		{"authorization: {rules: [{callers: [spiffe://x]}]}", `caller "spiffe://x" is not a SPIFFE ID`},
		{"authorization: {rules: [{match: {headers: {x-a: b}}}]}", "services.web.authorization.rules[0].match.headers: authorization matches path and method, not headers"},
		{"authorization: {rules: [{action: permit}]}", `unknown action "permit"`},
		{"authorization: {rules: [{name: a}, {name: a}]}", `rule name "a" is already the name of rules[0]`},
		{"authorization: {rules: [{name: default}]}", "reserved"},
		{"authorization: {rule: []}", `unknown field "rule"`},
	} {
		doc := "services:\n  web:\n    " + c.doc + "\n"
		_, err := Parse("p.yaml", []byte(doc))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want %q", c.doc, err, c.want)
		}
	}
}

func BenchmarkAuthorization(b *testing.B) {
	a := mustParseB(b, authzDoc).Services["web"].Authz
	caller := "spiffe://test.meshd/service/batch"
	b.ReportAllocs()
	for b.Loop() {
		a.Allowed(caller, "test.meshd", "GET", "/orders/1")
	}
}

func mustParseB(b *testing.B, doc string) *Document {
	d, err := Parse("p.yaml", []byte(doc))
	if err != nil {
		b.Fatal(err)
	}
	return d
}
