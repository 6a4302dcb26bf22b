package collector

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestParseErrorsSayWhy: a line that is not JSON says so, with the
// parser's reason, and the hint about several records comes only where
// several records are the likely cause.
func TestParseErrorsSayWhy(t *testing.T) {
	s := newTestServer(t, "")
	f := func(contentType, body, want, notWant string) {
		t.Helper()
		rec, _ := s.do(t, http.MethodPost, "/v1/calls", contentType, body)
		if got := rec.Body.String(); !strings.Contains(got, want) || notWant != "" && strings.Contains(got, notWant) {
			t.Fatalf("%q: answer %s; want %q in it and not %q", body, got, want, notWant)
		}
	}
	f("application/x-ndjson", "{\"user_id\":\"u\",\"model\":\"m\"}\nnot json\n", "is not valid JSON: invalid character 'o'", "")
	f("application/json", `{"user_id":"u","model":"m"}{"user_id":"u","model":"m"}`, "several records need a JSON array", "")
	f("application/json", "\xef\xbb\xbf{}", "cannot parse the JSON body", "several records")
}

// TestCompressedBodyRefused: a gzip body gets 415 naming the encoding,
// on both POST routes, not a JSON parse error.
func TestCompressedBodyRefused(t *testing.T) {
	s := newTestServer(t, "")
	for _, path := range []string{"/v1/calls", "/v1/check"} {
		req := httptest.NewRequest(http.MethodPost, path, strings.NewReader("\x1f\x8b\x08"))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Content-Encoding", "gzip")
		rec := httptest.NewRecorder()
		s.handler.ServeHTTP(rec, req)
		if rec.Code != http.StatusUnsupportedMediaType || !strings.Contains(rec.Body.String(), `Content-Encoding \"gzip\"`) {
			t.Fatalf("%s: %d %s; want 415 naming Content-Encoding gzip", path, rec.Code, rec.Body)
		}
	}
	rec, out := s.do(t, http.MethodPost, "/v1/calls", "application/json", `{"user_id":"u","model":"m"}`)
	if rec.Code != http.StatusAccepted {
		t.Fatalf("uncompressed: %d %v", rec.Code, out)
	}
}
