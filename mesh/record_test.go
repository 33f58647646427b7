package mesh

import (
	"strings"
	"testing"
)

func TestRecordRoundTrip(t *testing.T) {
	r := &NodeRecord{Name: "web-1", Role: RoleSidecar, Region: "eu", MeshAddr: "127.0.0.1:8443", State: StateReady,
		Services: []ServiceRecord{{Name: "web", Domains: []string{"www.example.com"}, Healthy: 1}},
		Roots:    []string{"3f1e7a87b9bc1b61", "fe45c7b0e1a37f26"}, SVIDRoot: "fe45c7b0e1a37f26"}
	b, err := r.Encode()
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeRecord(b)
	if err != nil {
		t.Fatal(err)
	}
	if got.Name != "web-1" || got.V != recordVersion || got.Services[0].Domains[0] != "www.example.com" || got.MeshAddr != r.MeshAddr ||
		len(got.Roots) != 2 || got.Roots[1] != "fe45c7b0e1a37f26" || got.SVIDRoot != r.SVIDRoot {
		t.Fatalf("round trip = %+v", got)
	}
}

func TestDecodeRecordRefuses(t *testing.T) {
	ok := `"v":1,"name":"gw-1","role":"gateway","region":"eu","addr":"10.0.0.1:8443","state":"ready"`
	tests := []struct{ name, in, want string }{
		{"empty", ``, "empty"},
		{"not json", `hello`, "record"},
		{"trailing", `{` + ok + `}{}`, "trailing"},
		{"no version", `{"name":"a","role":"edge","state":"ready"}`, "version"},
		{"bad name", `{"v":1,"name":"../x","role":"edge","state":"ready"}`, "name"},
		{"bad role", `{"v":1,"name":"a","role":"boss","state":"ready"}`, "role"},
		{"bad state", `{"v":1,"name":"a","role":"edge","state":"gone"}`, "state"},
		{"no region", `{"v":1,"name":"a","role":"gateway","addr":"10.0.0.1:1","state":"ready"}`, "region"},
		{"bad addr", `{"v":1,"name":"a","role":"gateway","region":"eu","addr":"nowhere","state":"ready"}`, "address"},
		{"unspecified addr", `{"v":1,"name":"a","role":"gateway","region":"eu","addr":"0.0.0.0:1","state":"ready"}`, "address"},
		{"bad service", `{` + ok + `,"services":[{"name":"A B","healthy":1}]}`, "service"},
		{"dup service", `{` + ok + `,"services":[{"name":"a"},{"name":"a"}]}`, "twice"},
		{"negative", `{` + ok + `,"services":[{"name":"a","healthy":-1}]}`, "negative"},
		{"negative total", `{` + ok + `,"services":[{"name":"a","total":-1}]}`, "negative"},
		{"bad global", `{` + ok + `,"global":{"A B":1}}`, "global"},
		{"negative global", `{` + ok + `,"global":{"web":-3}}`, "global"},
		{"bad domain", `{` + ok + `,"services":[{"name":"a","domains":["x..y"]}]}`, "domain"},
		{"bad prefix", `{` + ok + `,"prefixes":["1.2.3.4"]}`, "prefix"},
		{"huge", `{"name":"` + strings.Repeat("a", maxRecordBytes) + `"}`, "limit"},
		{"bad root", `{` + ok + `,"roots":["3f1e7a87b9bc1b6"]}`, `root fingerprint "3f1e7a87b9bc1b6" is not 16 lowercase hex digits`},
		{"upper-case root", `{` + ok + `,"roots":["3F1E7A87B9BC1B61"]}`, "root fingerprint"},
		{"too many roots", `{` + ok + `,"roots":["` + strings.Repeat(`3f1e7a87b9bc1b61","`, 8) + `3f1e7a87b9bc1b61"]}`, "9 roots, over the limit of 8"},
		{"bad svid root", `{` + ok + `,"roots":["3f1e7a87b9bc1b61"],"svid_root":"x"}`, `svid_root "x"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := DecodeRecord([]byte(tt.in))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}
	if _, err := DecodeRecord([]byte(`{` + ok + `}`)); err != nil {
		t.Fatalf("valid record refused: %v", err)
	}
}

func FuzzDecodeRecord(f *testing.F) {
	f.Add([]byte(`{"v":1,"name":"gw-1","role":"gateway","region":"eu","addr":"10.0.0.1:8443","state":"ready","services":[{"name":"web","healthy":2}]}`))
	f.Add([]byte(`{"v":1,"name":"e","role":"edge","state":"draining","prefixes":["198.51.100.10/32"]}`))
	f.Add([]byte(`{"v":2,"name":"x","role":"sidecar","region":"us","addr":"[::1]:1","state":"ready","load":1e308}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := DecodeRecord(b)
		if err != nil {
			return
		}
		// Whatever decodes must encode and decode again to the same thing.
		b2, err := r.Encode()
		if err != nil {
			t.Fatalf("decoded record does not encode: %v", err)
		}
		r2, err := DecodeRecord(b2)
		if err != nil {
			t.Fatalf("re-encoded record refused: %v", err)
		}
		if r2.Name != r.Name || r2.Role != r.Role || len(r2.Services) != len(r.Services) {
			t.Fatalf("round trip changed the record")
		}
	})
}
