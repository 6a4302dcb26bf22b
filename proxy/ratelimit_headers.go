package proxy

import (
	"crypto/sha256"
	"encoding/hex"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
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
	// ObserveProviderAnswer is called once per upstream answer; throttled
	// tells an upstream 429.
	ObserveProviderAnswer(provider, model string, throttled bool)
}

// RateLimit is one of the provider's limits as an answer's headers say.
type RateLimit struct {
	// Resource is what is limited: requests, tokens, input_tokens or
	// output_tokens.
	Resource string
	// Limit and Remaining are NaN when not sent.
	Limit, Remaining float64
	// Reset is when the limit is whole again; zero when not sent.
	Reset time.Time
}

// The header names, each from the provider's documentation:
//
//   - OpenAI (platform.openai.com/docs/guides/rate-limits, "Rate limits in
//     headers") and Groq (console.groq.com/docs/rate-limits):
//     x-ratelimit-{limit,remaining,reset}-{requests,tokens}, reset as a Go
//     style duration (1m30s, 6ms, 2m59.56s). Groq's request limit is per
//     day and its token limit per minute.
//   - xAI (OpenAI-compatible API; the same x-ratelimit-* names, as third
//     party write-ups of api.x.ai answers show: docs.x.ai names RPM and TPM
//     limits but not the headers) and Mistral (x-ratelimit-*-{requests,
//     tokens} per third-party guides; its answers also carry
//     x-ratelimitbysize-{limit,remaining}-minute, tokens a minute, with
//     ratelimitbysize-reset in seconds, as client libraries such as
//     tidyllm read them). Only the minute window is read of Mistral's: the
//     month one has no resource of its own here.
//   - DeepSeek documents no rate-limit headers (api-docs.deepseek.com,
//     "Rate Limit": no per-user limit, 429 under load); its 429s are counted
//     and the OpenAI names read should it send them.
//   - Anthropic (docs.anthropic.com/en/api/rate-limits, "Response
//     headers"): anthropic-ratelimit-{requests,tokens,input-tokens,
//     output-tokens}-{limit,remaining,reset}, reset in RFC 3339.
var (
	openAIResources    = []string{"requests", "tokens"}
	anthropicResources = []string{"requests", "tokens", "input-tokens", "output-tokens"}
)

// ParseRateLimits reads the rate-limit headers of an answer of an upstream
// of kind k, received at now. Resources without any header are left out;
// values that do not parse count as not sent.
func ParseRateLimits(k Kind, h http.Header, now time.Time) []RateLimit {
	var out []RateLimit
	add := func(resource, limit, remaining, reset string) {
		rl := RateLimit{Resource: resource, Limit: parseCount(h.Get(limit)), Remaining: parseCount(h.Get(remaining))}
		rl.Reset = parseReset(h.Get(reset), now)
		if !math.IsNaN(rl.Limit) || !math.IsNaN(rl.Remaining) || !rl.Reset.IsZero() {
			out = append(out, rl)
		}
	}
	switch k {
	case Anthropic:
		for _, r := range anthropicResources {
			p := "anthropic-ratelimit-" + r + "-"
			add(strings.ReplaceAll(r, "-", "_"), p+"limit", p+"remaining", p+"reset")
		}
	default:
		for _, r := range openAIResources {
			add(r, "x-ratelimit-limit-"+r, "x-ratelimit-remaining-"+r, "x-ratelimit-reset-"+r)
		}
		// Mistral's tokens a minute, when the OpenAI names did not say.
		if !hasResource(out, "tokens") {
			add("tokens", "x-ratelimitbysize-limit-minute", "x-ratelimitbysize-remaining-minute", "ratelimitbysize-reset")
		}
	}
	return out
}

func hasResource(rls []RateLimit, resource string) bool {
	for _, rl := range rls {
		if rl.Resource == resource {
			return true
		}
	}
	return false
}

// parseCount reads a limit or remaining count; NaN when absent or not a
// finite, non-negative number.
func parseCount(s string) float64 {
	s = strings.TrimSpace(s)
	if s == "" {
		return math.NaN()
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || v < 0 || math.IsInf(v, 0) || math.IsNaN(v) {
		return math.NaN()
	}
	return v
}

// parseReset reads a reset header in any of the providers' formats: a Go
// style duration (1m30s, 6ms, 2.5s: OpenAI, Groq), an RFC 3339 time
// (Anthropic), or seconds (retry-after, Mistral's ratelimitbysize-reset).
// Zero when absent or unreadable.
func parseReset(s string, now time.Time) time.Time {
	s = strings.TrimSpace(s)
	if s == "" {
		return time.Time{}
	}
	if secs, err := strconv.ParseFloat(s, 64); err == nil {
		if secs < 0 || math.IsInf(secs, 0) || math.IsNaN(secs) || secs > 1e9 {
			return time.Time{}
		}
		return now.Add(time.Duration(secs * float64(time.Second)))
	}
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			return time.Time{}
		}
		return now.Add(d)
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t
	}
	return time.Time{}
}

// keyFingerprintDomain prefixes the key before hashing, so that the
// fingerprint matches no other SHA-256 of the key anyone may publish.
const keyFingerprintDomain = "llmusage provider key fingerprint v1\x00"

// KeyFingerprint names the API key of an outgoing request, from its
// Authorization bearer token or its x-api-key header: the first 8 hex
// digits of SHA-256 over a fixed prefix and the key, "" without a key.
// It tells two accounts apart on the dashboards without exporting the
// key: 32 bits of a hash cannot give back a real provider key (over 100
// random characters), though they would confirm a guess of a short,
// guessable one.
func KeyFingerprint(h http.Header) string {
	key := strings.TrimSpace(h.Get("X-Api-Key"))
	if key == "" {
		auth := strings.TrimSpace(h.Get("Authorization"))
		if len(auth) > 7 && strings.EqualFold(auth[:7], "bearer ") {
			key = strings.TrimSpace(auth[7:])
		}
	}
	if key == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(keyFingerprintDomain + key))
	return hex.EncodeToString(sum[:4])
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
	for _, rl := range ParseRateLimits(up.Kind, resp.Header, time.Now()) {
		o.ObserveProviderRateLimit(up.Provider, model, key, rl.Resource, rl.Limit, rl.Remaining, rl.Reset)
	}
	o.ObserveProviderAnswer(up.Provider, model, resp.StatusCode == http.StatusTooManyRequests)
}
