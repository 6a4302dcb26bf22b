package rules

import (
	"strings"
	"testing"
	"time"

	"github.com/llmusage/llmusage/limiter"
	"github.com/llmusage/llmusage/pricing"
	"github.com/llmusage/llmusage/provider"
)

func TestParseFileErrors(t *testing.T) {
	f := func(yaml, wantInMessage string) {
		t.Helper()
		_, err := ParseFile("limits.yaml", []byte(yaml))
		if err == nil {
			t.Fatalf("no error for:\n%s", yaml)
		}
		if !strings.Contains(err.Error(), wantInMessage) {
			t.Fatalf("error %q does not contain %q", err, wantInMessage)
		}
	}
	f("limits: [", "cannot parse limits.yaml")
	f("limits:\n  - limit_type: minute\n    requests: 3\n  - limit_type: fortnight\n    requests: 1\n", `limits.yaml:4: limits[1]: unknown limit_type "fortnight"`)
	f("limits:\n  - requests: 3\n", "limits.yaml:2: limits[0]: limit_type is required")
	f("limits:\n  - limit_type: day\n", "limits.yaml:2: limits[0]: set requests, tokens, usd or several")
	f("limits:\n  - limit_type: month\n    usd: fifty\n", `limits.yaml:3: limits[0]: usd must be an amount of dollars such as 50 or 0.01, got "fifty"`)
	f("limits:\n  - requests: 3\n    limit_type: fortnight\n", `limits.yaml:3: limits[0]: unknown limit_type "fortnight"`)
	f("limits:\n  - limit_type: minute\n    requests: 3\n    per: al\n", `limits.yaml:4: limits[0]: `)
	f("limits:\n  - limit_type: month\n    usd: -1\n", `usd must be an amount of dollars`)
	f("limits:\n  - limit_type: month\n    usd: 0\n", `usd must be between 0.000000001`)
	f("limits:\n  - limit_type: hour\n    usd: 1\n", `limits.yaml:2: limits[0]: a usd budget counts a calendar day, week or month, not a hour`)
	f("limits:\n  - limit_type: month\n    tokens: 1\n", `limits.yaml:2: limits[0]: limit_type month is a calendar window, for usd budgets only`)
	f("limits:\n  - limit_type: day\n    requests: 0\n", "limits.yaml:2: limits[0]: requests must be between 1")
	f("limits:\n  - limit_type: day\n    tokens: -5\n", "tokens must be between 1")
	f("limits:\n  - limit_type: day\n    requests: 1\n  - limit_type: day\n    requests: 2\n", "limits.yaml:4: a day requests rule with the same scope is already defined at limits.yaml:2")
	f("providers:\n  - prefix: llama-\n", "limits.yaml:2: providers[0]: both prefix and provider are required")
	f("limits:\n  - concurrent: 0\n", "limits.yaml:2: limits[0]: concurrent must be between 1 and 100000, got 0")
	f("limits:\n  - concurrent: 2\n    limit_type: minute\n", "limits.yaml:2: limits[0]: concurrent counts the calls in flight, not a window")
	f("limits:\n  - concurrent: 2\n    requests: 30\n", "concurrent counts the calls in flight, not a window")
	f("limits:\n  - concurrent: 2\n  - concurrent: 3\n", "limits.yaml:3: a concurrent concurrent rule with the same scope is already defined at limits.yaml:2")
}

// TestParseFileConcurrent: concurrent: N, with the usual scopes, is a
// concurrency limit beside the window limits.
func TestParseFileConcurrent(t *testing.T) {
	f, err := ParseFile("limits.yaml", []byte(`limits:
  - limit_type: minute
    requests: 30
  - concurrent: 2
  - provider: groq
    model: "llama-*"
    per: all
    concurrent: 10
`))
	if err != nil {
		t.Fatal(err)
	}
	want := []limiter.Rule{
		{Window: limiter.Minute, Unit: limiter.Requests, Limit: 30, Source: "limits.yaml:2"},
		{Window: limiter.InFlight, Unit: limiter.Concurrent, Limit: 2, Source: "limits.yaml:4"},
		{Provider: "groq", Model: "llama-*", Per: limiter.PerAll, Window: limiter.InFlight, Unit: limiter.Concurrent, Limit: 10, Source: "limits.yaml:5"},
	}
	if len(f.Rules) != len(want) {
		t.Fatalf("rules %+v, want %+v", f.Rules, want)
	}
	for i := range want {
		if f.Rules[i] != want[i] {
			t.Fatalf("rule %d = %+v, want %+v", i, f.Rules[i], want[i])
		}
	}
}

func TestParseFile(t *testing.T) {
	cfg, err := ParseFile("limits.yaml", []byte(`
providers:
  - prefix: Llama-
    provider: groq
limits:
  - limit_type: minute        # the seed's defaults
    requests: 30
    tokens: 6000
  - limit_type: day
    requests: 14400
    description: Default
  - user_id: vip
    provider: OpenAI
    model: gpt-4*
    limit_type: minute
    requests: 200
  - limit_type: month
    usd: 50
  - user_id: intern
    limit_type: day
    usd: 0.1
    requests: 100
`))
	if err != nil {
		t.Fatal(err)
	}
	want := []limiter.Rule{
		{Window: limiter.Minute, Unit: limiter.Requests, Limit: 30, Source: "limits.yaml:6"},
		{Window: limiter.Minute, Unit: limiter.Tokens, Limit: 6000, Source: "limits.yaml:6"},
		{Window: limiter.Day, Unit: limiter.Requests, Limit: 14400, Source: "limits.yaml:9"},
		{UserID: "vip", Provider: "openai", Model: "gpt-4*", Window: limiter.Minute, Unit: limiter.Requests, Limit: 200, Source: "limits.yaml:12"},
		{Window: limiter.Month, Unit: limiter.USD, Limit: 50_000_000_000, Source: "limits.yaml:17"},
		{UserID: "intern", Window: limiter.Day, Unit: limiter.USD, Limit: 100_000_000, Source: "limits.yaml:19"},
		{UserID: "intern", Window: limiter.Day, Unit: limiter.Requests, Limit: 100, Source: "limits.yaml:19"},
	}
	if len(cfg.Rules) != len(want) {
		t.Fatalf("rules %+v, want %+v", cfg.Rules, want)
	}
	for i := range want {
		if cfg.Rules[i] != want[i] {
			t.Fatalf("rule %d: %+v, want %+v", i, cfg.Rules[i], want[i])
		}
	}
	if got := provider.NewTable(cfg.Providers).Infer("llama-3.1-8b-instant"); got != "groq" {
		t.Fatalf("llama- prefix from the file infers %q, want groq", got)
	}
	// An empty file is valid: nothing is limited.
	if cfg, err := ParseFile("empty.yaml", nil); err != nil || len(cfg.Rules) != 0 {
		t.Fatalf("empty file: %+v, %v", cfg, err)
	}
}

func TestParseFilePrices(t *testing.T) {
	cfg, err := ParseFile("limits.yaml", []byte(`
prices:
  - model: gpt-4o*            # a negotiated discount
    provider: OpenAI
    input: 2.25
    output: 9
    cached_input: 1.125
  - model: llama-self-hosted
    input: 0
    output: 0
  - model: ft:gpt-4o-mini:acme*
    input: 0.3
    output: 1.2
    cache_write: 0.375
    from: 2026-11-01
`))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Prices) != 3 {
		t.Fatalf("prices %+v", cfg.Prices)
	}
	p := cfg.Prices[0]
	if p.Provider != "openai" || p.Model != "gpt-4o*" || p.Input != 2_250_000_000 || p.Output != 9_000_000_000 ||
		!p.HasCacheRead || p.CacheRead != 1_125_000_000 || p.HasCacheWrite || p.Source != "limits.yaml:3: prices[0]" {
		t.Fatalf("first price %+v", p)
	}
	if p := cfg.Prices[1]; p.Input != 0 || p.Output != 0 || p.HasCacheRead {
		t.Fatalf("free model %+v", p)
	}
	if p := cfg.Prices[2]; !p.From.Equal(time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)) || !p.HasCacheWrite || p.CacheWrite != 375_000_000 {
		t.Fatalf("fine-tune %+v", p)
	}

	// The file's price is the one in force, over the embedded one.
	set := Merge(cfg, nil)
	at := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	m, ok := set.Prices.Lookup("openai", "gpt-4o-2024-08-06", at)
	if !ok || m.Price.Input != 2_250_000_000 || m.Source != "limits.yaml:3: prices[0]" {
		t.Fatalf("gpt-4o priced %+v, %v; want the file's", m, ok)
	}
	if _, ok := set.Prices.Lookup("", "llama-self-hosted", at); !ok {
		t.Fatal("the self-hosted model is unpriced")
	}
	if _, ok := set.Prices.Lookup("openai", "ft:gpt-4o-mini:acme:x", at.AddDate(0, -2, 0)); ok {
		t.Fatal("the fine-tune is priced before its from date")
	}
	// Changing a price changes the digest: replicas pricing differently diverge.
	other, err := ParseFile("limits.yaml", []byte("prices:\n  - model: gpt-4o*\n    input: 2.5\n    output: 9\n"))
	if err != nil {
		t.Fatal(err)
	}
	if Merge(cfg, nil).Digest() == Merge(other, nil).Digest() {
		t.Fatal("two different price overrides give the same digest")
	}

	bad := func(yaml, want string) {
		t.Helper()
		_, err := ParseFile("limits.yaml", []byte(yaml))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("error %v, want %q", err, want)
		}
	}
	bad("prices:\n  - input: 1\n    output: 1\n", "limits.yaml:2: prices[0]: model is required")
	bad("prices:\n  - model: m\n    input: 1\n", "input and output are required")
	bad("prices:\n  - model: m\n    input: cheap\n    output: 1\n", `input must be USD per million tokens such as 2.5, got "cheap"`)
	bad("prices:\n  - model: m\n    input: -1\n    output: 1\n", `input must be USD per million tokens`)
	bad("prices:\n  - model: m\n    input: 1\n    output: 1\n    from: soon\n", `from: want a date (2026-01-01) or an RFC 3339 time, got "soon"`)
	bad("prices:\n  - model: m\n    input: 1\n    output: 1\n    cost: 3\n", `limits.yaml:5: prices[0]: unknown field "cost"`)
}

func TestPriceRows(t *testing.T) {
	ptr := func(s string) *string { return &s }
	from := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	base, err := pricing.Embedded()
	if err != nil {
		t.Fatal(err)
	}
	file, err := ParseFile("limits.yaml", []byte("prices:\n  - model: gpt-4o\n    input: 1\n    output: 1\n"))
	if err != nil {
		t.Fatal(err)
	}
	table, skipped := Prices(base, file, []PriceRow{
		{ID: "1", Provider: "openai", Model: "gpt-4o", Input: "2", Output: "8", CachedInput: ptr("0.5"), EffectiveFrom: &from},
		{ID: "2", Model: "broken", Input: "x", Output: "1"},
	})
	if len(skipped) != 1 || !strings.Contains(skipped[0].Error(), "llm_model_prices id 2: input must be USD") {
		t.Fatalf("skipped %v", skipped)
	}
	// The row beats the file from its date on; the file's price before.
	if m, _ := table.Lookup("openai", "gpt-4o", from); m.Price.Input != 2_000_000_000 || m.Price.CacheRead != 500_000_000 || m.Source != "llm_model_prices id 1" {
		t.Fatalf("after the row's date: %+v", m)
	}
	if m, _ := table.Lookup("openai", "gpt-4o", from.Add(-time.Second)); m.Price.Input != 1_000_000_000 {
		t.Fatalf("before the row's date: %+v", m)
	}
}
