package policy

import (
	"net/http"
	"testing"
)

func TestParseBasic(t *testing.T) {
	doc, err := Parse("policy.yaml", []byte(`version: 7
services:
  web:
    domains: [www.example.com, example.com]
    split: {v2: 10, v1: 90}
    routes:
      - name: api-canary
        match: {path-prefix: /api, headers: {x-canary: "1"}}
        subset: v2
      - match: {path: /login, methods: [POST]}
        split: {v1: 50, v2: 50}
`))
	if err != nil {
		t.Fatal(err)
	}
	if doc.Version != 7 || doc.Domains["example.com"] != "web" || doc.Domains["www.example.com"] != "web" {
		t.Fatalf("doc = %+v", doc)
	}
	web := doc.Services["web"]
	if got := web.Resolve("GET", "/api/x", http.Header{"X-Canary": {"1"}}); got.Name != "api-canary" || got.Subset != "v2" {
		t.Errorf("canary: got %+v", got)
	}
	if got := web.Resolve("POST", "/login", nil); got.Name != "1" || len(got.Split) != 2 {
		t.Errorf("login: got %+v", got)
	}
	if got := web.Resolve("GET", "/", nil); got != web.Default || got.Split[0] != (Weight{"v1", 90}) {
		t.Errorf("default: got %+v", got)
	}
}
