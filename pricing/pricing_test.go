package pricing

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/llmusage/llmusage/provider"
	"github.com/llmusage/llmusage/record"
	"github.com/llmusage/llmusage/usd"
)

// noon is a time after every start_date of the snapshot but one, inside
// DeepSeek's 00:30-16:30 UTC standard-price window.
var noon = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

func loadEmbedded(t testing.TB) *Table {
	t.Helper()
	tb, err := Embedded()
	if err != nil {
		t.Fatalf("cannot load the embedded table: %s", err)
	}
	return tb
}

func amount(t testing.TB, s string) usd.Amount {
	t.Helper()
	if s == "" {
		return 0
	}
	a, err := usd.Parse(s)
	if err != nil {
		t.Fatalf("cannot parse %q: %s", s, err)
	}
	return a
}

func TestEmbeddedSnapshot(t *testing.T) {
	tb := loadEmbedded(t)
	s := tb.Snapshot()
	if s.Version != "0.1.8" || s.Date != "2026-09-23" || s.Source != "genai-prices 0.1.8 (2026-09-23)" {
		t.Fatalf("unexpected snapshot %+v", s)
	}
	again := loadEmbedded(t)
	if again != tb {
		t.Fatalf("Embedded parsed the snapshot twice")
	}
}

func TestProviderNames(t *testing.T) {
	for name := range genaiProviders {
		if provider.Normalize(name) != name {
			t.Fatalf("%q is not a normalised llmusage provider name; Normalize gives %q", name, provider.Normalize(name))
		}
	}
	if _, ok := genaiProviders[record.UnknownProvider]; ok {
		t.Fatalf("the unknown provider must have no prices")
	}
}

func TestLookupEmbedded(t *testing.T) {
	tb := loadEmbedded(t)
	f := func(prov, model, modelID, owner, input, cacheRead, cacheWrite, output string) {
		t.Helper()
		m, ok := tb.Lookup(prov, model, noon)
		if !ok {
			t.Fatalf("Lookup(%q, %q) found no price", prov, model)
		}
		if m.ModelID != modelID || m.Provider != owner || m.Source != "genai-prices 0.1.8 (2026-09-23)" {
			t.Fatalf("Lookup(%q, %q): unexpected match %s/%s from %q; want %s/%s", prov, model, m.Provider, m.ModelID, m.Source, owner, modelID)
		}
		p := m.Price
		if p.Input != amount(t, input) || p.Output != amount(t, output) {
			t.Fatalf("Lookup(%q, %q): unexpected input/output %s/%s; want %s/%s", prov, model, p.Input, p.Output, input, output)
		}
		if p.HasCacheRead != (cacheRead != "") || p.CacheRead != amount(t, cacheRead) {
			t.Fatalf("Lookup(%q, %q): unexpected cache read %s (%v); want %q", prov, model, p.CacheRead, p.HasCacheRead, cacheRead)
		}
		if p.HasCacheWrite != (cacheWrite != "") || p.CacheWrite != amount(t, cacheWrite) {
			t.Fatalf("Lookup(%q, %q): unexpected cache write %s (%v); want %q", prov, model, p.CacheWrite, p.HasCacheWrite, cacheWrite)
		}
	}

	// The seed's three models.
	// prices/providers/groq.yml, id llama-3.1-70b-versatile: input_mtok 0.59, output_mtok 0.79
	f("groq", "llama-3.1-70b-versatile", "llama-3.1-70b-versatile", "groq", "0.59", "", "", "0.79")
	// prices/providers/openai.yml, id gpt-4: input_mtok 30, output_mtok 60
	f("openai", "gpt-4", "gpt-4", "openai", "30", "", "", "60")
	// prices/providers/anthropic.yml, id claude-3-opus-latest, match starts_with claude-3-opus:
	// input_mtok 15, cache_read_mtok 1.5, cache_write_mtok 18.75, output_mtok 75
	f("anthropic", "claude-3-opus", "claude-3-opus-latest", "anthropic", "15", "1.5", "18.75", "75")
	f("anthropic", "claude-3-opus-20240229", "claude-3-opus-latest", "anthropic", "15", "1.5", "18.75", "75")

	// Dated snapshots.
	// openai.yml, id gpt-4o, match equals gpt-4o-2024-08-06: input_mtok 2.5, cache_read_mtok 1.25, output_mtok 10
	f("openai", "gpt-4o-2024-08-06", "gpt-4o", "openai", "2.5", "1.25", "", "10")
	// anthropic.yml, id claude-3-5-sonnet, match starts_with claude-3-5-sonnet:
	// input_mtok 3, cache_read_mtok 0.3, cache_write_mtok 3.75, output_mtok 15
	f("anthropic", "claude-3-5-sonnet-20241022", "claude-3-5-sonnet", "anthropic", "3", "0.3", "3.75", "15")
	// openai.yml, id gpt-4o-mini: input_mtok 0.15, cache_read_mtok 0.075, output_mtok 0.6
	f("openai", "gpt-4o-mini-2024-07-18", "gpt-4o-mini", "openai", "0.15", "0.075", "", "0.6")

	// The source lower-cases and trims the model name; the provider is normalised.
	f("OpenAI", "  GPT-4 ", "gpt-4", "openai", "30", "", "", "60")

	// google.yml, id gemini-2.0-flash, match ends_with gemini-2.0-flash: input_mtok 0.1, cache_read_mtok 0.025, output_mtok 0.4
	f("gcp.gemini", "gemini-2.0-flash", "gemini-2.0-flash", "google", "0.1", "0.025", "", "0.4")
	f("gemini", "models/gemini-2.0-flash", "gemini-2.0-flash", "google", "0.1", "0.025", "", "0.4")
	f("gcp.vertex_ai", "gemini-2.0-flash-001", "gemini-2.0-flash", "google", "0.1", "0.025", "", "0.4")
	// google.yml, id claude-3-5-sonnet (Claude on Vertex), match contains claude-3-5-sonnet
	f("gcp.vertex_ai", "claude-3-5-sonnet@20240620", "claude-3-5-sonnet", "google", "3", "0.3", "3.75", "15")
	// mistral.yml, id mistral-large, match equals mistral-large-latest: input_mtok 2, output_mtok 6
	f("mistral_ai", "mistral-large-latest", "mistral-large", "mistral", "2", "", "", "6")
	// deepseek.yml, id deepseek-chat: standard price (time_of_date 00:30-16:30Z): input 0.27, cache_read 0.07, output 1.1
	f("deepseek", "deepseek-chat", "deepseek-chat", "deepseek", "0.27", "0.07", "", "1.1")
	// x_ai.yml, id grok-3: input_mtok 3, cache_read_mtok 0.75, output_mtok 15
	f("x_ai", "grok-3", "grok-3", "x-ai", "3", "0.75", "", "15")
	f("xai", "grok-3-latest", "grok-3", "x-ai", "3", "0.75", "", "15")
	// cohere.yml, id command-r-plus, match equals command-r-plus-08-2024: input_mtok 2.5, output_mtok 10
	f("cohere", "command-r-plus-08-2024", "command-r-plus", "cohere", "2.5", "", "", "10")
	// aws.yml, id regional.anthropic.claude-3-5-sonnet-20241022-v2:0, match contains claude-3-5-sonnet-20241022:
	// input_mtok 3, cache_read_mtok 0.3, cache_write_mtok 3.75, output_mtok 15
	f("aws.bedrock", "us.anthropic.claude-3-5-sonnet-20241022-v2:0", "regional.anthropic.claude-3-5-sonnet-20241022-v2:0", "aws", "3", "0.3", "3.75", "15")
	// azure.yml, id phi-4: input_mtok 0.07, output_mtok 0.14
	f("azure.ai.openai", "phi-4", "phi-4", "azure", "0.07", "", "", "0.14")
	// azure.yml has no gpt-4o: fallback_model_providers [openai, ...] gives openai.yml's gpt-4o
	f("azure", "gpt-4o", "gpt-4o", "openai", "2.5", "1.25", "", "10")
	// ... and moonshotai.yml's kimi-k2 (the fifth fallback): input_mtok 0.57, output_mtok 2.3
	f("azure.ai.openai", "kimi-k2", "kimi-k2", "moonshotai", "0.57", "", "", "2.3")
	// perplexity.yml, id sonar-pro: input_mtok 3, output_mtok 15 (and requests_kcount 14, below)
	f("perplexity", "sonar-pro", "sonar-pro", "perplexity", "3", "", "", "15")
	// together.yml, id meta-llama/Llama-3.3-70B-Instruct-Turbo: input_mtok 0.88, output_mtok 0.88
	f("together", "meta-llama/llama-3.3-70b-instruct-turbo", "meta-llama/Llama-3.3-70B-Instruct-Turbo", "together", "0.88", "", "", "0.88")
	// fireworks.yml, id gpt-oss-120b: input_mtok 0.15, cache_read_mtok 0.014, output_mtok 0.6
	f("fireworks", "accounts/fireworks/models/gpt-oss-120b", "gpt-oss-120b", "fireworks", "0.15", "0.014", "", "0.6")
	// openrouter.yml, id openai/gpt-4o: input_mtok 2.5, output_mtok 10
	f("openrouter", "openai/gpt-4o-2024-08-06", "openai/gpt-4o", "openrouter", "2.5", "", "", "10")

	// A compact date suffix is retried as a dashed one, as the source does:
	// openai.yml, id gpt-5.6-luna, match regex ^gpt-5\.6-luna-\d{4}-\d{2}-\d{2}$
	m, ok := tb.Lookup("openai", "gpt-5.6-luna-20260301", noon)
	if !ok || m.ModelID != "gpt-5.6-luna" {
		t.Fatalf("unexpected match of a compact date: %+v %v", m, ok)
	}
	// The negative lookahead of google.yml: a -tts model is not gemini-2.5-pro.
	m, ok = tb.Lookup("gcp.gemini", "gemini-2.5-pro-preview-tts", noon)
	if !ok || m.ModelID != "gemini-2.5-pro-tts" {
		t.Fatalf("unexpected match of a tts model: %+v %v", m, ok)
	}
	m, ok = tb.Lookup("gcp.gemini", "gemini-2.5-pro-preview-05-06", noon)
	if !ok || m.ModelID != "gemini-2.5-pro" {
		t.Fatalf("unexpected match of gemini-2.5-pro: %+v %v", m, ok)
	}
}

func TestLookupUnpriced(t *testing.T) {
	tb := loadEmbedded(t)
	f := func(prov, model string) {
		t.Helper()
		if m, ok := tb.Lookup(prov, model, noon); ok {
			t.Fatalf("Lookup(%q, %q) priced the call: %+v", prov, model, m)
		}
		if c, ok := tb.Cost(prov, model, noon, Usage{InputTokens: 10, OutputTokens: 10}); ok || c != 0 {
			t.Fatalf("Cost(%q, %q) priced the call: %s", prov, model, c)
		}
	}
	// no guess for the unknown provider, nor for one without a table
	f(record.UnknownProvider, "gpt-4")
	f("", "gpt-4")
	f("ollama", "llama3")
	f("openai", "no-such-model")
	// a model of another provider is not priced by this one
	f("openai", "claude-3-opus")
	// models whose price has none of the keys pricing reads
	f("groq", "whisper-large-v3")
	f("mistral_ai", "mistral-ocr-latest")
}

func TestPriceCost(t *testing.T) {
	f := func(p Price, u Usage, want string) {
		t.Helper()
		got := p.Cost(u)
		if got != amount(t, want) {
			t.Fatalf("unexpected cost of %+v at %+v; got %s; want %s", u, p, got, want)
		}
	}
	// exact: $0.01875/MTok is 18_750_000 nano-dollars per million tokens
	if a := amount(t, "0.01875"); a != 18_750_000 {
		t.Fatalf("unexpected amount %d", a)
	}
	// 1 token at $0.0375/MTok is 37.5 nano-dollars: half up to 38
	f(Price{Input: amount(t, "0.0375")}, Usage{InputTokens: 1}, "0.000000038")
	f(Price{Input: 37_499_999}, Usage{InputTokens: 1}, "0.000000037")
	// rounded once for the whole call: 0.4 + 0.4 nano rounds to 1, not 0 + 0
	f(Price{Input: 400_000, Output: 400_000}, Usage{InputTokens: 1, OutputTokens: 1}, "0.000000001")
	f(Price{}, Usage{InputTokens: 1000, OutputTokens: 1000}, "0")

	// OpenAI: cached prompt tokens are part of prompt_tokens.
	// gpt-4o: 600 x 2.5 + 400 x 1.25 + 200 x 10 = 4000 $/MTok-tokens
	gpt4o := Price{Input: amount(t, "2.5"), CacheRead: amount(t, "1.25"), HasCacheRead: true, Output: amount(t, "10")}
	f(gpt4o, Usage{InputTokens: 1000, CacheReadTokens: 400, OutputTokens: 200}, "0.004")
	// no cache write price: cache writes cost the input price
	f(gpt4o, Usage{InputTokens: 1000, CacheWriteTokens: 1000}, "0.0025")

	// Anthropic: cache reads and writes, normalised into InputTokens.
	// claude-3-opus: 2000 x 15 + 6000 x 1.5 + 2000 x 18.75 + 500 x 75 = 114000
	opus := Price{Input: amount(t, "15"), CacheRead: amount(t, "1.5"), CacheWrite: amount(t, "18.75"), Output: amount(t, "75"), HasCacheRead: true, HasCacheWrite: true}
	f(opus, Usage{InputTokens: 10_000, CacheReadTokens: 6000, CacheWriteTokens: 2000, OutputTokens: 500}, "0.114")
	// no cache read price: cache reads cost the input price
	f(Price{Input: amount(t, "15"), Output: amount(t, "75")}, Usage{InputTokens: 10_000, CacheReadTokens: 6000, OutputTokens: 500}, "0.1875")

	// Reasoning is in OutputTokens and billed as output: o3 at 2 / 8.
	f(Price{Input: amount(t, "2"), Output: amount(t, "8")}, Usage{InputTokens: 100, OutputTokens: 5000}, "0.0402")

	// A per-call fee: sonar-pro, requests_kcount 14: 100 x 3 + 50 x 15 + $0.014
	f(Price{Input: amount(t, "3"), Output: amount(t, "15"), PerThousandCalls: amount(t, "14")}, Usage{InputTokens: 100, OutputTokens: 50}, "0.01505")

	// Inconsistent counts: uncached input is never negative, negatives count as zero.
	f(opus, Usage{InputTokens: 100, CacheReadTokens: 1000}, "0.0015")
	f(opus, Usage{InputTokens: -5, OutputTokens: -5}, "0")

	// 128-bit intermediate: 1e12 tokens x 75e9 nano-dollars overflows 64 bits; the cost is $75e6 exactly.
	f(Price{Output: amount(t, "75")}, Usage{OutputTokens: 1e12}, "75000000")
	// beyond an int64, the cost saturates
	if got := (Price{Output: usd.Max}).Cost(Usage{OutputTokens: math.MaxInt64}); got != math.MaxInt64 {
		t.Fatalf("unexpected saturated cost %d", got)
	}
	if got := (Price{Input: math.MaxInt64, CacheRead: math.MaxInt64, HasCacheRead: true, CacheWrite: math.MaxInt64, HasCacheWrite: true, Output: math.MaxInt64, PerThousandCalls: math.MaxInt64}).Cost(Usage{InputTokens: math.MaxInt64, CacheReadTokens: math.MaxInt64 / 3, CacheWriteTokens: math.MaxInt64 / 3, OutputTokens: math.MaxInt64}); got != math.MaxInt64 {
		t.Fatalf("unexpected cost on a 128-bit overflow %d", got)
	}
}

func TestTableCost(t *testing.T) {
	tb := loadEmbedded(t)
	f := func(prov, model string, at time.Time, u Usage, want string) {
		t.Helper()
		got, ok := tb.Cost(prov, model, at, u)
		if !ok || got != amount(t, want) {
			t.Fatalf("unexpected Cost(%q, %q, %s, %+v); got %s, %v; want %s", prov, model, at, u, got, ok, want)
		}
	}
	// the seed's models: 1000 in, 100 out
	f("groq", "llama-3.1-70b-versatile", noon, Usage{InputTokens: 1000, OutputTokens: 100}, "0.000669")
	f("openai", "gpt-4", noon, Usage{InputTokens: 1000, OutputTokens: 100}, "0.036")
	f("anthropic", "claude-3-opus", noon, Usage{InputTokens: 1000, OutputTokens: 100}, "0.0225")
	// perplexity.yml, sonar: input 1, output 1, requests_kcount 12
	f("perplexity", "sonar", noon, Usage{InputTokens: 1000, OutputTokens: 100}, "0.0131")

	// Long context: anthropic.yml claude-sonnet-4-5, input_mtok {base: 3, tiers: [{start: 200000, price: 6}]},
	// output_mtok {base: 15, tiers: [{start: 200000, price: 22.5}]}. The tier prices the whole call
	// when its input tokens exceed the start (the source's `input > start`).
	f("anthropic", "claude-sonnet-4-5-20250929", noon, Usage{InputTokens: 200_000, OutputTokens: 1000}, "0.615")
	f("anthropic", "claude-sonnet-4-5-20250929", noon, Usage{InputTokens: 200_001, OutputTokens: 1000}, "1.222506")
	// the tier counts cache reads in the input: 200_001 with 150_000 read at 0.6, 50_001 at 6
	f("anthropic", "claude-sonnet-4-5", noon, Usage{InputTokens: 200_001, CacheReadTokens: 150_000}, "0.390006")
	// google.yml gemini-1.5-pro: input {base 1.25, tiers [{start 128000, price 2.5}]}, output {base 5, tiers [{128000, 10}]}
	f("gcp.gemini", "gemini-1.5-pro", noon, Usage{InputTokens: 128_000, OutputTokens: 1000}, "0.165")
	f("gcp.gemini", "gemini-1.5-pro", noon, Usage{InputTokens: 128_001, OutputTokens: 1000}, "0.3300025")

	// Historic prices: openai.yml o3 is input 10 / output 40, then from 2025-06-10 input 2 / output 8.
	u := Usage{InputTokens: 1_000_000, OutputTokens: 1_000_000}
	f("openai", "o3", time.Date(2025, 6, 9, 23, 59, 59, 0, time.UTC), u, "50")
	f("openai", "o3-2025-04-16", time.Date(2025, 6, 10, 0, 0, 0, 0, time.UTC), u, "10")
	f("openai", "o3", time.Date(2025, 6, 10, 1, 0, 0, 0, time.FixedZone("CEST", 2*3600)), u, "50")

	// Time of day: deepseek.yml deepseek-chat is 0.135 / 0.55 off-peak, 0.27 / 1.1 from 00:30 to 16:30 UTC.
	day := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	f("deepseek", "deepseek-chat", day.Add(30*time.Minute-time.Millisecond), u, "0.685")
	f("deepseek", "deepseek-chat", day.Add(30*time.Minute), u, "1.37")
	f("deepseek", "deepseek-chat", day.Add(16*time.Hour+30*time.Minute-time.Millisecond), u, "1.37")
	f("deepseek", "deepseek-chat", day.Add(16*time.Hour+30*time.Minute), u, "0.685")
	// deepseek-v4-flash: 0.14 / 0.28, from 2026-08-17 0.22 / 0.66, and 0.44 / 1.32 in 01:00-04:00 and
	// 06:00-10:00 UTC; the windows come last in the list, so the source prefers them at any date.
	f("deepseek", "deepseek-v4-flash", time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC), u, "0.42")
	f("deepseek", "deepseek-v4-flash", time.Date(2026, 9, 1, 12, 0, 0, 0, time.UTC), u, "0.88")
	f("deepseek", "deepseek-v4-flash", time.Date(2026, 9, 1, 2, 0, 0, 0, time.UTC), u, "1.76")
	f("deepseek", "deepseek-v4-flash", time.Date(2026, 1, 1, 7, 0, 0, 0, time.UTC), u, "1.76")
}

func TestOverrides(t *testing.T) {
	base := loadEmbedded(t)
	from := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	tb, err := base.With([]Override{
		{Provider: "openai", Model: "GPT-4o*", Input: amount(t, "1"), Output: amount(t, "2"), Source: "limits.yaml:3"},
		{Provider: "openai", Model: "gpt-4o-mini", Input: amount(t, "9"), Output: amount(t, "9"), Source: "limits.yaml:4"},
		{Provider: "anthropic", Model: "claude-3-opus", Input: amount(t, "5"), Output: amount(t, "6"), From: from, Source: "llm_model_prices id 3"},
		{Provider: "Azure", Model: "gpt-4", Input: amount(t, "7"), Output: amount(t, "8"), CacheRead: amount(t, "0.5"), HasCacheRead: true},
		{Provider: "", Model: "llama3*", Source: "self-hosted"},
	})
	if err != nil {
		t.Fatalf("cannot add overrides: %s", err)
	}
	f := func(tb *Table, prov, model string, at time.Time, wantSource, wantModelID, wantInput string) {
		t.Helper()
		m, ok := tb.Lookup(prov, model, at)
		if !ok {
			t.Fatalf("Lookup(%q, %q) found no price", prov, model)
		}
		if m.Source != wantSource || m.ModelID != wantModelID || m.Price.Input != amount(t, wantInput) {
			t.Fatalf("Lookup(%q, %q, %s): unexpected %+v; want %s from %q at %s", prov, model, at, m, wantModelID, wantSource, wantInput)
		}
	}
	src := base.Snapshot().Source
	// overrides win, and the first match wins
	f(tb, "openai", "gpt-4o-2024-08-06", noon, "limits.yaml:3", "GPT-4o*", "1")
	f(tb, "openai", "gpt-4o-mini", noon, "limits.yaml:3", "GPT-4o*", "1")
	// the provider must match; a miss falls through to the embedded data
	if m, ok := tb.Lookup("groq", "gpt-4o", noon); ok && m.Source == "limits.yaml:3" {
		t.Fatalf("an openai override priced a groq call: %+v", m)
	}
	f(tb, "openai", "gpt-4", noon, src, "gpt-4", "30")
	// From: only records at or after it
	f(tb, "anthropic", "claude-3-opus", from.Add(-time.Nanosecond), src, "claude-3-opus-latest", "15")
	f(tb, "anthropic", "claude-3-opus", from, "llm_model_prices id 3", "claude-3-opus", "5")
	// the override's provider is normalised; an empty source is named
	f(tb, "azure.ai.openai", "gpt-4", noon, "price override 4", "gpt-4", "7")
	// a zero price (self-hosted), for any provider, the unknown one included
	f(tb, record.UnknownProvider, "llama3.1:70b", noon, "self-hosted", "llama3*", "0")
	if c, ok := tb.Cost("ollama", "LLAMA3", noon, Usage{InputTokens: 1e6, OutputTokens: 1e6}); !ok || c != 0 {
		t.Fatalf("unexpected self-hosted cost %s %v", c, ok)
	}
	// the base table is unchanged
	f(base, "openai", "gpt-4o", noon, src, "gpt-4o", "2.5")
	if _, ok := base.Lookup(record.UnknownProvider, "llama3", noon); ok {
		t.Fatalf("With changed the table it was called on")
	}
	// layering: the newer overrides come first, then the older ones
	tb2, err := tb.With([]Override{{Provider: "openai", Model: "gpt-4o", Input: amount(t, "3"), Source: "new"}})
	if err != nil {
		t.Fatalf("cannot add overrides: %s", err)
	}
	f(tb2, "openai", "gpt-4o", noon, "new", "gpt-4o", "3")
	f(tb2, "openai", "gpt-4o-mini", noon, "limits.yaml:3", "GPT-4o*", "1")

	// Models lists the overrides first, then the embedded models.
	ms := tb2.Models()
	if len(ms) != 6+len(base.Models()) || ms[0].Source != "new" || ms[1].Source != "limits.yaml:3" || ms[6].Source != src {
		t.Fatalf("unexpected listing of %d models, starting %+v", len(ms), ms[:2])
	}
}

func TestOverrideValidate(t *testing.T) {
	f := func(o Override, wantErr string) {
		t.Helper()
		err := o.Validate()
		if wantErr == "" {
			if err != nil {
				t.Fatalf("unexpected error for %+v: %s", o, err)
			}
			return
		}
		if err == nil || !strings.HasPrefix(err.Error(), "cannot ") || !strings.Contains(err.Error(), wantErr) {
			t.Fatalf("unexpected error for %+v: %v; want %q", o, err, wantErr)
		}
		if _, err := loadEmbedded(t).With([]Override{{}, o}); err == nil || !strings.Contains(err.Error(), "override 2") {
			t.Fatalf("With accepted a bad override: %v", err)
		}
	}
	f(Override{}, "")
	f(Override{Model: "gpt-4*", Input: 1, Output: 2, CacheRead: 3, HasCacheRead: true}, "")
	f(Override{Input: -1}, "input price")
	f(Override{Output: usd.Max + 1}, "output price")
	f(Override{CacheRead: 1}, "without HasCacheRead")
	f(Override{CacheWrite: 1}, "without HasCacheWrite")
	f(Override{CacheWrite: -1, HasCacheWrite: true}, "cache write price")
}

func TestModels(t *testing.T) {
	tb := loadEmbedded(t)
	ms := tb.Models()
	byProvider := make(map[string]int)
	var gpt4 *ModelInfo
	for i, m := range ms {
		byProvider[m.Provider]++
		if m.Provider == "openai" && m.ModelID == "gpt-4" {
			gpt4 = &ms[i]
		}
	}
	for name := range genaiProviders {
		if byProvider[name] == 0 {
			t.Fatalf("no models listed for %s", name)
		}
	}
	if gpt4 == nil || gpt4.Price.Input != amount(t, "30") || gpt4.ContextWindow != 8192 || gpt4.Source != tb.Snapshot().Source {
		t.Fatalf("unexpected listing of gpt-4: %+v", gpt4)
	}
	ms[0].ModelID = "changed"
	if tb.Models()[0].ModelID == "changed" {
		t.Fatalf("Models returned the table's own slice")
	}
}

func TestExpandDates(t *testing.T) {
	f := func(s, want string) {
		t.Helper()
		if got := expandDates(s); got != want {
			t.Fatalf("unexpected expandDates(%q); got %q; want %q", s, got, want)
		}
	}
	f("claude-3-opus-20240229", "claude-3-opus-2024-02-29")
	f("anthropic.claude-3-5-sonnet-20241022-v2:0", "anthropic.claude-3-5-sonnet-2024-10-22-v2:0")
	f("x-20240229:1", "x-2024-02-29:1")
	f("a-20240101-20250202", "a-2024-01-01-2025-02-02")
	// not a date, not 20xx, not at a boundary, not a real day
	f("gpt-4-0613", "gpt-4-0613")
	f("m-19991231", "m-19991231")
	f("m-202401011", "m-202401011")
	f("m-20240230", "m-20240230")
	f("m-20241301", "m-20241301")
	f("m-20250229", "m-20250229")
}

func TestTimeOfDayWrap(t *testing.T) {
	start, err := parseTimeOfDay("22:00:00Z")
	if err != nil {
		t.Fatal(err)
	}
	end, err := parseTimeOfDay("08:00:00+02:00") // 06:00 UTC
	if err != nil {
		t.Fatal(err)
	}
	m := &model{prices: []condPrice{{price: Price{Input: 1}}, {kind: timeOfDay, todStart: start, todEnd: end, price: Price{Input: 2}}}}
	f := func(h, min int, want usd.Amount) {
		t.Helper()
		at := time.Date(2026, 1, 1, h, min, 0, 0, time.UTC)
		if got := m.priceAt(at, false).price.Input; got != want {
			t.Fatalf("unexpected price at %s; got %d; want %d", at, got, want)
		}
	}
	f(21, 59, 1)
	f(22, 0, 2)
	f(3, 0, 2)
	f(5, 59, 2)
	f(6, 0, 1)
	if _, err := parseTimeOfDay("24:00:00Z"); err == nil {
		t.Fatalf("accepted hour 24")
	}
}

func TestParseSnapshotFailure(t *testing.T) {
	f := func(models, wantErr string) {
		t.Helper()
		b := `{"version":"0.1.8","date":"2026-09-23","providers":[{"id":"openai","models":[` + models + `]}]}`
		_, err := parseSnapshot(b)
		if err == nil || !strings.HasPrefix(err.Error(), "cannot ") || !strings.Contains(err.Error(), wantErr) {
			t.Fatalf("unexpected error for %s: %v; want %q", models, err, wantErr)
		}
	}
	f(`{"id":"a","match":{"regex":"(?<=x)a"},"prices":{}}`, "cannot compile regex")
	f(`{"id":"a","match":{"regex":"^(?!x)a|b"},"prices":{}}`, "cannot translate regex")
	f(`{"id":"a","match":{"equals":"a","contains":"b"},"prices":{}}`, "2 operators")
	f(`{"id":"a","match":{},"prices":{}}`, "0 operators")
	f(`{"id":"a","match":{"equals":"a"},"prices":{"input_mtok":-1}}`, "negative")
	f(`{"id":"a","match":{"equals":"a"},"prices":{"input_mtok":{"base":1,"tiers":[{"start":1.5,"price":2}]}}}`, "tier start")
	f(`{"id":"a","match":{"equals":"a"},"prices":[]}`, "empty list")
	f(`{"id":"a","match":{"equals":"a"},"prices":[{"constraint":{"type":"weekday"},"prices":{}}]}`, "constraint type")
	f(`{"id":"a","match":{"equals":"a"},"prices":[{"constraint":{"type":"start_date","start_date":"2026-13-01"},"prices":{}}]}`, "start_date")
	// every llmusage provider needs its genai-prices provider
	f(`{"id":"a","match":{"equals":"a"},"prices":{}}`, "cannot find genai-prices provider")
}

func TestTierMerge(t *testing.T) {
	// Keys tiered at different starts merge into tiers at every start.
	b := []byte(`{"id":"m","match":{"equals":"m"},"prices":{"input_mtok":{"base":1,"tiers":[{"start":200,"price":3},{"start":100,"price":2}]},"output_mtok":{"base":10,"tiers":[{"start":150,"price":20}]}}}`)
	var mj modelJSON
	if err := unmarshal(b, &mj); err != nil {
		t.Fatal(err)
	}
	m, err := parseModel(mj)
	if err != nil {
		t.Fatal(err)
	}
	p := m.prices[0].price
	f := func(input int64, want string) {
		t.Helper()
		got := p.Cost(Usage{InputTokens: input, OutputTokens: 1_000_000})
		if got != amount(t, want) {
			t.Fatalf("unexpected cost at %d input tokens; got %s; want %s", input, got, want)
		}
	}
	f(100, "10.0001")   // base: 100 x 1 + 1e6 x 10
	f(101, "10.000202") // input tier 2 from 101
	f(151, "20.000302") // output tier 20 from 151
	f(201, "20.000603") // input tier 3 from 201
}

func BenchmarkCost(b *testing.B) {
	tb := loadEmbedded(b)
	u := Usage{InputTokens: 1200, CacheReadTokens: 1024, OutputTokens: 300}
	for _, c := range []struct{ provider, model string }{
		{"openai", "gpt-4o-mini"},                   // an equals name: the exact index
		{"anthropic", "claude-3-5-sonnet-20241022"}, // a starts_with rule: a scan
		{"openrouter", "meta-llama/llama-3.1-8b-instruct"},
		{"azure.ai.openai", "gpt-4o"}, // a fallback provider's model
	} {
		b.Run(c.provider+"/"+c.model, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, ok := tb.Cost(c.provider, c.model, noon, u); !ok {
					b.Fatalf("no price")
				}
			}
		})
	}
}
