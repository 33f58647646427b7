package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/meshd/meshd/mesh"
)

// TestExplainCommand: `meshd explain URL --from S` asks /v1/explain with
// the URL and the service, prints the text (or with --json the answer),
// and without a URL is a usage error.
func TestExplainCommand(t *testing.T) {
	var got string
	admin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = r.URL.RequestURI()
		json.NewEncoder(w).Encode(mesh.Explanation{URL: r.URL.Query().Get("url"), Method: "GET", Node: "edge-1", Role: "edge",
			Caller: "spiffe://td/service/" + r.URL.Query().Get("from"), Host: "web.example", Service: "web", HostRule: "claimed by web (--domains)",
			Pick: &mesh.ExplainCandidate{Name: "gw-eu", Addr: "127.0.0.1:1", Region: "eu"}, Verdict: "goes to gw-eu in eu (127.0.0.1:1)"})
	}))
	defer admin.Close()
	addr := strings.TrimPrefix(admin.URL, "http://")
	var out, errb bytes.Buffer
	if err := cmdExplain(context.Background(), []string{"https://web.example/a?b=1", "--from", "api", "--admin", addr}, &out, &errb); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(got, "url=https%3A%2F%2Fweb.example%2Fa%3Fb%3D1") || !strings.Contains(got, "from=api") {
		t.Errorf("asked %s", got)
	}
	for _, want := range []string{"as spiffe://td/service/api", "host       web.example → service web (claimed by web (--domains))",
		"verdict    goes to gw-eu in eu"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	if err := cmdExplain(context.Background(), []string{"--json", "--admin", addr, "http://web.mesh/"}, &out, &errb); err != nil {
		t.Fatal(err)
	}
	var e mesh.Explanation
	if err := json.Unmarshal(out.Bytes(), &e); err != nil || e.Pick == nil || e.Pick.Name != "gw-eu" || e.URL != "http://web.mesh/" {
		t.Errorf("--json: %v %s", err, out.String())
	}
	if err := cmdExplain(context.Background(), []string{"--admin", addr}, &out, &errb); !errors.Is(err, errUsage) {
		t.Errorf("no URL: %v, want a usage error", err)
	}
}
