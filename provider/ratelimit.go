package provider

import (
	"crypto/sha256"
	"encoding/hex"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// The provider's own rate-limit headers are read here, not in the proxy,
// because two paths read them: the proxy off the answers it relays, and
// intake off the headers a record carries (provider_ratelimit.headers)
// for the apps that call the provider directly. One parser keeps the two
// in step.

// Dialect is a family of rate-limit header names.
type Dialect uint8

const (
	// DialectOpenAI is x-ratelimit-{limit,remaining,reset}-{requests,tokens}
	// (OpenAI, Groq, xAI, Mistral, DeepSeek should it send them), with
	// Mistral's x-ratelimitbysize-*-minute.
	DialectOpenAI Dialect = iota
	// DialectAnthropic is anthropic-ratelimit-*.
	DialectAnthropic
)

// DialectOf is the dialect of the answers of a provider, by its
// normalised name.
func DialectOf(provider string) Dialect {
	if provider == "anthropic" {
		return DialectAnthropic
	}
	return DialectOpenAI
}

// Resources are the resources a provider's rate limit may be on, as the
// metrics' resource label names them.
var Resources = []string{"requests", "tokens", "input_tokens", "output_tokens"}

// RateLimit is one of the provider's limits as an answer's headers say.
type RateLimit struct {
	// Resource is what is limited: one of Resources.
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
//     style duration (1m30s, 6ms, 2m59.56s), with a day unit for a daily
//     window (Groq's requests a day: 1d2h3m4s is seen in the wild). Groq's
//     request limit is per day and its token limit per minute.
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
//   - retry-after (RFC 9110: seconds or an HTTP date), sent by all of them
//     with a 429, and retry-after-ms, which OpenAI sends and its SDKs read
//     first.
var (
	openAIResources    = []string{"requests", "tokens"}
	anthropicResources = []string{"requests", "tokens", "input-tokens", "output-tokens"}
)

// ParseRateLimits reads the rate-limit headers of an answer in dialect d,
// received at now. Resources without any header are left out; values
// that do not parse count as not sent.
func ParseRateLimits(d Dialect, h http.Header, now time.Time) []RateLimit {
	var out []RateLimit
	add := func(resource, limit, remaining, reset string) {
		rl := RateLimit{Resource: resource, Limit: parseCount(h.Get(limit)), Remaining: parseCount(h.Get(remaining))}
		rl.Reset = ParseReset(h.Get(reset), now)
		if !math.IsNaN(rl.Limit) || !math.IsNaN(rl.Remaining) || !rl.Reset.IsZero() {
			out = append(out, rl)
		}
	}
	switch d {
	case DialectAnthropic:
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

// ParseRetryAfter reads when an answer received at now says to retry:
// retry-after-ms (OpenAI's, in milliseconds) when it parses, else
// retry-after in seconds or as an HTTP date. Zero when neither says.
func ParseRetryAfter(h http.Header, now time.Time) time.Time {
	if ms := parseCount(h.Get("retry-after-ms")); !math.IsNaN(ms) && ms <= maxResetSeconds*1000 {
		return now.Add(time.Duration(ms * float64(time.Millisecond)))
	}
	s := strings.TrimSpace(h.Get("retry-after"))
	if s == "" {
		return time.Time{}
	}
	if secs := parseCount(s); !math.IsNaN(secs) {
		if secs > maxResetSeconds {
			return time.Time{}
		}
		return now.Add(time.Duration(secs * float64(time.Second)))
	}
	if t, err := http.ParseTime(s); err == nil {
		return t
	}
	return time.Time{}
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

// maxResetSeconds bounds a reset or retry-after, past which a value is
// taken for garbage rather than a wait (about 31 years).
const maxResetSeconds = 1e9

// ParseReset reads a reset header in any of the providers' formats: a Go
// style duration (1m30s, 6ms, 2.5s: OpenAI, Groq), possibly with days in
// front (1d2h3m4s, 2d), an RFC 3339 time (Anthropic), or seconds
// (Mistral's ratelimitbysize-reset). Zero when absent or unreadable.
func ParseReset(s string, now time.Time) time.Time {
	s = strings.TrimSpace(s)
	if s == "" {
		return time.Time{}
	}
	if secs, err := strconv.ParseFloat(s, 64); err == nil {
		if secs < 0 || math.IsInf(secs, 0) || math.IsNaN(secs) || secs > maxResetSeconds {
			return time.Time{}
		}
		return now.Add(time.Duration(secs * float64(time.Second)))
	}
	if d, ok := parseDuration(s); ok {
		return now.Add(d)
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t
	}
	return time.Time{}
}

// parseDuration is time.ParseDuration with a leading day unit (1d2h, 2d,
// 1.5d), which Go's lacks, and only non-negative values up to
// maxResetSeconds.
func parseDuration(s string) (time.Duration, bool) {
	var days float64
	if i := strings.IndexByte(s, 'd'); i >= 0 {
		// No Go unit has a d, so the first one ends the days.
		if i == 0 || strings.Trim(s[:i], "0123456789.") != "" {
			return 0, false
		}
		var err error
		if days, err = strconv.ParseFloat(s[:i], 64); err != nil {
			return 0, false
		}
		if s = s[i+1:]; s == "" {
			s = "0s"
		}
		if (s[0] < '0' || s[0] > '9') && s[0] != '.' { // a sign would subtract
			return 0, false
		}
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, false
	}
	total := days*24*3600 + d.Seconds()
	if total > maxResetSeconds {
		return 0, false
	}
	return d + time.Duration(days*24*float64(time.Hour)), true
}

// keyFingerprintDomain prefixes the key before hashing, so that the
// fingerprint matches no other SHA-256 of the key anyone may publish.
const keyFingerprintDomain = "llmusage provider key fingerprint v1\x00"

// KeyFingerprint names an API key on the dashboards: the first 8 hex
// digits of SHA-256 over a fixed prefix and the key (spaces around it
// trimmed), "" for no key. It tells two accounts apart without exporting
// the key: 32 bits of a hash cannot give back a real provider key (over
// 100 random characters), though they would confirm a guess of a short,
// guessable one. The Python client computes the same (key_fingerprint).
func KeyFingerprint(key string) string {
	key = strings.TrimSpace(key)
	if key == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(keyFingerprintDomain + key))
	return hex.EncodeToString(sum[:4])
}

// IsKeyFingerprint tells whether s has the form of a KeyFingerprint: 8
// lower-case hex digits.
func IsKeyFingerprint(s string) bool {
	if len(s) != 8 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
