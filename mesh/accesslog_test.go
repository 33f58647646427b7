package mesh

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestAccessLogAndRequestID(t *testing.T) {
	var logs bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&logs, nil))
	var seenID string
	h := accessLog(log, requestID(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seenID = r.Header.Get(HeaderRequestID)
		w.Header().Set("Cache-Status", "meshd; hit")
		w.WriteHeader(http.StatusTeapot)
		w.(http.Flusher).Flush() // streaming handlers keep working
		io.WriteString(w, "hello")
	})))
	srv := httptest.NewServer(h)
	defer srv.Close()
	req, _ := http.NewRequest("GET", srv.URL+"/x?y=1", nil)
	req.Host = "web.localhost"
	req.Header.Set(HeaderRequestID, "spoofed")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.ReadAll(resp.Body)
	resp.Body.Close()
	if seenID == "" || seenID == "spoofed" || len(seenID) != 24 {
		t.Fatalf("request ID %q: want the edge's own", seenID)
	}
	var rec map[string]any
	if err := json.Unmarshal(logs.Bytes(), &rec); err != nil {
		t.Fatalf("log %q: %v", logs.String(), err)
	}
	want := map[string]any{"msg": "access", "id": seenID, "method": "GET", "host": "web.localhost", "uri": "/x?y=1",
		"status": float64(418), "bytes": float64(5), "cache": "meshd; hit"}
	for k, v := range want {
		if rec[k] != v {
			t.Errorf("log %s = %v, want %v", k, rec[k], v)
		}
	}
}
