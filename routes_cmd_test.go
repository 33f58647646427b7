package main

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestRoutesShowsRefusedClaims: `meshd routes` prints the host name claims
// the node refused, with both services, their nodes and the reason.
func TestRoutesShowsRefusedClaims(t *testing.T) {
	admin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/routes" {
			http.NotFound(w, r)
			return
		}
		w.Write([]byte(`[{"service":"api","via":"refused","domains":["shop.example"],"upstreams":[],
			"conflict":{"domain":"shop.example","owner":"web","owner_nodes":["gw-eu"],"refused":"api",
			"refused_nodes":["gw-us"],"reason":"web has held it since 2030-01-02T03:04:05Z as this node saw it"}}]`))
	}))
	defer admin.Close()
	var out, errb bytes.Buffer
	if err := cmdTable(context.Background(), "routes", []string{"--admin", strings.TrimPrefix(admin.URL, "http://")}, &out, &errb); err != nil {
		t.Fatalf("%v: %s", err, errb.String())
	}
	var row string
	for _, l := range strings.Split(out.String(), "\n") {
		if strings.HasPrefix(l, "shop.example") {
			row = strings.Join(strings.Fields(l), " ")
		}
	}
	if row != "shop.example api gw-us web gw-eu web has held it since 2030-01-02T03:04:05Z as this node saw it" {
		t.Fatalf("output:\n%s", out.String())
	}
}
