package collector

import (
	"net/http"
	"testing"
)

// TestCheckRateLimitFields: every check answer carries the IETF
// RateLimit-Policy and RateLimit fields of its tightest bucket: the one
// with the least left (a pool's tokens, then the user's requests), and on
// a refusal the one that refused, with t the Retry-After.
func TestCheckRateLimitFields(t *testing.T) {
	s := newTestServer(t, `
limits:
  - limit_type: minute
    requests: 3
  - limit_type: minute
    per: all
    model: gpt-4o
    tokens: 1000
  - limit_type: day
    usd: 0.01
    model: house-model
prices:
  - model: house-model
    input: 10
    output: 40
`)
	check := func(body string, wantStatus int, wantPolicy, wantRateLimit string) {
		t.Helper()
		rec, _ := s.do(t, http.MethodPost, "/v1/check", "application/json", body)
		if rec.Code != wantStatus {
			t.Fatalf("check %s: status %d, want %d; body %s", body, rec.Code, wantStatus, rec.Body)
		}
		if got := rec.Header().Values("RateLimit-Policy"); len(got) != 1 || got[0] != wantPolicy {
			t.Errorf("check %s: RateLimit-Policy %q, want %q", body, got, wantPolicy)
		}
		if got := rec.Header().Values("RateLimit"); len(got) != 1 || got[0] != wantRateLimit {
			t.Errorf("check %s: RateLimit %q, want %q", body, got, wantRateLimit)
		}
	}
	// 400 tokens of the shared 1,000 a minute: 60% left, against 2 of 3
	// requests; full again in 24 s.
	check(`{"user_id":"u","model":"gpt-4o","tokens":400}`, http.StatusOK,
		`"all-minute-tokens";q=1000;w=60;llmusage-unit="tokens"`, `"all-minute-tokens";r=600;t=24;llmusage-unit="tokens"`)
	check(`{"user_id":"u","model":"gpt-4o","tokens":1}`, http.StatusOK,
		`"minute-requests";q=3;w=60`, `"minute-requests";r=1;t=40`)
	check(`{"user_id":"u","model":"gpt-4o","tokens":1}`, http.StatusOK,
		`"minute-requests";q=3;w=60`, `"minute-requests";r=0;t=60`)
	// Refused: one request back in 20 s, the Retry-After.
	check(`{"user_id":"u","model":"gpt-4o","tokens":1}`, http.StatusTooManyRequests,
		`"minute-requests";q=3;w=60`, `"minute-requests";r=0;t=20`)
	// A budget in millionths of a dollar: $0.005 of $0.01 a day left,
	// until midnight (testNow is noon, UTC).
	check(`{"user_id":"v","model":"house-model","prompt_tokens":100,"max_tokens":100}`, http.StatusOK,
		`"day-usd";q=10000;w=86400;llmusage-unit="usd-micros"`, `"day-usd";r=5000;t=43200;llmusage-unit="usd-micros"`)
	check(`{"user_id":"v","model":"house-model","prompt_tokens":100,"max_tokens":100}`, http.StatusOK,
		`"day-usd";q=10000;w=86400;llmusage-unit="usd-micros"`, `"day-usd";r=0;t=43200;llmusage-unit="usd-micros"`)
	check(`{"user_id":"v","model":"house-model","prompt_tokens":100,"max_tokens":100}`, http.StatusTooManyRequests,
		`"day-usd";q=10000;w=86400;llmusage-unit="usd-micros"`, `"day-usd";r=0;t=43200;llmusage-unit="usd-micros"`)

	// No rule applies: no fields.
	none := newTestServer(t, "")
	rec, _ := none.do(t, http.MethodPost, "/v1/check", "application/json", `{"user_id":"u","model":"m"}`)
	if rec.Code != http.StatusOK || rec.Header().Get("RateLimit") != "" || rec.Header().Get("RateLimit-Policy") != "" {
		t.Fatalf("check without rules: %d, RateLimit %q, RateLimit-Policy %q", rec.Code, rec.Header().Get("RateLimit"), rec.Header().Get("RateLimit-Policy"))
	}
}

// TestConcurrencyCheck: under concurrent: 2 the third check in flight
// is refused with a wait of a second, the draft's concurrent-requests
// fields and the limit in its answer; a record of one of the first two
// lets the next one in.
func TestConcurrencyCheck(t *testing.T) {
	s := newTestServer(t, "limits:\n  - concurrent: 2\n")
	for _, id := range []string{"a", "b"} {
		rec, _ := s.do(t, http.MethodPost, "/v1/check", "application/json", `{"user_id":"u","model":"m","request_id":"`+id+`"}`)
		if rec.Code != http.StatusOK {
			t.Fatalf("check %s: %d %s", id, rec.Code, rec.Body)
		}
	}
	rec, body := s.do(t, http.MethodPost, "/v1/check", "application/json", `{"user_id":"u","model":"m","request_id":"c"}`)
	if rec.Code != http.StatusTooManyRequests || rec.Header().Get("Retry-After") != "1" {
		t.Fatalf("third check: %d, Retry-After %q; want 429 and 1", rec.Code, rec.Header().Get("Retry-After"))
	}
	if got, want := rec.Header().Get("RateLimit-Policy"), `"concurrent";q=2;qu="concurrent-requests"`; got != want {
		t.Fatalf("RateLimit-Policy %q, want %q", got, want)
	}
	if got, want := rec.Header().Get("RateLimit"), `"concurrent";r=0;t=1;qu="concurrent-requests"`; got != want {
		t.Fatalf("RateLimit %q, want %q", got, want)
	}
	limits, _ := body["limits"].([]any)
	if len(limits) != 1 {
		t.Fatalf("limits %v", body["limits"])
	}
	l := limits[0].(map[string]any)
	if l["limit_type"] != "concurrent" || l["unit"] != "concurrent" || l["limit"] != 2.0 || l["remaining"] != 0.0 {
		t.Fatalf("limit %v, want concurrent 2 with 0 remaining", l)
	}
	if rec, _ := s.do(t, http.MethodPost, "/v1/calls", "application/json", `{"user_id":"u","model":"m","request_id":"a","tokens_used":3}`); rec.Code/100 != 2 {
		t.Fatalf("record: %d %s", rec.Code, rec.Body)
	}
	if rec, _ := s.do(t, http.MethodPost, "/v1/check", "application/json", `{"user_id":"u","model":"m","request_id":"c"}`); rec.Code != http.StatusOK {
		t.Fatalf("check after a record: %d %s", rec.Code, rec.Body)
	}
}
