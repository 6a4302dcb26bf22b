package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/ptrace"
	"go.opentelemetry.io/collector/pdata/ptrace/ptraceotlp"

	"github.com/llmusage/llmusage/docs"
	"github.com/llmusage/llmusage/internal/sidecartest"
	"github.com/llmusage/llmusage/internal/upstreamtest"
)

// TestOpenAPI sends requests of every kind, valid and invalid, to a
// running sidecar, and holds each request and each answer (status,
// headers, body) to docs/openapi.yaml: the document must refuse the
// requests the sidecar refuses, where it can say so, and accept the
// others; every answer must be documented for its path. Every path and
// method of the document must be exercised.
func TestOpenAPI(t *testing.T) {
	v := newAPIValidator(t)
	up := upstreamtest.Start(t)
	flags := []string{"--debug-pprof", "--flush-interval", "50ms", "--max-body-bytes", "65536",
		"--otlp-max-body-bytes", "65536", "--proxy-max-body-bytes", "65536", "--upstream", "xai=http://127.0.0.1:1"}
	for _, name := range []string{"openai", "mistral", "deepseek", "groq", "anthropic"} {
		flags = append(flags, "--upstream", name+"="+up.URL)
	}
	s := sidecartest.Start(t, sidecartest.Options{Flags: flags, Limits: `limits:
  - limit_type: minute
    requests: 1000
  - user_id: limited
    limit_type: minute
    requests: 1
`})
	api, metrics := s.APIURL(), s.MetricsURL()
	now := time.Now().UTC()
	record := func(user string) string {
		return fmt.Sprintf(`{"user_id":%q,"model":"gpt-4o-mini","prompt_tokens":12,"completion_tokens":3,"latency_ms":41.5,"metadata":{"k":"v"}}`, user)
	}
	big := `[` + strings.Repeat(record("alice")+",", 600) + record("alice") + `]`
	chat := `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}`
	user := map[string]string{"X-LLMUsage-User": "alice", "Content-Type": "application/json"}
	jsonCT := map[string]string{"Content-Type": "application/json"}

	cases := []apiCase{
		// intake
		{name: "one record", method: "POST", url: api + "/v1/calls", header: jsonCT, body: record("alice"), status: 202},
		{name: "an array", method: "POST", url: api + "/v1/calls", header: jsonCT, body: "[" + record("alice") + "," + record("bob") + "]", status: 202},
		{name: "NDJSON", method: "POST", url: api + "/v1/calls", header: map[string]string{"Content-Type": "application/x-ndjson"}, body: record("alice") + "\n\n" + record("bob") + "\n", status: 202},
		{name: "an unpriced record with every field", method: "POST", url: api + "/v1/calls", header: jsonCT, status: 202, body: `{"user_id":"alice","team_id":"search","model":"no-such-model-7","provider":"groq",
			"prompt_tokens":100,"completion_tokens":20,"cached_tokens":10,"reasoning_tokens":5,"cache_write_tokens":20,"tokens_used":120,"latency_ms":12,
			"status":"error","error_type":"timeout","request_id":"req-openapi-1","timestamp":"` + now.Add(-time.Minute).Format(time.RFC3339) + `","metadata":null,
			"provider_ratelimit":{"key":"4ecf4d81","requests":{"limit":14400,"remaining":14370,"reset_seconds":179.56},"retry_after_seconds":2}}`},
		{name: "provider_ratelimit headers", method: "POST", url: api + "/v1/calls", header: jsonCT, status: 202,
			body: `{"user_id":"alice","model":"gpt-4o","provider_ratelimit":{"headers":{"x-ratelimit-limit-requests":"500"}}}`},
		{name: "bad JSON", method: "POST", url: api + "/v1/calls", header: jsonCT, body: `{"user_id":`, status: 400, docRefuses: true},
		{name: "unknown field", method: "POST", url: api + "/v1/calls", header: jsonCT, body: `{"user_id":"alice","model":"m","prompt_token":3}`, status: 400, docRefuses: true},
		{name: "missing user_id", method: "POST", url: api + "/v1/calls", header: jsonCT, body: `{"model":"m"}`, status: 400, docRefuses: true},
		{name: "wrong type", method: "POST", url: api + "/v1/calls", header: jsonCT, body: `{"user_id":"alice","model":"m","prompt_tokens":"ten"}`, status: 400, docRefuses: true},
		{name: "negative count", method: "POST", url: api + "/v1/calls", header: jsonCT, body: `{"user_id":"alice","model":"m","completion_tokens":-1}`, status: 400, docRefuses: true},
		{name: "over 10^12", method: "POST", url: api + "/v1/calls", header: jsonCT, body: `{"user_id":"alice","model":"m","prompt_tokens":1000000000001}`, status: 400, docRefuses: true},
		{name: "bad status", method: "POST", url: api + "/v1/calls", header: jsonCT, body: `{"user_id":"alice","model":"m","status":"ok"}`, status: 400, docRefuses: true},
		{name: "control character", method: "POST", url: api + "/v1/calls", header: jsonCT, body: `{"user_id":"al\u0001ice","model":"m"}`, status: 400, docRefuses: true},
		{name: "bad key fingerprint", method: "POST", url: api + "/v1/calls", header: jsonCT, body: `{"user_id":"alice","model":"m","provider_ratelimit":{"key":"sk-secret","tokens":{"limit":5}}}`, status: 400, docRefuses: true},
		{name: "headers and figures", method: "POST", url: api + "/v1/calls", header: jsonCT, body: `{"user_id":"alice","model":"m","provider_ratelimit":{"headers":{},"tokens":{"limit":5}}}`, status: 400, docRefuses: true},
		{name: "a field given twice", method: "POST", url: api + "/v1/calls", header: jsonCT, body: `{"user_id":"alice","model":"m","model":"n"}`, status: 400},
		{name: "a timestamp in the future", method: "POST", url: api + "/v1/calls", header: jsonCT, body: `{"user_id":"alice","model":"m","timestamp":"` + now.Add(time.Hour).Format(time.RFC3339) + `"}`, status: 400},
		{name: "tokens_used too small", method: "POST", url: api + "/v1/calls", header: jsonCT, body: `{"user_id":"alice","model":"m","prompt_tokens":5,"tokens_used":1}`, status: 400},
		{name: "a repeated request_id", method: "POST", url: api + "/v1/calls", header: jsonCT, body: `[{"user_id":"a","model":"m","request_id":"r"},{"user_id":"a","model":"m","request_id":"r"}]`, status: 400},
		{name: "text/plain", method: "POST", url: api + "/v1/calls", header: map[string]string{"Content-Type": "text/plain"}, body: record("alice"), status: 415, docRefuses: true},
		{name: "gzip", method: "POST", url: api + "/v1/calls", header: map[string]string{"Content-Type": "application/json", "Content-Encoding": "gzip"}, body: "\x1f\x8b\x08\x00", status: 415, docRefuses: true},
		{name: "over --max-body-bytes", method: "POST", url: api + "/v1/calls", header: jsonCT, body: big, status: 413},
		{name: "GET /v1/calls", method: "GET", url: api + "/v1/calls", status: 405, docRefuses: true},
		// checks
		{name: "allowed", method: "POST", url: api + "/v1/check", header: jsonCT, body: `{"user_id":"alice","model":"gpt-4o-mini","prompt_tokens":100,"max_tokens":50}`, status: 200,
			wantHeaders: []string{"RateLimit", "RateLimit-Policy"}, example: "POST /v1/check 200"},
		{name: "limited's first", method: "POST", url: api + "/v1/check", header: jsonCT, body: `{"user_id":"limited","model":"gpt-4o-mini"}`, status: 200},
		{name: "limited's second", method: "POST", url: api + "/v1/check", header: jsonCT, body: `{"user_id":"limited","model":"gpt-4o-mini","tokens":10}`, status: 429,
			wantHeaders: []string{"Retry-After", "RateLimit", "RateLimit-Policy"}, example: "POST /v1/check 429"},
		{name: "check without model", method: "POST", url: api + "/v1/check", header: jsonCT, body: `{"user_id":"alice"}`, status: 400, docRefuses: true, example: "POST /v1/check 400"},
		{name: "check of an array", method: "POST", url: api + "/v1/check", header: jsonCT, body: `[{"user_id":"alice","model":"m"}]`, status: 400, docRefuses: true},
		{name: "check with unknown field", method: "POST", url: api + "/v1/check", header: jsonCT, body: `{"user_id":"alice","model":"m","max_token":5}`, status: 400, docRefuses: true},
		{name: "tokens below the split", method: "POST", url: api + "/v1/check", header: jsonCT, body: `{"user_id":"alice","model":"m","tokens":5,"prompt_tokens":10}`, status: 400},
		{name: "check as NDJSON", method: "POST", url: api + "/v1/check", header: map[string]string{"Content-Type": "application/xml"}, body: `<a/>`, status: 415, docRefuses: true},
		{name: "check over --max-body-bytes", method: "POST", url: api + "/v1/check", header: jsonCT, body: `{"user_id":"alice","model":"m","request_id":"` + strings.Repeat("x", 70000) + `"}`, status: 413, docRefuses: true},
		{name: "GET /v1/check", method: "GET", url: api + "/v1/check", status: 405, docRefuses: true},
		// quota reads
		{name: "limits", method: "GET", url: api + "/v1/limits?user_id=alice&model=gpt-4o-mini", status: 200},
		{name: "a team's limits", method: "GET", url: api + "/v1/limits?user_id=alice&team_id=search", status: 200},
		{name: "limits without user", method: "GET", url: api + "/v1/limits", status: 400, docRefuses: true, example: "GET /v1/limits 400"},
		{name: "limits of a control character", method: "GET", url: api + "/v1/limits?user_id=a%01b", status: 400, docRefuses: true},
		{name: "POST /v1/limits", method: "POST", url: api + "/v1/limits?user_id=alice", status: 405, docRefuses: true},
		{name: "rules", method: "GET", url: api + "/v1/rules", status: 200},
		{name: "applicable rules", method: "GET", url: api + "/v1/rules?user_id=limited&model=gpt-4o", status: 200},
		{name: "rules of a long provider", method: "GET", url: api + "/v1/rules?provider=" + strings.Repeat("p", 65), status: 400, docRefuses: true},
		{name: "DELETE /v1/rules", method: "DELETE", url: api + "/v1/rules", status: 405, docRefuses: true},
		{name: "prices", method: "GET", url: api + "/v1/prices", status: 200},
		{name: "a price", method: "GET", url: api + "/v1/prices?model=gpt-4o", status: 200},
		{name: "no price", method: "GET", url: api + "/v1/prices?model=no-such-model-8", status: 404},
		{name: "unpriced", method: "GET", url: api + "/v1/prices?unpriced=1", status: 200},
		{name: "unpriced=0", method: "GET", url: api + "/v1/prices?unpriced=0", status: 400, docRefuses: true},
		{name: "a price without model", method: "GET", url: api + "/v1/prices?provider=openai", status: 400},
		{name: "POST /v1/prices", method: "POST", url: api + "/v1/prices", status: 405, docRefuses: true},
		{name: "the document", method: "GET", url: api + "/v1/openapi.json", status: 200},
		{name: "PUT the document", method: "PUT", url: api + "/v1/openapi.json", status: 405, docRefuses: true},
		// the seed's
		{name: "rate-limit", method: "GET", url: api + "/api/llm/usage/rate-limit/minute?user_id=alice", status: 200, example: "GET /api/llm/usage/rate-limit/{type} 200"},
		{name: "rate-limit of a day without rule", method: "GET", url: api + "/api/llm/usage/rate-limit/day?user_id=alice&team_id=search", status: 200},
		{name: "rate-limit week", method: "GET", url: api + "/api/llm/usage/rate-limit/week?user_id=alice", status: 404},
		{name: "rate-limit without user", method: "GET", url: api + "/api/llm/usage/rate-limit/minute", status: 400, docRefuses: true},
		{name: "POST rate-limit", method: "POST", url: api + "/api/llm/usage/rate-limit/minute?user_id=alice", status: 405, docRefuses: true},
		{name: "rate-limits", method: "GET", url: api + "/api/llm/usage/rate-limits?user_id=alice", status: 200},
		{name: "rate-limits without user", method: "GET", url: api + "/api/llm/usage/rate-limits", status: 400, docRefuses: true},
		{name: "POST rate-limits", method: "POST", url: api + "/api/llm/usage/rate-limits", status: 405, docRefuses: true},
		{name: "summary", method: "GET", url: api + "/api/llm/usage/summary?user_id=alice", status: 200},
		{name: "everyone's summary", method: "GET", url: api + "/api/llm/usage/summary", status: 200},
		{name: "POST summary", method: "POST", url: api + "/api/llm/usage/summary", status: 405, docRefuses: true},
		{name: "stats", method: "GET", url: api + "/api/llm/usage/stats?days=7&user_id=alice", status: 200, waitFor: `"calls":`},
		{name: "a team's stats", method: "GET", url: api + "/api/llm/usage/stats?team_id=search", status: 200},
		{name: "stats of 0 days", method: "GET", url: api + "/api/llm/usage/stats?days=0", status: 400, docRefuses: true},
		{name: "stats of x days", method: "GET", url: api + "/api/llm/usage/stats?days=x", status: 400, docRefuses: true},
		{name: "stats of a bad team", method: "GET", url: api + "/api/llm/usage/stats?team_id=%00", status: 400},
		{name: "POST stats", method: "POST", url: api + "/api/llm/usage/stats", status: 405, docRefuses: true},
		{name: "logs", method: "GET", url: api + "/api/llm/usage/logs?user_id=alice&limit=2", status: 200, waitFor: `"next_cursor":"`, example: "GET /api/llm/usage/logs 200"},
		{name: "logs of a team", method: "GET", url: api + "/api/llm/usage/logs?team_id=search&provider=groq&model=no-such-model-7", status: 200},
		{name: "logs over the limit", method: "GET", url: api + "/api/llm/usage/logs?limit=5000", status: 400, docRefuses: true},
		{name: "logs of a bad cursor", method: "GET", url: api + "/api/llm/usage/logs?before=garbage", status: 400},
		{name: "POST logs", method: "POST", url: api + "/api/llm/usage/logs", status: 405, docRefuses: true},
		// OTLP
		{name: "OTLP JSON", method: "POST", url: api + "/v1/traces", header: jsonCT, body: otlpJSON(now), status: 200},
		{name: "OTLP protobuf", method: "POST", url: api + "/v1/traces", header: map[string]string{"Content-Type": "application/x-protobuf"}, body: otlpProto(t, now), status: 200},
		{name: "OTLP bad JSON", method: "POST", url: api + "/v1/traces", header: jsonCT, body: `{"resourceSpans":`, status: 400, docRefuses: true},
		{name: "OTLP bad protobuf", method: "POST", url: api + "/v1/traces", header: map[string]string{"Content-Type": "application/x-protobuf"}, body: "\xff\xff\xff", status: 400},
		{name: "OTLP text/plain", method: "POST", url: api + "/v1/traces", header: map[string]string{"Content-Type": "text/plain"}, body: "x", status: 415, docRefuses: true},
		{name: "OTLP deflate", method: "POST", url: api + "/v1/traces", header: map[string]string{"Content-Type": "application/x-protobuf", "Content-Encoding": "deflate"}, body: "x", status: 415},
		{name: "OTLP over the bound", method: "POST", url: api + "/v1/traces", header: map[string]string{"Content-Type": "application/x-protobuf"}, body: strings.Repeat("x", 70000), status: 413},
		{name: "GET /v1/traces", method: "GET", url: api + "/v1/traces", status: 405, docRefuses: true},
		// proxy
		{name: "chat", method: "POST", url: api + "/openai/v1/chat/completions", header: user, body: chat, status: 200},
		{name: "groq chat", method: "POST", url: api + "/groq/openai/v1/chat/completions", header: user, body: `{"model":"llama-3.1-8b-instant","messages":[]}`, status: 200},
		{name: "responses", method: "POST", url: api + "/deepseek/v1/responses", header: user, body: `{"model":"gpt-4o-mini","input":"hi"}`, status: 200},
		{name: "embeddings", method: "POST", url: api + "/mistral/v1/embeddings", header: user, body: `{"model":"text-embedding-3-small","input":"hi"}`, status: 200},
		{name: "models, passed through", method: "GET", url: api + "/openai/v1/models", status: 404},
		{name: "messages", method: "POST", url: api + "/anthropic/v1/messages", header: user, body: `{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}`, status: 200},
		{name: "count_tokens", method: "POST", url: api + "/anthropic/v1/messages/count_tokens", header: jsonCT, body: `{"model":"claude-sonnet-4-5","messages":[{"role":"user","content":"hi"}]}`, status: 200},
		{name: "a call of nobody", method: "POST", url: api + "/openai/v1/chat/completions", header: jsonCT, body: chat, status: 400},
		{name: "a call without model", method: "POST", url: api + "/openai/v1/chat/completions", header: user, body: `{"messages":[]}`, status: 400, docRefuses: true},
		{name: "a call of bad JSON", method: "POST", url: api + "/anthropic/v1/messages", header: user, body: `{"model":`, status: 400, docRefuses: true},
		{name: "a call too large", method: "POST", url: api + "/openai/v1/chat/completions", header: user, body: `{"model":"gpt-4o-mini","x":"` + strings.Repeat("x", 70000) + `"}`, status: 413},
		{name: "a limited call", method: "POST", url: api + "/openai/v1/chat/completions", header: map[string]string{"X-LLMUsage-User": "limited", "Content-Type": "application/json"}, body: chat, status: 429,
			wantHeaders: []string{"Retry-After", "Retry-After-Ms", "X-Should-Retry", "RateLimit", "RateLimit-Policy"}},
		{name: "an unreachable upstream", method: "POST", url: api + "/xai/v1/chat/completions", header: user, body: `{"model":"grok-4"}`, status: 502},
		// health and metrics
		{name: "healthz", method: "GET", url: api + "/healthz", status: 200},
		{name: "readyz", method: "GET", url: api + "/readyz", status: 200, example: "GET /readyz 200"},
		{name: "metrics' healthz", method: "GET", url: metrics + "/healthz", status: 200},
		{name: "metrics' readyz", method: "GET", url: metrics + "/readyz", status: 200},
		{name: "metrics", method: "GET", url: metrics + "/metrics", status: 200},
		{name: "OpenMetrics", method: "GET", url: metrics + "/metrics", header: map[string]string{"Accept": "application/openmetrics-text; version=1.0.0"}, status: 200},
		{name: "pprof", method: "GET", url: metrics + "/debug/pprof/", status: 200},
		{name: "heap", method: "GET", url: metrics + "/debug/pprof/heap?debug=1", status: 200},
		{name: "CPU", method: "GET", url: metrics + "/debug/pprof/profile?seconds=1", status: 200},
		{name: "no such profile", method: "GET", url: metrics + "/debug/pprof/nosuch", status: 404, docRefuses: true},
		// no route
		{name: "unknown path", method: "GET", url: api + "/v1/nope", status: 404, docRefuses: true, example: "GET /v1/nope 404"},
		{name: "unknown path of the metrics listener", method: "GET", url: metrics + "/v1/calls", status: 404, docRefuses: true},
	}
	answers := map[string][]byte{}
	for _, c := range cases {
		if body := v.run(t, s.Client, c); c.example != "" {
			answers[c.example] = body
		}
	}

	// With a token: the 401s.
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	st := sidecartest.Start(t, sidecartest.Options{Flags: []string{"--auth-token-file", tokenFile, "--metrics-auth", "--upstream", "openai=" + up.URL}})
	bearer := map[string]string{"Content-Type": "application/json", "Authorization": "Bearer s3cret"}
	for _, c := range []apiCase{
		{name: "no token", method: "POST", url: st.APIURL() + "/v1/calls", header: jsonCT, body: record("alice"), status: 401, example: "POST /v1/calls 401"},
		{name: "a token", method: "POST", url: st.APIURL() + "/v1/calls", header: bearer, body: record("alice"), status: 202},
		{name: "no token for limits", method: "GET", url: st.APIURL() + "/v1/limits?user_id=alice", status: 401},
		{name: "no token for the document", method: "GET", url: st.APIURL() + "/v1/openapi.json", status: 401},
		{name: "no token for OTLP", method: "POST", url: st.APIURL() + "/v1/traces", header: jsonCT, body: otlpJSON(now), status: 401},
		{name: "no token for metrics", method: "GET", url: st.MetricsURL() + "/metrics", status: 401},
		{name: "a token for metrics", method: "GET", url: st.MetricsURL() + "/metrics", header: map[string]string{"Authorization": "Bearer s3cret"}, status: 200},
		{name: "no token for the proxy", method: "POST", url: st.APIURL() + "/openai/v1/chat/completions", header: user, body: chat, status: 401},
		{name: "no token for models", method: "GET", url: st.APIURL() + "/openai/v1/models", status: 401},
		{name: "no token for count_tokens", method: "POST", url: st.APIURL() + "/anthropic/v1/messages/count_tokens", header: jsonCT, body: `{"model":"claude-sonnet-4-5"}`, status: 401},
		{name: "healthz without token", method: "GET", url: st.APIURL() + "/healthz", status: 200},
	} {
		if body := v.run(t, st.Client, c); c.example != "" {
			answers[c.example] = body
		}
	}

	v.checkCoverage(t)
	checkServedDocument(t, s.Client, api)
	checkAPIPage(t, v.doc, answers)
}

// TestOpenAPIPathsAreTheRoutes: every pattern the sidecar's listeners
// register is reached by a path of the document, and every path of the
// document reaches one, not the catch-all 404.
func TestOpenAPIPathsAreTheRoutes(t *testing.T) {
	doc := loadOpenAPI(t)
	var patterns []string
	for _, r := range routesForTest(t) {
		patterns = append(patterns, r.Pattern)
	}
	patterns = append(patterns, "/metrics") // metricsHandler's, besides pprof's and health's
	mux := http.NewServeMux()
	for _, p := range patterns {
		mux.Handle(p, http.NotFoundHandler())
	}
	reached := map[string]bool{}
	for _, path := range doc.Paths.InMatchingOrder() {
		item := doc.Paths.Value(path)
		for method, op := range item.Operations() {
			for _, concrete := range instantiate(path, op, item) {
				_, pattern := mux.Handler(httptest(method, concrete))
				if pattern == "" {
					t.Errorf("%s %s (as %s) is in docs/openapi.yaml, and no route of the sidecar serves it", method, path, concrete)
					continue
				}
				reached[pattern] = true
			}
		}
	}
	for _, p := range patterns {
		if !reached[p] {
			t.Errorf("the sidecar serves %s, and docs/openapi.yaml has no path for it", p)
		}
	}
}

// TestOpenAPIDocument: the document is a valid OpenAPI 3.1 document, and
// the JSON served is the YAML.
func TestOpenAPIDocument(t *testing.T) {
	doc := loadOpenAPI(t)
	if !doc.IsOpenAPI31OrLater() {
		t.Fatalf("docs/openapi.yaml is OpenAPI %s, want 3.1", doc.OpenAPI)
	}
	var o docs.OpenAPI
	b, err := o.JSON()
	if err != nil {
		t.Fatal(err)
	}
	fromJSON, err := openapi3.NewLoader().LoadFromData(b)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := doc.MarshalJSON()
	got, _ := fromJSON.MarshalJSON()
	if !bytes.Equal(want, got) {
		t.Error("the JSON document differs from docs/openapi.yaml")
	}
}

// apiCase is one request of TestOpenAPI.
type apiCase struct {
	// name says what the request is.
	name string
	// method and url are the request's.
	method, url string
	// header holds its headers.
	header map[string]string
	// body is its body; empty for none.
	body string
	// status is the status the sidecar must answer.
	status int
	// docRefuses says that the document itself refuses the request (a
	// method or path it does not have, a body or parameter its schemas
	// refuse); else it must accept it.
	docRefuses bool
	// wantHeaders are headers the answer must carry.
	wantHeaders []string
	// waitFor repeats the request until its answer holds this text: the
	// records are stored within a flush interval.
	waitFor string
	// example names the answer for docs/api.md's examples.
	example string
}

// apiValidator holds the document and what the requests exercised.
type apiValidator struct {
	doc    *openapi3.T
	router routers.Router
	// covered holds "METHOD path" of the document's operations exercised.
	covered map[string]bool
}

func newAPIValidator(t *testing.T) *apiValidator {
	doc := loadOpenAPI(t)
	// The servers' ports are the defaults; the test's are random.
	doc.Servers = nil
	for _, item := range doc.Paths.Map() {
		item.Servers = nil
		for _, op := range item.Operations() {
			op.Servers = nil
		}
	}
	router, err := gorillamux.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}
	// A decoder per media type of the document that kin-openapi does
	// not know; NDJSON is checked as the array of its lines.
	openapi3filter.RegisterBodyDecoder("application/x-ndjson", func(r io.Reader, _ http.Header, _ *openapi3.SchemaRef, _ openapi3filter.EncodingFn) (any, error) {
		b, err := io.ReadAll(r)
		if err != nil {
			return nil, err
		}
		var lines []any
		for line := range bytes.Lines(b) {
			if line = bytes.TrimSpace(line); len(line) > 0 {
				var v any
				if err := json.Unmarshal(line, &v); err != nil {
					return nil, err
				}
				lines = append(lines, v)
			}
		}
		return lines, nil
	})
	for _, ct := range []string{"application/x-protobuf", "application/openmetrics-text", "text/html"} {
		openapi3filter.RegisterBodyDecoder(ct, openapi3filter.FileBodyDecoder)
	}
	return &apiValidator{doc: doc, router: router, covered: map[string]bool{}}
}

// run sends c, checks the request and the answer against the document
// and returns the answer's body.
func (v *apiValidator) run(t *testing.T, client *http.Client, c apiCase) []byte {
	t.Helper()
	ctx := context.Background()
	newReq := func() *http.Request {
		req, err := http.NewRequest(c.method, c.url, strings.NewReader(c.body))
		if err != nil {
			t.Fatal(err)
		}
		for k, val := range c.header {
			req.Header.Set(k, val)
		}
		return req
	}
	// The request, as the document sees it.
	route, params, err := v.router.FindRoute(newReq())
	var input *openapi3filter.RequestValidationInput
	opts := &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc, IncludeResponseStatus: true, MultiError: true}
	switch {
	case err == nil:
		input = &openapi3filter.RequestValidationInput{Request: newReq(), PathParams: params, Route: route, Options: opts}
		verr := openapi3filter.ValidateRequest(ctx, input)
		if c.docRefuses && verr == nil {
			t.Errorf("%s: docs/openapi.yaml accepts %s %s, which the sidecar refuses: the document should say why", c.name, c.method, c.url)
		}
		if !c.docRefuses && verr != nil {
			t.Errorf("%s: docs/openapi.yaml refuses %s %s: %v", c.name, c.method, c.url, verr)
		}
		v.covered[c.method+" "+route.Path] = true
	case !c.docRefuses:
		t.Errorf("%s: docs/openapi.yaml has no %s %s: %v", c.name, c.method, c.url, err)
	}
	if err != nil && c.status == http.StatusMethodNotAllowed {
		// The answer is the document's 405 of the path's operation.
		for _, m := range []string{"GET", "POST"} {
			r := newReq()
			r.Method = m
			if route, params, err = v.router.FindRoute(r); err == nil {
				input = &openapi3filter.RequestValidationInput{Request: r, PathParams: params, Route: route, Options: opts}
				break
			}
		}
	}

	// The answer.
	var resp *http.Response
	var body []byte
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err = client.Do(newReq())
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		body, err = io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if c.waitFor == "" || bytes.Contains(body, []byte(c.waitFor)) || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if resp.StatusCode != c.status {
		t.Errorf("%s: %s %s answered %d, want %d: %s", c.name, c.method, c.url, resp.StatusCode, c.status, truncateBody(body))
	}
	for _, h := range c.wantHeaders {
		if resp.Header.Get(h) == "" {
			t.Errorf("%s: the answer has no %s header", c.name, h)
		}
	}
	if input == nil {
		// No path of the document: the sidecar's JSON 404.
		if err := v.schema(t, "Error").VisitJSON(decodeJSON(t, c.name, body), openapi3.EnableJSONSchema2020()); err != nil {
			t.Errorf("%s: the answer is not an Error: %v: %s", c.name, err, truncateBody(body))
		}
		if resp.StatusCode != http.StatusNotFound || resp.Header.Get("Content-Type") != "application/json" {
			t.Errorf("%s: an unknown path answered %d %s, want a JSON 404", c.name, resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		return body
	}
	rin := &openapi3filter.ResponseValidationInput{RequestValidationInput: input, Status: resp.StatusCode, Header: resp.Header,
		Body: io.NopCloser(bytes.NewReader(body)), Options: opts}
	if err := openapi3filter.ValidateResponse(ctx, rin); err != nil {
		t.Errorf("%s: the answer %d to %s %s does not match docs/openapi.yaml: %v\n%s", c.name, resp.StatusCode, c.method, c.url, err, truncateBody(body))
	}
	return body
}

func (v *apiValidator) schema(t *testing.T, name string) *openapi3.Schema {
	ref := v.doc.Components.Schemas[name]
	if ref == nil || ref.Value == nil {
		t.Fatalf("docs/openapi.yaml has no schema %s", name)
	}
	return ref.Value
}

// checkCoverage fails for every operation of the document that no
// request exercised.
func (v *apiValidator) checkCoverage(t *testing.T) {
	for path, item := range v.doc.Paths.Map() {
		for method := range item.Operations() {
			if !v.covered[method+" "+path] {
				t.Errorf("no request exercised %s %s of docs/openapi.yaml", method, path)
			}
		}
	}
}

// checkServedDocument: GET /v1/openapi.json is docs/openapi.yaml.
func checkServedDocument(t *testing.T, client *http.Client, api string) {
	resp, err := client.Get(api + "/v1/openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	served, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var o docs.OpenAPI
	want, err := o.JSON()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(served, want) {
		t.Error("GET /v1/openapi.json is not docs/openapi.yaml in JSON")
	}
}

func loadOpenAPI(t *testing.T) *openapi3.T {
	t.Helper()
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData([]byte(docs.OpenAPIYAML()))
	if err != nil {
		t.Fatalf("cannot load docs/openapi.yaml: %v", err)
	}
	if err := doc.Validate(loader.Context); err != nil {
		t.Fatalf("docs/openapi.yaml is not a valid OpenAPI document: %v", err)
	}
	return doc
}

// instantiate makes concrete paths of a templated one: a parameter
// takes each value of its enum, or "x".
func instantiate(path string, op *openapi3.Operation, item *openapi3.PathItem) []string {
	out := []string{path}
	params := append(slices.Clone(item.Parameters), op.Parameters...)
	for _, p := range params {
		if p.Value == nil || p.Value.In != "path" {
			continue
		}
		values := []string{"x"}
		if s := p.Value.Schema; s != nil && s.Value != nil && len(s.Value.Enum) > 0 {
			values = values[:0]
			for _, e := range s.Value.Enum {
				values = append(values, fmt.Sprint(e))
			}
		}
		var next []string
		for _, o := range out {
			for _, val := range values {
				next = append(next, strings.ReplaceAll(o, "{"+p.Value.Name+"}", url.PathEscape(val)))
			}
		}
		out = next
	}
	return out
}

func httptest(method, path string) *http.Request {
	r, _ := http.NewRequest(method, "http://sidecar"+path, nil)
	return r
}

func decodeJSON(t *testing.T, name string, body []byte) any {
	var v any
	if err := json.Unmarshal(body, &v); err != nil {
		t.Errorf("%s: the answer is not JSON: %v: %s", name, err, truncateBody(body))
	}
	return v
}

func truncateBody(b []byte) string {
	if len(b) > 600 {
		return string(b[:600]) + "..."
	}
	return string(b)
}

// otlpJSON is an export of two spans: one with a user, one without,
// which the partial success names.
func otlpJSON(now time.Time) string {
	span := func(id, user string) string {
		attrs := `{"key":"gen_ai.request.model","value":{"stringValue":"gpt-4o-mini"}},{"key":"gen_ai.usage.input_tokens","value":{"intValue":"10"}},{"key":"gen_ai.usage.output_tokens","value":{"intValue":"5"}}`
		if user != "" {
			attrs += `,{"key":"user.id","value":{"stringValue":"` + user + `"}}`
		}
		return fmt.Sprintf(`{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"%s","name":"chat gpt-4o-mini","startTimeUnixNano":"%d","endTimeUnixNano":"%d","attributes":[%s]}`,
			id, now.Add(-time.Second).UnixNano(), now.UnixNano(), attrs)
	}
	return `{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"svc"}}]},"scopeSpans":[{"spans":[` +
		span("eee19b7ec3c1b174", "alice") + "," + span("eee19b7ec3c1b175", "") + `]}]}]}`
}

func otlpProto(t *testing.T, now time.Time) string {
	td := ptrace.NewTraces()
	sp := td.ResourceSpans().AppendEmpty().ScopeSpans().AppendEmpty().Spans().AppendEmpty()
	sp.SetName("chat")
	sp.SetTraceID(pcommon.TraceID{1, 2, 3})
	sp.SetSpanID(pcommon.SpanID{4, 5, 6})
	sp.SetStartTimestamp(pcommon.NewTimestampFromTime(now.Add(-time.Second)))
	sp.SetEndTimestamp(pcommon.NewTimestampFromTime(now))
	sp.Attributes().PutStr("gen_ai.request.model", "gpt-4o-mini")
	sp.Attributes().PutInt("gen_ai.usage.input_tokens", 7)
	sp.Attributes().PutInt("gen_ai.usage.output_tokens", 2)
	sp.Attributes().PutStr("user.id", "bob")
	b, err := ptraceotlp.NewExportRequestFromTraces(td).MarshalProto()
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// sortedKeys lists a map's keys in order, for messages.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
