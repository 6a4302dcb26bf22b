package proxy

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/llmusage/llmusage/collector"
	"github.com/llmusage/llmusage/limiter"
)

// DefaultClientRetryMax is Options.ClientRetryMax's default.
const DefaultClientRetryMax = 5 * time.Second

// refuse answers a call the check refused (a limit, a pool, a budget):
// 429 in the provider's format, with Retry-After and the IETF RateLimit
// fields of the bucket that refused it.
//
// What the official SDKs do on it, with their default options (both
// retry a 429 twice, maxRetries 2), as the sources pinned in
// test/sdk/package.json read:
//
//   - openai 5.23.2, node_modules/openai/client.mjs: shouldRetry (lines
//     374-395) obeys x-should-retry "true" or "false" before looking at
//     the status, and retries 429; retryRequest (396-425) sleeps
//     retry-after-ms, else Retry-After, but only when under 60 s: a longer
//     one is replaced by its own backoff (0.5 s, 1 s, with jitter), so
//     the retries come far too early and fail too. maxRetries defaults to
//     2 (line 111).
//   - @anthropic-ai/sdk 1.15.0, node_modules/@anthropic-ai/sdk/client.mjs:
//     shouldRetry (848-883) obeys x-should-retry likewise; retryRequest
//     (884-914) sleeps any positive Retry-After up to 2^31-1 ms: a day's
//     limit would hold the caller for a day, twice. maxRetries defaults
//     to 2 (line 170).
//
// So a wait longer than ClientRetryMax also says x-should-retry: false
// (both SDKs raise RateLimitError at once), and a shorter one keeps the
// SDK's retry, which Retry-After times to pass.
func (p *Proxy) refuse(w http.ResponseWriter, up *Upstream, user string, d limiter.Decision) {
	secs := retryAfterSeconds(d.RetryAfter)
	p.opts.Collector.SetRateLimit(w.Header(), d)
	msg := fmt.Sprintf("llmusage: user %s is over a limit; retry after %d s", user, secs)
	if d.Tightest >= 0 && d.Tightest < len(d.Limits) {
		msg = fmt.Sprintf("llmusage: user %s is over the %s limit; retry after %d s", user, collector.RateLimitPolicyName(d.Limits[d.Tightest]), secs)
	}
	p.tooMany(w, up, d.RetryAfter, msg)
}

// retryAfterSeconds is a wait as Retry-After says it: whole seconds,
// rounded up, at least 1.
func retryAfterSeconds(wait time.Duration) int64 {
	return max(int64((wait+time.Second-1)/time.Second), 1)
}

// tooMany answers the sidecar's own 429 for a wait of the proxy's, in the
// provider's format. Retry-After is in whole seconds, as every HTTP
// client reads it; retry-after-ms, which both SDKs read first, keeps a
// short wait (300 ms) from being rounded up to a second, a wait that
// every retrying caller would otherwise add. x-should-retry goes by the
// whole seconds, so that it agrees with the Retry-After all clients see.
func (p *Proxy) tooMany(w http.ResponseWriter, up *Upstream, wait time.Duration, msg string) {
	secs := retryAfterSeconds(wait)
	h := w.Header()
	h.Set("Retry-After", strconv.FormatInt(secs, 10))
	// Rounded up, so that the retry never comes early, but from whole
	// microseconds: the limiter's float arithmetic leaves a few
	// nanoseconds over a wait of 300 ms.
	if ms := int64((wait.Truncate(time.Microsecond) + time.Millisecond - 1) / time.Millisecond); ms > 0 {
		h.Set("Retry-After-Ms", strconv.FormatInt(ms, 10))
	}
	if p.opts.ClientRetryMax < 0 || time.Duration(secs)*time.Second > p.opts.ClientRetryMax {
		h.Set("X-Should-Retry", "false")
	}
	writeError(w, up.Kind, http.StatusTooManyRequests, errorTypeOf(up.Kind, http.StatusTooManyRequests), msg)
}

// writeError answers in the provider's own error format, so that its SDK
// raises the matching error (RateLimitError for 429, and so on).
func writeError(w http.ResponseWriter, k Kind, status int, errType, message string) {
	var body any
	if k == Anthropic {
		body = map[string]any{"type": "error", "error": map[string]any{"type": errType, "message": message}}
	} else {
		body = map[string]any{"error": map[string]any{"message": message, "type": errType, "param": nil, "code": errType}}
	}
	b, _ := json.Marshal(body)
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

// errorTypeOf is the provider's error type for a status.
func errorTypeOf(k Kind, status int) string {
	switch status {
	case http.StatusBadRequest:
		return "invalid_request_error"
	case http.StatusNotFound:
		return "not_found_error"
	case http.StatusRequestEntityTooLarge:
		return "request_too_large"
	case http.StatusTooManyRequests:
		if k == Anthropic {
			return "rate_limit_error"
		}
		return "rate_limit_exceeded"
	}
	if k == Anthropic {
		return "api_error"
	}
	return "server_error"
}
