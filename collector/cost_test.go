package collector

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/llmusage/llmusage/pricing"
	"github.com/llmusage/llmusage/rules"
	"github.com/llmusage/llmusage/usd"
)

// TestBudgetChecks: a check reserves its estimated cost in the user's
// budget, is refused with 429 until the period resets once the budget
// cannot cover it, and records settle the actual cost.
func TestBudgetChecks(t *testing.T) {
	s := newTestServer(t, `
limits:
  - limit_type: day
    usd: 0.01
  - user_id: vip
    limit_type: month
    usd: 100
prices:
  - model: house-model
    input: 10
    output: 40
`)
	check := func(body string, wantStatus int) map[string]any {
		t.Helper()
		rec, out := s.do(t, http.MethodPost, "/v1/check", "application/json", body)
		if rec.Code != wantStatus {
			t.Fatalf("check %s: status %d, want %d; body %s", body, rec.Code, wantStatus, rec.Body)
		}
		if wantStatus == http.StatusTooManyRequests {
			// testNow is 12:00 UTC: the day budget resets in 12 hours.
			if got := rec.Header().Get("Retry-After"); got != "43200" {
				t.Fatalf("Retry-After %q, want 43200", got)
			}
		}
		return out
	}
	budget := func(out map[string]any) map[string]any {
		t.Helper()
		for _, l := range out["limits"].([]any) {
			if m := l.(map[string]any); m["unit"] == "usd" {
				return m
			}
		}
		t.Fatalf("no usd budget in %v", out)
		return nil
	}
	// 100 prompt + 100 max tokens of house-model: 100 x 10 + 100 x 40 = $0.005.
	out := check(`{"user_id":"u","model":"house-model","prompt_tokens":100,"max_tokens":100,"request_id":"a"}`, http.StatusOK)
	if b := budget(out); b["limit"] != 0.01 || b["remaining"] != 0.005 || b["limit_type"] != "day" || b["reset_at"] != "2026-11-28T00:00:00Z" {
		t.Fatalf("budget after one check: %v", b)
	}
	check(`{"user_id":"u","model":"house-model","prompt_tokens":100,"max_tokens":100}`, http.StatusOK)
	refused := check(`{"user_id":"u","model":"house-model","prompt_tokens":100,"max_tokens":100}`, http.StatusTooManyRequests)
	if refused["allowed"] != false || budget(refused)["remaining"] != float64(0) {
		t.Fatalf("refused check: %v", refused)
	}
	// The first call cost less than its estimate ($0.001): the record
	// settles it, and a $0.004 check fits again.
	rec, _ := s.do(t, http.MethodPost, "/v1/calls", "application/json",
		`{"user_id":"u","model":"house-model","prompt_tokens":100,"completion_tokens":0,"request_id":"a"}`)
	if rec.Code != http.StatusAccepted {
		t.Fatalf("record: %d %s", rec.Code, rec.Body)
	}
	check(`{"user_id":"u","model":"house-model","tokens":100}`, http.StatusOK) // 100 tokens at the dearer price: $0.004
	check(`{"user_id":"u","model":"house-model"}`, http.StatusTooManyRequests)

	// Another user has a budget of their own; vip's month budget wins
	// over the general day budget only for its limit type.
	check(`{"user_id":"v","model":"house-model","tokens":100}`, http.StatusOK)
	out = check(`{"user_id":"vip","model":"house-model","tokens":100}`, http.StatusOK)
	if len(out["limits"].([]any)) != 2 {
		t.Fatalf("vip's limits: %v, want the day and the month budgets", out["limits"])
	}

	// A check for a model without a price cannot be held to a budget.
	rec, body := s.do(t, http.MethodPost, "/v1/check", "application/json", `{"user_id":"u","model":"mystery-model","tokens":10}`)
	if rec.Code != http.StatusBadRequest || !strings.Contains(body["error"].(string), `model "mystery-model"`) || !strings.Contains(body["error"].(string), "--budget-unpriced=allow") {
		t.Fatalf("unpriced check: %d %s", rec.Code, rec.Body)
	}
	// An estimate no budget could ever cover is refused for good.
	rec, _ = s.do(t, http.MethodPost, "/v1/check", "application/json", `{"user_id":"v","model":"house-model","prompt_tokens":10000,"max_tokens":10000}`)
	if rec.Code != http.StatusBadRequest {
		t.Fatalf("estimate over the budget: %d %s", rec.Code, rec.Body)
	}
	// max_tokens beyond tokens is a contradiction.
	rec, _ = s.do(t, http.MethodPost, "/v1/check", "application/json", `{"user_id":"v","model":"house-model","tokens":5,"max_tokens":10}`)
	if rec.Code != http.StatusBadRequest {
		t.Fatalf("tokens below max_tokens: %d %s", rec.Code, rec.Body)
	}

	// The next day the budget is whole again.
	s.clock.Set(time.Date(2026, 11, 28, 0, 0, 0, 0, time.UTC))
	check(`{"user_id":"u","model":"house-model","tokens":100}`, http.StatusOK)

	// /v1/limits and /v1/rules show budgets in dollars.
	_, lim := s.do(t, http.MethodGet, "/v1/limits?user_id=u", "", "")
	if b := budget(lim); b["limit"] != 0.01 || b["remaining"] != 0.006 {
		t.Fatalf("/v1/limits budget %v", b)
	}
	_, rules := s.do(t, http.MethodGet, "/v1/rules", "", "")
	if r := rules["rules"].([]any)[0].(map[string]any); r["unit"] != "usd" || r["limit"] != 0.01 {
		t.Fatalf("/v1/rules: %v", r)
	}
}

func TestPricesAPI(t *testing.T) {
	s := newTestServer(t, "prices:\n  - model: gpt-4o*\n    provider: openai\n    input: 2\n    output: 8\n    from: 2026-01-01\n")
	rec, out := s.do(t, http.MethodGet, "/v1/prices", "", "")
	if rec.Code != http.StatusOK {
		t.Fatal(rec.Code, rec.Body)
	}
	snap := out["snapshot"].(map[string]any)
	if !strings.HasPrefix(snap["source"].(string), "genai-prices ") || snap["version"] == "" || snap["date"] == "" {
		t.Fatalf("snapshot %v", snap)
	}
	ov := out["overrides"].([]any)
	if len(ov) != 1 || ov[0].(map[string]any)["input"] != float64(2) || ov[0].(map[string]any)["from"] != "2026-01-01T00:00:00Z" {
		t.Fatalf("overrides %v", ov)
	}
	// The price of one model, from the override or the embedded table.
	_, out = s.do(t, http.MethodGet, "/v1/prices?model=gpt-4o-2024-08-06", "", "")
	if p := out["price"].(map[string]any); p["input"] != float64(2) || p["output"] != float64(8) || p["source"] != "limits.yaml:2: prices[0]" {
		t.Fatalf("gpt-4o: %v", out)
	}
	_, out = s.do(t, http.MethodGet, "/v1/prices?model=claude-3-opus", "", "")
	if p := out["price"].(map[string]any); p["input"] != float64(15) || p["output"] != float64(75) || p["cache_write"] != 18.75 || out["provider"] != "anthropic" {
		t.Fatalf("claude-3-opus: %v", out)
	}
	if rec, _ := s.do(t, http.MethodGet, "/v1/prices?model=mystery", "", ""); rec.Code != http.StatusNotFound {
		t.Fatalf("an unpriced model: %d", rec.Code)
	}
	if rec, _ := s.do(t, http.MethodGet, "/v1/prices?provider=openai", "", ""); rec.Code != http.StatusBadRequest {
		t.Fatalf("no model: %d", rec.Code)
	}
	if rec, _ := s.do(t, http.MethodGet, "/v1/prices?unpriced=maybe", "", ""); rec.Code != http.StatusBadRequest {
		t.Fatalf("unpriced=maybe: %d", rec.Code)
	}

	// Unpriced models are listed, most records first, with no cost made up.
	s.do(t, http.MethodPost, "/v1/calls", "application/x-ndjson", `{"user_id":"u","model":"mystery","prompt_tokens":5}
{"user_id":"u","model":"mystery","prompt_tokens":5}
{"user_id":"u","model":"other-mystery","provider":"vllm"}
{"user_id":"u","model":"gpt-4o"}`)
	for _, r := range s.observer.records {
		if r.Model != "gpt-4o" && (r.HasCost || r.Cost != 0) {
			t.Fatalf("unpriced record with a cost: %+v", r)
		}
	}
	_, out = s.do(t, http.MethodGet, "/v1/prices?unpriced=1", "", "")
	list := out["unpriced"].([]any)
	if len(list) != 2 {
		t.Fatalf("unpriced %v", list)
	}
	first := list[0].(map[string]any)
	if first["model"] != "mystery" || first["provider"] != "unknown" || first["records"] != float64(2) {
		t.Fatalf("first unpriced %v", first)
	}
	if second := list[1].(map[string]any); second["model"] != "other-mystery" || second["provider"] != "vllm" {
		t.Fatalf("second unpriced %v", second)
	}
}

// TestCheckCostNeverTooLittle: whatever split of a check's tokens the
// call makes, its cost is at most the estimate reserved.
func TestCheckCostNeverTooLittle(t *testing.T) {
	set := rules.Merge(nil, nil)
	at := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	f := func(provider, model string, tokens int64) {
		t.Helper()
		est, ok := checkCost(set.Prices, &checkRequest{Provider: provider, Model: model, Tokens: tokens}, at)
		if !ok {
			t.Fatalf("%s has no price", model)
		}
		m, _ := set.Prices.Lookup(provider, model, at)
		for _, in := range []int64{0, 1, tokens / 3, tokens / 2, 128_000, 128_001, 200_000, 200_001, tokens - 1, tokens} {
			if in < 0 || in > tokens {
				continue
			}
			for _, u := range []pricing.Usage{{InputTokens: in, OutputTokens: tokens - in}, {InputTokens: in, CacheWriteTokens: in, OutputTokens: tokens - in}} {
				if c := m.Price.Cost(u); c > est {
					t.Fatalf("%s, %d tokens: estimate %s, but %+v costs %s", model, tokens, est, u, c)
				}
			}
		}
	}
	f("gcp.gemini", "gemini-2.5-pro", 1_000_000) // tiered above 200k input tokens
	f("anthropic", "claude-sonnet-4", 1_000_000)
	f("anthropic", "claude-3-5-sonnet", 10_000) // cache writes dearer than input
	f("openai", "gpt-4o", 50_000)
	// Split estimates: prompt_tokens may be written to a cache.
	est, _ := checkCost(set.Prices, &checkRequest{Provider: "anthropic", Model: "claude-3-5-sonnet", Tokens: 1100, PromptTokens: 1000, MaxTokens: 100}, at)
	if want := usd.Amount(1000*3_750 + 100*15_000); est != want {
		t.Fatalf("split estimate %s, want %s (the prompt at the cache-write price)", est, want)
	}
}
