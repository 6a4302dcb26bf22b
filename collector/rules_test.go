package collector

import (
	"net/http"
	"strings"
	"testing"
)

const rulesYAML = `
providers:
  - prefix: llama-
    provider: groq
limits:
  - limit_type: minute
    requests: 30
  - model: gpt-4*
    limit_type: hour
    tokens: 500000
  - user_id: alice
    limit_type: minute
    requests: 200
  - provider: Azure
    limit_type: minute
    requests: 2
`

func TestRulesEndpoint(t *testing.T) {
	s := newTestServer(t, rulesYAML)
	f := func(query string, wantCode int, want string) {
		t.Helper()
		rec, _ := s.do(t, http.MethodGet, "/v1/rules"+query, "", "")
		if rec.Code != wantCode {
			t.Fatalf("GET /v1/rules%s: %d, want %d; body %s", query, rec.Code, wantCode, rec.Body)
		}
		if got := strings.TrimSpace(rec.Body.String()); got != want {
			t.Fatalf("GET /v1/rules%s:\n%s\nwant:\n%s", query, got, want)
		}
	}
	f("", 200, `{"rules":[`+
		`{"limit_type":"minute","unit":"requests","limit":30,"source":"limits.yaml:6"},`+
		`{"limit_type":"hour","unit":"tokens","limit":500000,"model":"gpt-4*","source":"limits.yaml:8"},`+
		`{"limit_type":"minute","unit":"requests","limit":200,"user_id":"alice","source":"limits.yaml:11"},`+
		`{"limit_type":"minute","unit":"requests","limit":2,"provider":"azure.ai.openai","source":"limits.yaml:14"}],"shadowed":[]}`)
	// Which rule applies to alice on gpt-4: hers for requests, the model's for tokens.
	f("?user_id=alice&model=gpt-4", 200, `{"user_id":"alice","provider":"openai","model":"gpt-4","applicable":[`+
		`{"limit_type":"minute","unit":"requests","limit":200,"user_id":"alice","source":"limits.yaml:11"},`+
		`{"limit_type":"hour","unit":"tokens","limit":500000,"model":"gpt-4*","source":"limits.yaml:8"}]}`)
	// Bob has no rule of his own; the provider is spelled as in a record.
	f("?user_id=bob&provider=%20AZURE%20", 200, `{"user_id":"bob","provider":"azure.ai.openai","model":"","applicable":[`+
		`{"limit_type":"minute","unit":"requests","limit":2,"provider":"azure.ai.openai","source":"limits.yaml:14"}]}`)
	// The file's provider prefixes infer the provider from the model.
	f("?model=llama-3.1-70b-versatile", 200, `{"user_id":"","provider":"groq","model":"llama-3.1-70b-versatile","applicable":[`+
		`{"limit_type":"minute","unit":"requests","limit":30,"source":"limits.yaml:6"}]}`)
	// A user_id no record could carry is refused, as on the other quota reads.
	rec, out := s.do(t, http.MethodGet, "/v1/rules?user_id=a%00b", "", "")
	if rec.Code != http.StatusBadRequest || !strings.Contains(out["error"].(string), "user_id") {
		t.Fatalf("bad user_id: %d %s", rec.Code, rec.Body)
	}
	// So are a provider or a model no record could carry, here and on /v1/limits.
	for _, path := range []string{"/v1/rules?provider=%00%01", "/v1/rules?model=" + strings.Repeat("m", 300), "/v1/limits?user_id=a&provider=%ff"} {
		rec, out := s.do(t, http.MethodGet, path, "", "")
		if rec.Code != http.StatusBadRequest || out["details"] == nil {
			t.Fatalf("GET %s: %d %s, want 400 naming the field", path, rec.Code, rec.Body)
		}
	}
	rec, _ = s.do(t, http.MethodPost, "/v1/rules", "application/json", "{}")
	if rec.Code != http.StatusMethodNotAllowed {
		t.Fatalf("POST /v1/rules: %d", rec.Code)
	}
}
