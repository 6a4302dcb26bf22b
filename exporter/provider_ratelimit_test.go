package exporter

import (
	"math"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/llmusage/llmusage/internal/clock"
)

// TestProviderRateLimits: the latest value per provider, model, resource
// and key; a value an answer leaves out is kept; reset counts down from
// the scrape; the throttled counter starts at 0; idle series expire, with
// their pair or by their own TTL; keys past the cap share OverflowKey.
func TestProviderRateLimits(t *testing.T) {
	clk := clock.NewManual(testNow)
	e := New(Options{Clock: clk, UserTTL: time.Hour, MaxModels: 1})
	e.ObserveProviderRateLimit("openai", "gpt-4o", "0a1b2c3d", "requests", 60, 59, testNow.Add(time.Second))
	e.ObserveProviderRateLimit("openai", "gpt-4o", "0a1b2c3d", "tokens", 150000, 149984, testNow.Add(6*time.Minute))
	e.ObserveProviderAnswer("openai", "gpt-4o", false)
	clk.Advance(30 * time.Second)
	e.ObserveProviderRateLimit("openai", "gpt-4o", "0a1b2c3d", "tokens", math.NaN(), 0, time.Time{})
	e.ObserveProviderAnswer("openai", "gpt-4o", true)
	e.ObserveProviderRetryAfter("openai", "gpt-4o", "0a1b2c3d", testNow.Add(45*time.Second))
	e.ObserveProviderRetryAfter("openai", "gpt-4o", "", testNow.Add(10*time.Second))
	// Past the model cap: counted under the provider's overflow pair.
	e.ObserveProviderRateLimit("openai", "gpt-4o-mini", "0a1b2c3d", "requests", 10, 9, time.Time{})
	want := `# HELP llm_provider_ratelimit_limit The provider's own rate limit, as its latest answer said (through the proxy, or a record's provider_ratelimit), by provider, model (as sent upstream), resource (requests, tokens, input_tokens, output_tokens) and key (a fingerprint of the API key, never the key).
# TYPE llm_provider_ratelimit_limit gauge
llm_provider_ratelimit_limit{key="0a1b2c3d",model="__other__",provider="openai",resource="requests"} 10
llm_provider_ratelimit_limit{key="0a1b2c3d",model="gpt-4o",provider="openai",resource="requests"} 60
llm_provider_ratelimit_limit{key="0a1b2c3d",model="gpt-4o",provider="openai",resource="tokens"} 150000
# HELP llm_provider_ratelimit_remaining What is left of the provider's own rate limit, as its latest answer said, by provider, model, resource and key.
# TYPE llm_provider_ratelimit_remaining gauge
llm_provider_ratelimit_remaining{key="0a1b2c3d",model="__other__",provider="openai",resource="requests"} 9
llm_provider_ratelimit_remaining{key="0a1b2c3d",model="gpt-4o",provider="openai",resource="requests"} 59
llm_provider_ratelimit_remaining{key="0a1b2c3d",model="gpt-4o",provider="openai",resource="tokens"} 0
# HELP llm_provider_ratelimit_reset_seconds Seconds until the provider's own rate limit is whole again, from its latest answer's reset header (0 once past), by provider, model, resource and key.
# TYPE llm_provider_ratelimit_reset_seconds gauge
llm_provider_ratelimit_reset_seconds{key="0a1b2c3d",model="gpt-4o",provider="openai",resource="requests"} 0
llm_provider_ratelimit_reset_seconds{key="0a1b2c3d",model="gpt-4o",provider="openai",resource="tokens"} 330
# HELP llm_provider_retry_after_seconds Seconds until the provider's latest retry-after (retry-after-ms, retry-after) says to retry, counted down at scrape (0 once past), by provider, model and key.
# TYPE llm_provider_retry_after_seconds gauge
llm_provider_retry_after_seconds{key="",model="gpt-4o",provider="openai"} 0
llm_provider_retry_after_seconds{key="0a1b2c3d",model="gpt-4o",provider="openai"} 15
# HELP llm_provider_throttled_total Upstream answers through the proxy that were the provider's own 429 (not the sidecar's), by provider and model.
# TYPE llm_provider_throttled_total counter
llm_provider_throttled_total{model="gpt-4o",provider="openai"} 1
`
	names := []string{"llm_provider_ratelimit_limit", "llm_provider_ratelimit_remaining", "llm_provider_ratelimit_reset_seconds", "llm_provider_retry_after_seconds", "llm_provider_throttled_total"}
	if err := testutil.GatherAndCompare(e.Registry(), strings.NewReader(want), names...); err != nil {
		t.Fatal(err)
	}
	if problems, err := testutil.GatherAndLint(e.Registry(), names...); err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %v", problems, err)
	}

	// The requests series of gpt-4o idle for the TTL go; the pair is kept
	// alive by a later answer, and so is its tokens series.
	clk.Advance(40 * time.Minute)
	e.ObserveProviderRateLimit("openai", "gpt-4o", "0a1b2c3d", "tokens", 150000, 150000, time.Time{})
	e.ObserveProviderAnswer("openai", "gpt-4o", false)
	clk.Advance(30 * time.Minute)
	e.Sweep()
	if n := testutil.CollectAndCount(providerLimitsCollector{e.providerLimits, e}, "llm_provider_ratelimit_limit"); n != 1 {
		t.Fatalf("%d limit series after the sweep, want gpt-4o's tokens only", n)
	}
	clk.Advance(2 * time.Hour)
	e.Sweep()
	if n := testutil.CollectAndCount(providerLimitsCollector{e.providerLimits, e}); n != 0 {
		t.Fatalf("%d series after everything went idle, want 0", n)
	}

	// Keys past the cap.
	e.providerLimits.maxKeys = 2
	for i := range 3 {
		e.ObserveProviderRateLimit("groq", "gpt-4o", "k"+strconv.Itoa(i), "requests", 1, 1, time.Time{})
	}
	if n := testutil.CollectAndCount(providerLimitsCollector{e.providerLimits, e}, "llm_provider_ratelimit_limit"); n != 3 {
		t.Fatalf("%d series, want 2 keys and %s", n, OverflowKey)
	}
	if !strings.Contains(scrape(t, e), `key="`+OverflowKey+`"`) {
		t.Fatal("no overflow key")
	}
}
