package proxy

import (
	"net/http"
	"strings"
	"time"

	"github.com/llmusage/llmusage/provider"
)

// RateLimitObserver is told the provider's own quota, as every upstream
// answer's headers say it (errors included), and the upstream's 429s. The
// exporter implements it (llm_provider_ratelimit_*).
type RateLimitObserver interface {
	// ObserveProviderRateLimit is called once per resource an answer
	// reports (requests, tokens, input_tokens, output_tokens): limit and
	// remaining are NaN when the answer did not say, reset is zero then.
	// key is KeyFingerprint of the API key the call went out with.
	ObserveProviderRateLimit(provider, model, key, resource string, limit, remaining float64, reset time.Time)
	// ObserveProviderRetryAfter is called for an answer that says when to
	// retry (retry-after-ms, retry-after), with that time.
	ObserveProviderRetryAfter(provider, model, key string, at time.Time)
	// ObserveProviderAnswer is called once per upstream answer; throttled
	// tells an upstream 429.
	ObserveProviderAnswer(provider, model string, throttled bool)
}

// RateLimit is one of the provider's limits as an answer's headers say.
type RateLimit = provider.RateLimit

// dialect is the rate-limit header names an upstream of kind k sends.
func (k Kind) dialect() provider.Dialect {
	if k == Anthropic {
		return provider.DialectAnthropic
	}
	return provider.DialectOpenAI
}

// ParseRateLimits reads the rate-limit headers of an answer of an upstream
// of kind k, received at now (see provider.ParseRateLimits for the names).
func ParseRateLimits(k Kind, h http.Header, now time.Time) []RateLimit {
	return provider.ParseRateLimits(k.dialect(), h, now)
}

// KeyFingerprint names the API key of an outgoing request, from its
// Authorization bearer token or its x-api-key header: see
// provider.KeyFingerprint; "" without a key.
func KeyFingerprint(h http.Header) string {
	key := strings.TrimSpace(h.Get("X-Api-Key"))
	if key == "" {
		auth := strings.TrimSpace(h.Get("Authorization"))
		if len(auth) > 7 && strings.EqualFold(auth[:7], "bearer ") {
			key = auth[7:]
		}
	}
	return provider.KeyFingerprint(key)
}

// observeRateLimits tells the observer the provider's quota of an answer
// of up to a call of model ("" for an unmetered call): resp.Request is the
// request as it went out, with the key the upstream saw.
func (p *Proxy) observeRateLimits(up *Upstream, c *call, resp *http.Response) {
	o := p.opts.RateLimits
	if o == nil {
		return
	}
	model := ""
	if c != nil {
		model = c.model
	}
	key := ""
	if resp.Request != nil {
		key = KeyFingerprint(resp.Request.Header)
	}
	now := time.Now()
	for _, rl := range ParseRateLimits(up.Kind, resp.Header, now) {
		o.ObserveProviderRateLimit(up.Provider, model, key, rl.Resource, rl.Limit, rl.Remaining, rl.Reset)
	}
	if at := provider.ParseRetryAfter(resp.Header, now); !at.IsZero() {
		o.ObserveProviderRetryAfter(up.Provider, model, key, at)
	}
	o.ObserveProviderAnswer(up.Provider, model, resp.StatusCode == http.StatusTooManyRequests)
}
