package collector

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llmusage/llmusage/internal/clock"
	"github.com/llmusage/llmusage/limiter"
	"github.com/llmusage/llmusage/record"
	"github.com/llmusage/llmusage/rules"
)

// recordingObserver keeps what the collector reported.
type recordingObserver struct {
	mu       sync.Mutex
	records  []record.Record
	rejected int
	checks   []bool
}

func (o *recordingObserver) ObserveRecords(recs []record.Record) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.records = append(o.records, recs...)
}
func (o *recordingObserver) ObserveRejected(n int) { o.rejected += n }
func (o *recordingObserver) ObserveCheck(_ string, allowed bool) {
	o.checks = append(o.checks, allowed)
}

var testNow = time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)

type testServer struct {
	handler  http.Handler
	observer *recordingObserver
	limiter  *limiter.Limiter
	clock    *clock.Manual
}

func newTestServer(t *testing.T, limitsYAML string) *testServer {
	t.Helper()
	file, err := rules.ParseFile("limits.yaml", []byte(limitsYAML))
	if err != nil {
		t.Fatalf("ParseFile: %s", err)
	}
	set := rules.Merge(file, nil)
	clk := clock.NewManual(testNow)
	l, err := limiter.New(set.InForce, limiter.Options{Clock: clk})
	if err != nil {
		t.Fatalf("limiter.New: %s", err)
	}
	obs := &recordingObserver{}
	c := New(Options{Limiter: l, Observer: obs, Rules: func() *rules.Set { return set }, Clock: clk, MaxBodyBytes: 4096})
	mux := http.NewServeMux()
	for _, r := range c.Routes() {
		mux.Handle(r.Pattern, r.Handler)
	}
	mux.HandleFunc("/", NotFound)
	return &testServer{handler: mux, observer: obs, limiter: l, clock: clk}
}

// do sends a request and decodes the JSON answer, failing the test if the
// answer is not JSON.
func (s *testServer) do(t *testing.T, method, path, contentType, body string) (*httptest.ResponseRecorder, map[string]any) {
	t.Helper()
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	rec := httptest.NewRecorder()
	s.handler.ServeHTTP(rec, req)
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Fatalf("%s %s: Content-Type %q, want application/json; body %s", method, path, ct, rec.Body)
	}
	var out map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
		t.Fatalf("%s %s: body is not a JSON object: %s: %s", method, path, err, rec.Body)
	}
	return rec, out
}

func TestCallsErrors(t *testing.T) {
	s := newTestServer(t, "")
	f := func(method, contentType, body string, wantStatus int, wantFields ...string) {
		t.Helper()
		rec, out := s.do(t, method, "/v1/calls", contentType, body)
		if rec.Code != wantStatus {
			t.Fatalf("status %d, want %d; body %s", rec.Code, wantStatus, rec.Body)
		}
		if msg, _ := out["error"].(string); msg == "" {
			t.Fatalf("no error message in %s", rec.Body)
		}
		var got []string
		details, _ := out["details"].([]any)
		for _, d := range details {
			m := d.(map[string]any)
			got = append(got, strings.Join([]string{jsonNumber(m["index"]), m["field"].(string)}, ":"))
		}
		if strings.Join(got, ",") != strings.Join(wantFields, ",") {
			t.Fatalf("details %v, want %v; body %s", got, wantFields, rec.Body)
		}
	}
	const js = "application/json"
	// Wrong method, media type, size.
	f(http.MethodGet, js, "", http.StatusMethodNotAllowed)
	f(http.MethodPut, js, `{}`, http.StatusMethodNotAllowed)
	f(http.MethodPost, "text/plain", `{"user_id":"u","model":"m"}`, http.StatusUnsupportedMediaType)
	f(http.MethodPost, "application/x-www-form-urlencoded", `{"user_id":"u","model":"m"}`, http.StatusUnsupportedMediaType)
	f(http.MethodPost, js, `{"user_id":"u","model":"m","metadata":{"pad":"`+strings.Repeat("x", 5000)+`"}}`, http.StatusRequestEntityTooLarge)
	// Bodies that are not records.
	f(http.MethodPost, js, ``, http.StatusBadRequest)
	f(http.MethodPost, js, `{"user_id":`, http.StatusBadRequest)
	f(http.MethodPost, js, `{"user_id":"u","model":"m"}{"user_id":"u","model":"m"}`, http.StatusBadRequest)
	f(http.MethodPost, js, `[1, "x"]`, http.StatusBadRequest, "0:", "1:")
	f(http.MethodPost, js, `"just a string"`, http.StatusBadRequest, "0:")
	f(http.MethodPost, "application/x-ndjson", "\n\n", http.StatusBadRequest)
	// Field errors, every one named.
	f(http.MethodPost, js, `{}`, http.StatusBadRequest, "0:model", "0:user_id")
	f(http.MethodPost, js, `{"user_id":"","model":"  "}`, http.StatusBadRequest, "0:model", "0:user_id")
	f(http.MethodPost, js, `{"user_id":"u","model":"m","prompt_token":3}`, http.StatusBadRequest, "0:prompt_token")
	f(http.MethodPost, js, `{"user_id":"u","model":"m","prompt_tokens":-1}`, http.StatusBadRequest, "0:prompt_tokens")
	f(http.MethodPost, js, `{"user_id":"u","model":"m","completion_tokens":1.5}`, http.StatusBadRequest, "0:completion_tokens")
	f(http.MethodPost, js, `{"user_id":"u","model":"m","cached_tokens":"3"}`, http.StatusBadRequest, "0:cached_tokens")
	f(http.MethodPost, js, `{"user_id":"u","model":"m","cost_usd":"0.1"}`, http.StatusBadRequest, "0:cost_usd")
	f(http.MethodPost, js, `{"user_id":"u","model":"m","cost_usd":-0.1}`, http.StatusBadRequest, "0:cost_usd")
	f(http.MethodPost, js, `{"user_id":"u","model":"m","cost_usd":2e9}`, http.StatusBadRequest, "0:cost_usd")
	f(http.MethodPost, js, `{"user_id":"u","model":"m","cost_usd":true}`, http.StatusBadRequest, "0:cost_usd")
	f(http.MethodPost, js, `{"user_id":"u","model":"m","prompt_tokens":10,"cached_tokens":6,"cache_write_tokens":5}`, http.StatusBadRequest, "0:cache_write_tokens")
	f(http.MethodPost, js, `{"user_id":"u","model":"m","reasoning_tokens":1e30}`, http.StatusBadRequest, "0:reasoning_tokens")
	f(http.MethodPost, js, `{"user_id":"u","model":"m","prompt_tokens":99999999999999999999}`, http.StatusBadRequest, "0:prompt_tokens")
	f(http.MethodPost, js, `{"user_id":"u","model":"m","prompt_tokens":10,"completion_tokens":5,"tokens_used":14}`, http.StatusBadRequest, "0:tokens_used")
	f(http.MethodPost, js, `{"user_id":"u","model":"m","latency_ms":-3}`, http.StatusBadRequest, "0:latency_ms")
	f(http.MethodPost, js, `{"user_id":"u","model":"m","latency_ms":"fast"}`, http.StatusBadRequest, "0:latency_ms")
	f(http.MethodPost, js, `{"user_id":"u","model":"m","status":"ok"}`, http.StatusBadRequest, "0:status")
	f(http.MethodPost, js, `{"user_id":"u","model":"m","timestamp":"yesterday"}`, http.StatusBadRequest, "0:timestamp")
	f(http.MethodPost, js, `{"user_id":"u","model":"m","timestamp":"2030-01-01T00:00:00Z"}`, http.StatusBadRequest, "0:timestamp")
	f(http.MethodPost, js, `{"user_id":"u","model":"m","timestamp":"2001-01-01T00:00:00Z"}`, http.StatusBadRequest, "0:timestamp")
	f(http.MethodPost, js, `{"user_id":"u","model":"m","metadata":[1]}`, http.StatusBadRequest, "0:metadata")
	f(http.MethodPost, js, `{"user_id":"u\nv","model":"m"}`, http.StatusBadRequest, "0:user_id")
	f(http.MethodPost, js, `{"user_id":"u","model":"`+strings.Repeat("m", MaxIDLength+1)+`"}`, http.StatusBadRequest, "0:model")
	f(http.MethodPost, js, "{\"user_id\":\"u\xff\",\"model\":\"m\"}", http.StatusBadRequest, "0:user_id")
	f(http.MethodPost, js, `{"user_id":42,"model":"m"}`, http.StatusBadRequest, "0:user_id")
	// What Postgres would refuse to store, refused here instead.
	f(http.MethodPost, js, `{"user_id":"u","model":"m","error_type":"time\u0000out"}`, http.StatusBadRequest, "0:error_type")
	f(http.MethodPost, js, `{"user_id":"u","model":"m","metadata":{"k":"\u0000"}}`, http.StatusBadRequest, "0:metadata")
	f(http.MethodPost, js, `{"user_id":"u","model":"m","metadata":{"\u0000":1}}`, http.StatusBadRequest, "0:metadata")
	f(http.MethodPost, js, `{"user_id":"u","model":"m","metadata":{"k":"\ud800"}}`, http.StatusBadRequest, "0:metadata")
	f(http.MethodPost, js, `{"user_id":"u","model":"m","metadata":{"k":"\ud800\u0041"}}`, http.StatusBadRequest, "0:metadata")
	f(http.MethodPost, js, `{"user_id":"u","model":"m","metadata":{"k":["\udc00"]}}`, http.StatusBadRequest, "0:metadata")
	f(http.MethodPost, js, `{"user_id":"u","model":"m","metadata":{"k":1e1000000}}`, http.StatusBadRequest, "0:metadata")
	f(http.MethodPost, js, `{"user_id":"u","model":"m","metadata":{"k":-1e-1000000}}`, http.StatusBadRequest, "0:metadata")
	f(http.MethodPost, js, `{"user_id":"u","model":"m","metadata":{"k":0.`+strings.Repeat("0", 1000)+`1}}`, http.StatusBadRequest, "0:metadata")
	f(http.MethodPost, js, `{"user_id":"u","model":"m","error_type":"\udc00"}`, http.StatusBadRequest, "0:error_type")
	// One bad record among good ones: every bad one is named, none applied.
	f(http.MethodPost, js, `[{"user_id":"u","model":"m"},{"user_id":"u"},{"user_id":"u","model":"m","prompt_tokens":-1,"status":"x"}]`,
		http.StatusBadRequest, "1:model", "2:prompt_tokens", "2:status")
	f(http.MethodPost, "application/x-ndjson", "{\"user_id\":\"u\",\"model\":\"m\"}\n\n{\"model\":\"m\"}\n", http.StatusBadRequest, "1:user_id")
	// A field given twice: which one was meant is not for the sidecar to guess.
	f(http.MethodPost, js, `{"user_id":"u","model":"m","prompt_tokens":1,"prompt_tokens":9}`, http.StatusBadRequest, "0:prompt_tokens")
	f(http.MethodPost, "application/x-ndjson", "{\"user_id\":\"u\",\"model\":\"m\"}\nnot json at all\n", http.StatusBadRequest, "1:")
	// One request_id twice in a request: the store would keep one of them.
	f(http.MethodPost, js, `[{"user_id":"u","model":"m","request_id":"r"},{"user_id":"v","model":"m"},{"user_id":"v","model":"m","prompt_tokens":7,"request_id":"r"}]`,
		http.StatusBadRequest, "2:request_id")

	if len(s.observer.records) != 0 {
		t.Fatalf("records applied from rejected requests: %+v", s.observer.records)
	}
	if s.observer.rejected == 0 {
		t.Fatalf("rejected records were not reported")
	}
}

func jsonNumber(v any) string {
	if f, ok := v.(float64); ok {
		return strconv.Itoa(int(f))
	}
	return ""
}

func TestCallsAccepted(t *testing.T) {
	f := func(contentType, body string, want ...record.Record) {
		t.Helper()
		s := newTestServer(t, "providers:\n  - prefix: llama-\n    provider: groq\n")
		rec, out := s.do(t, http.MethodPost, "/v1/calls", contentType, body)
		if rec.Code != http.StatusAccepted {
			t.Fatalf("status %d, want 202; body %s", rec.Code, rec.Body)
		}
		if out["accepted"] != float64(len(want)) {
			t.Fatalf("accepted %v, want %d", out["accepted"], len(want))
		}
		if len(s.observer.records) != len(want) {
			t.Fatalf("observed %d records, want %d", len(s.observer.records), len(want))
		}
		for i, got := range s.observer.records {
			if got.RequestID == "" {
				t.Fatalf("record %d has no request_id", i)
			}
			got.RequestID = want[i].RequestID
			if string(got.Metadata) != string(want[i].Metadata) {
				t.Fatalf("record %d metadata %s, want %s", i, got.Metadata, want[i].Metadata)
			}
			got.Metadata, want[i].Metadata = nil, nil
			if !reflect.DeepEqual(got, want[i]) {
				t.Fatalf("record %d:\n got %+v\nwant %+v", i, got, want[i])
			}
		}
	}
	base := record.Record{Status: "success", Timestamp: testNow}
	with := func(mod func(r *record.Record)) record.Record {
		r := base
		mod(&r)
		return r
	}
	// The seed's three examples, priced (genai-prices: groq.yml
	// llama-3.1-70b-versatile $0.59/$0.79, openai.yml gpt-4 $30/$60,
	// anthropic.yml claude-3-opus $15/$75 per million tokens).
	f("application/json", `{"user_id":"u1","model":"llama-3.1-70b-versatile","tokens_used":150,"prompt_tokens":100,"completion_tokens":50,"metadata":{"provider":"groq"}}`,
		with(func(r *record.Record) {
			r.UserID, r.Model, r.Provider, r.TotalTokens, r.PromptTokens, r.CompletionTokens = "u1", "llama-3.1-70b-versatile", "groq", 150, 100, 50
			r.Metadata = []byte(`{"provider":"groq"}`)
			r.Cost, r.HasCost = 98_500, true // 100 x 0.59 + 50 x 0.79 micro-dollars
		}))
	f("application/json; charset=utf-8", `[{"user_id":"u1","model":"gpt-4","prompt_tokens":10,"completion_tokens":5,"metadata":{"provider":"openai"}},
		{"user_id":"u2","model":"claude-3-opus","prompt_tokens":7,"completion_tokens":3,"latency_ms":1500.5,"status":"error","error_type":"overloaded","request_id":"r-1","timestamp":"2026-11-27T11:59:00+01:00"}]`,
		with(func(r *record.Record) {
			r.UserID, r.Model, r.Provider, r.TotalTokens, r.PromptTokens, r.CompletionTokens = "u1", "gpt-4", "openai", 15, 10, 5
			r.Metadata = []byte(`{"provider":"openai"}`)
			r.Cost, r.HasCost = 600_000, true // 10 x 30 + 5 x 60
		}),
		with(func(r *record.Record) {
			r.UserID, r.Model, r.Provider, r.TotalTokens, r.PromptTokens, r.CompletionTokens = "u2", "claude-3-opus", "anthropic", 10, 7, 3
			r.Latency, r.HasLatency, r.Status, r.ErrorType, r.RequestID = 1500500*time.Microsecond, true, "error", "overloaded", "r-1"
			r.Timestamp = time.Date(2026, 11, 27, 10, 59, 0, 0, time.UTC)
			r.Cost, r.HasCost = 330_000, true // 7 x 15 + 3 x 75
		}))
	// Provider: explicit beats metadata beats inference; aliases and case normalised;
	// the limits file's prefixes extend the table; otherwise unknown.
	f("application/x-ndjson", `{"user_id":"u","model":"gpt-4o","provider":"Azure"}
{"user_id":"u","model":"gpt-4o","metadata":{"provider":"OpenAI","x":[1,{"y":null}]}}
{"user_id":"u","model":"o3-mini","cached_tokens":4,"reasoning_tokens":9}
{"user_id":"u","model":"llama-3.3-70b"}
{"user_id":"u","model":"my-finetune","tokens_used":12}`,
		// Priced at zero tokens: a known cost of nothing.
		with(func(r *record.Record) {
			r.UserID, r.Model, r.Provider, r.HasCost = "u", "gpt-4o", "azure.ai.openai", true
		}),
		with(func(r *record.Record) {
			r.UserID, r.Model, r.Provider, r.HasCost = "u", "gpt-4o", "openai", true
			r.Metadata = []byte(`{"provider":"OpenAI","x":[1,{"y":null}]}`)
		}),
		with(func(r *record.Record) {
			r.UserID, r.Model, r.Provider, r.CachedTokens, r.ReasoningTokens = "u", "o3-mini", "openai", 4, 9
			r.Cost, r.HasCost = 2_200, true // 4 cached at 0.55
		}),
		// Groq prices llama-3.3-70b-versatile and -specdec, not this name: unpriced.
		with(func(r *record.Record) { r.UserID, r.Model, r.Provider = "u", "llama-3.3-70b", "groq" }),
		with(func(r *record.Record) {
			r.UserID, r.Model, r.Provider, r.TotalTokens = "u", "my-finetune", "unknown", 12
		}),
	)
	// No Content-Type at all is taken as JSON.
	f("", `{"user_id":"u","model":"claude-3-5-sonnet","prompt_tokens":1}`,
		with(func(r *record.Record) {
			r.UserID, r.Model, r.Provider, r.PromptTokens, r.TotalTokens = "u", "claude-3-5-sonnet", "anthropic", 1, 1
			r.Cost, r.HasCost = 3_000, true
		}))
	// A record's own cost wins over the prices; cache writes are priced apart
	// (claude-3-5-sonnet: input 3, cache read 0.3, cache write 3.75, output 15).
	f("application/x-ndjson", `{"user_id":"u","model":"gpt-4o","prompt_tokens":1000,"cost_usd":0.123456789}
{"user_id":"u","model":"claude-3-5-sonnet","prompt_tokens":1000,"cached_tokens":200,"cache_write_tokens":300,"completion_tokens":100,"reasoning_tokens":40}
{"user_id":"u","model":"my-finetune","cost_usd":0}`,
		with(func(r *record.Record) {
			r.UserID, r.Model, r.Provider, r.PromptTokens, r.TotalTokens = "u", "gpt-4o", "openai", 1000, 1000
			r.Cost, r.HasCost = 123_456_789, true
		}),
		with(func(r *record.Record) {
			r.UserID, r.Model, r.Provider, r.PromptTokens, r.CachedTokens, r.CacheWriteTokens, r.CompletionTokens, r.ReasoningTokens, r.TotalTokens =
				"u", "claude-3-5-sonnet", "anthropic", 1000, 200, 300, 100, 40, 1100
			r.Cost, r.HasCost = 500*3_000+200*300+300*3_750+100*15_000, true
		}),
		with(func(r *record.Record) {
			r.UserID, r.Model, r.Provider, r.HasCost = "u", "my-finetune", "unknown", true
		}))
	// An empty array is a valid, empty batch.
	f("application/json", `[]`)
	// What Postgres stores as sent: a surrogate pair, escapes of other
	// control characters in free text, numbers at the edges of a double,
	// a backslash before a u that is not an escape.
	meta := `{"emoji":"\ud83d\ude00","tab":"a\u0009b","big":1.7e308,"small":-2.5e-307,"zero":0.000e-999,"path":"C:\\user","n":[-0,1E+2]}`
	f("application/json", `{"user_id":"u","model":"m","error_type":"rate\u0009limit \ud83d\ude00","metadata":`+meta+`}`,
		with(func(r *record.Record) {
			r.UserID, r.Model, r.Provider, r.ErrorType = "u", "m", "unknown", "rate\tlimit \U0001F600"
			r.Metadata = []byte(meta)
		}))
}

func TestCheckAndLimits(t *testing.T) {
	s := newTestServer(t, `
limits:
  - limit_type: minute
    requests: 3
  - limit_type: minute
    provider: openai
    tokens: 1000
`)
	check := func(body string, wantStatus int) map[string]any {
		t.Helper()
		rec, out := s.do(t, http.MethodPost, "/v1/check", "application/json", body)
		if rec.Code != wantStatus {
			t.Fatalf("check %s: status %d, want %d; body %s", body, rec.Code, wantStatus, rec.Body)
		}
		if wantStatus == http.StatusTooManyRequests && rec.Header().Get("Retry-After") != "20" {
			t.Fatalf("Retry-After %q, want 20", rec.Header().Get("Retry-After"))
		}
		return out
	}
	out := check(`{"user_id":"u","model":"gpt-4o","tokens":400,"request_id":"req-1"}`, http.StatusOK)
	if out["allowed"] != true || out["request_id"] != "req-1" || out["provider"] != "openai" {
		t.Fatalf("unexpected answer %v", out)
	}
	limits := out["limits"].([]any)
	if len(limits) != 2 {
		t.Fatalf("limits %v, want the requests and the openai tokens bucket", limits)
	}
	tokens := limits[1].(map[string]any)
	if tokens["unit"] != "tokens" || tokens["remaining"] != float64(600) || tokens["provider"] != "openai" || tokens["limit"] != float64(1000) {
		t.Fatalf("tokens bucket %v, want 600 of 1000 left, scoped to openai", tokens)
	}
	// The record for req-1 used 100 tokens: 300 are refunded, the request is not charged again.
	rec, _ := s.do(t, http.MethodPost, "/v1/calls", "application/json", `{"user_id":"u","model":"gpt-4o","prompt_tokens":100,"request_id":"req-1"}`)
	if rec.Code != http.StatusAccepted {
		t.Fatalf("record: %d %s", rec.Code, rec.Body)
	}
	_, lim := s.do(t, http.MethodGet, "/v1/limits?user_id=u&model=gpt-4o", "", "")
	got := lim["limits"].([]any)
	if got[0].(map[string]any)["remaining"] != float64(2) || got[1].(map[string]any)["remaining"] != float64(900) {
		t.Fatalf("after settling req-1: %v, want 2 requests and 900 tokens left", got)
	}
	check(`{"user_id":"u","model":"gpt-4o"}`, http.StatusOK)
	check(`{"user_id":"u","model":"gpt-4o"}`, http.StatusOK)
	out = check(`{"user_id":"u","model":"gpt-4o"}`, http.StatusTooManyRequests)
	if out["allowed"] != false || out["retry_after_seconds"] != float64(20) {
		t.Fatalf("denied answer %v", out)
	}
	// The seed's check_rate_limit view agrees.
	_, seed := s.do(t, http.MethodGet, "/api/llm/usage/rate-limit/minute?user_id=u", "", "")
	if seed["can_call"] != false || seed["limit"] != float64(3) || seed["used"] != float64(3) || seed["remaining"] != float64(0) || seed["limit_type"] != "minute" {
		t.Fatalf("seed answer %v", seed)
	}
	if seed["reset_at"] != "2026-11-27T12:01:00Z" {
		t.Fatalf("reset_at %v, want a minute from now", seed["reset_at"])
	}
	_, all := s.do(t, http.MethodGet, "/api/llm/usage/rate-limits?user_id=u", "", "")
	if all["minute"].(map[string]any)["can_call"] != false || all["day"].(map[string]any)["can_call"] != true || all["day"].(map[string]any)["limit"] != nil {
		t.Fatalf("seed rate-limits %v", all)
	}
	// Time passes: one request refills in 20 s.
	s.clock.Advance(20 * time.Second)
	check(`{"user_id":"u","model":"gpt-4o"}`, http.StatusOK)
	// Another user has a budget of its own.
	check(`{"user_id":"v","model":"claude-3-opus"}`, http.StatusOK)
	if want := []bool{true, true, true, false, true, true}; len(s.observer.checks) != len(want) {
		t.Fatalf("observed checks %v, want %v", s.observer.checks, want)
	}
}

func TestCheckErrors(t *testing.T) {
	s := newTestServer(t, "limits:\n  - limit_type: minute\n    tokens: 100\n")
	f := func(method, path, body string, wantStatus int, wantField string) {
		t.Helper()
		rec, out := s.do(t, method, path, "application/json", body)
		if rec.Code != wantStatus {
			t.Fatalf("%s %s: status %d, want %d; body %s", method, path, rec.Code, wantStatus, rec.Body)
		}
		if out["error"] == nil {
			t.Fatalf("no error in %s", rec.Body)
		}
		if wantField != "" {
			d := out["details"].([]any)[0].(map[string]any)
			if d["field"] != wantField {
				t.Fatalf("field %v, want %s; body %s", d["field"], wantField, rec.Body)
			}
		}
	}
	f(http.MethodGet, "/v1/check", "", http.StatusMethodNotAllowed, "")
	f(http.MethodPost, "/v1/check", `{"model":"m"}`, http.StatusBadRequest, "user_id")
	f(http.MethodPost, "/v1/check", `{"user_id":"u","model":"m","token":5}`, http.StatusBadRequest, "token")
	f(http.MethodPost, "/v1/check", `{"user_id":"u","model":"m","tokens":-5}`, http.StatusBadRequest, "tokens")
	f(http.MethodPost, "/v1/check", `{"user_id":"u","model":"m","tokens":101}`, http.StatusBadRequest, "tokens")
	f(http.MethodPost, "/v1/check", `not json`, http.StatusBadRequest, "")
	f(http.MethodPost, "/v1/limits", ``, http.StatusMethodNotAllowed, "")
	f(http.MethodGet, "/v1/limits", ``, http.StatusBadRequest, "user_id")
	f(http.MethodGet, "/api/llm/usage/rate-limit/week?user_id=u", ``, http.StatusNotFound, "")
	f(http.MethodGet, "/api/llm/usage/rate-limit/minute", ``, http.StatusBadRequest, "user_id")
	f(http.MethodGet, "/api/llm/usage/rate-limits", ``, http.StatusBadRequest, "user_id")
	f(http.MethodGet, "/v1/limits?user_id=%01", ``, http.StatusBadRequest, "user_id")
	f(http.MethodGet, "/api/llm/usage/rate-limits?user_id=%FF", ``, http.StatusBadRequest, "user_id")
	f(http.MethodGet, "/api/llm/usage/rate-limit/minute?user_id="+strings.Repeat("u", MaxIDLength+1), ``, http.StatusBadRequest, "user_id")
	f(http.MethodGet, "/nowhere", ``, http.StatusNotFound, "")

	_, out := s.do(t, http.MethodGet, "/api/llm/usage/rate-limit/week?user_id=u", "", "")
	if msg := out["error"].(string); !strings.Contains(msg, "second, minute, hour, day") {
		t.Fatalf("404 %q does not list the valid types", msg)
	}
}

func TestRecordsChargeLimiter(t *testing.T) {
	s := newTestServer(t, "limits:\n  - limit_type: hour\n    requests: 2\n")
	// Records are never refused for being over a limit: the call happened.
	for i := 0; i < 3; i++ {
		rec, _ := s.do(t, http.MethodPost, "/v1/calls", "application/json", `{"user_id":"u","model":"m"}`)
		if rec.Code != http.StatusAccepted {
			t.Fatalf("record %d: %d %s", i, rec.Code, rec.Body)
		}
	}
	rec, out := s.do(t, http.MethodPost, "/v1/check", "application/json", `{"user_id":"u","model":"m"}`)
	// Three records put the bucket one request into debt: the next request
	// needs two refills of 30 minutes each.
	if rec.Code != http.StatusTooManyRequests || out["retry_after_seconds"] != float64(3600) {
		t.Fatalf("check after debt: %d %s, want 429 with 3600 s", rec.Code, rec.Body)
	}
}
