package rules

import (
	"strings"
	"testing"

	"github.com/llmusage/llmusage/limiter"
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
	f("limit:\n  - limit_type: minute\n", "field limit not found")
	f("limits:\n  - limit_type: minute\n    request: 3\n", "line 3: field request not found")
	f("limits:\n  - limit_type: minute\n    requests: 3\n  - limit_type: fortnight\n    requests: 1\n", `limits.yaml:4: limits[1]: unknown limit_type "fortnight"`)
	f("limits:\n  - requests: 3\n", "limits.yaml:2: limits[0]: limit_type is required")
	f("limits:\n  - limit_type: day\n", "limits.yaml:2: limits[0]: set requests, tokens, usd or several")
	f("limits:\n  - limit_type: month\n    usd: fifty\n", `limits.yaml:2: limits[0]: usd must be an amount of dollars such as 50 or 0.01, got "fifty"`)
	f("limits:\n  - limit_type: month\n    usd: [1]\n", `line 3: want a number, got a list`)
	f("limits:\n  - limit_type: month\n    usd: -1\n", `usd must be an amount of dollars`)
	f("limits:\n  - limit_type: month\n    usd: 0\n", `usd must be between 0.000000001`)
	f("limits:\n  - limit_type: hour\n    usd: 1\n", `limits.yaml:2: limits[0]: a usd budget counts a calendar day, week or month, not a hour`)
	f("limits:\n  - limit_type: month\n    tokens: 1\n", `limits.yaml:2: limits[0]: limit_type month is a calendar window, for usd budgets only`)
	f("limits:\n  - limit_type: day\n    requests: 0\n", "limits.yaml:2: limits[0]: requests must be between 1")
	f("limits:\n  - limit_type: day\n    tokens: -5\n", "tokens must be between 1")
	f("limits:\n  - limit_type: day\n    requests: many\n", "cannot unmarshal")
	f("limits:\n  - limit_type: day\n    requests: 1\n  - limit_type: day\n    requests: 2\n", "limits.yaml:4: a day requests rule with the same scope is already defined at limits.yaml:2")
	f("providers:\n  - prefix: llama-\n", "limits.yaml:2: providers[0]: both prefix and provider are required")
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
