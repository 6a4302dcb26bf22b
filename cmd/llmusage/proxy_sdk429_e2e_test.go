package main

import (
	"net/http"
	"strings"
	"testing"

	"github.com/llmusage/llmusage/internal/sdktest"
	"github.com/llmusage/llmusage/internal/sidecartest"
	"github.com/llmusage/llmusage/internal/upstreamtest"
)

// TestSDKsOnTheSidecars429 runs the official openai and @anthropic-ai/sdk
// npm packages with their default options (2 retries) through the real
// sidecar. A user over a minute's limit gets RateLimitError within a
// second, at the first attempt: the sidecar's 429 says x-should-retry:
// false for a wait past --proxy-client-retry-max (5 s), which both SDKs
// obey. Over a second's limit the wait is 1 s: the 429 keeps its
// Retry-After alone, the SDK sleeps it and its retry succeeds.
func TestSDKsOnTheSidecars429(t *testing.T) {
	up := upstreamtest.Start(t)
	s := sidecartest.Start(t, sidecartest.Options{
		Limits: `limits:
  - model: gpt-4
    limit_type: minute
    requests: 1
  - model: claude-3-opus
    limit_type: minute
    requests: 1
  - model: fast
    limit_type: second
    requests: 1
`,
		Flags: []string{"--upstream", "openai=" + up.URL, "--upstream", "anthropic=" + up.URL, "--flush-interval", "50ms"},
	})
	openai, anthropic := s.APIURL()+"/openai/v1", s.APIURL()+"/anthropic"
	for _, tc := range []struct{ scenario, base, model string }{
		{"openai-chat-default", openai, "gpt-4"},
		{"anthropic-message-default", anthropic, "claude-3-opus"},
	} {
		if r := sdktest.Run(t, tc.scenario, tc.base); !r.OK || r.Attempts != 1 {
			t.Fatalf("%s, the minute's first call: %s", tc.scenario, r.Line)
		}
		r := sdktest.Run(t, tc.scenario, tc.base)
		if r.OK || r.Status != http.StatusTooManyRequests || r.ErrorClass != "RateLimitError" {
			t.Fatalf("%s over the minute's limit: %s, want RateLimitError", tc.scenario, r.Line)
		}
		// One attempt: the SDK raised at once rather than sleeping out the
		// minute (the time is logged, not asserted: this machine is shared).
		if r.Attempts != 1 {
			t.Fatalf("%s over the minute's limit: %d attempts in %d ms, want 1 (x-should-retry: false): %s", tc.scenario, r.Attempts, r.ElapsedMs, r.Line)
		}
		t.Logf("%s over the minute's limit: RateLimitError after %d ms", tc.scenario, r.ElapsedMs)
		if !strings.Contains(r.Message, "minute-requests") {
			t.Errorf("%s: message %q does not name the limit", tc.scenario, r.Message)
		}
		n := 0
		for _, req := range up.Requests() {
			if m := req.JSON(); m != nil && m["model"] == tc.model {
				n++
			}
		}
		if n != 1 {
			t.Fatalf("the upstream saw %d calls of %s, want 1", n, tc.model)
		}
	}

	// Two calls in a row under one a second: the second is refused for
	// about a second, retried by the SDK after Retry-After, and succeeds.
	for _, tc := range []struct{ scenario, base string }{
		{"openai-chat-default-twice", openai},
		{"anthropic-message-default-twice", anthropic},
	} {
		r := sdktest.Run(t, tc.scenario, tc.base)
		if !r.OK || !strings.HasPrefix(r.Text, "Hello") {
			t.Fatalf("%s: %s, want the upstream's answer after the SDK's retry", tc.scenario, r.Line)
		}
		// The second call is refused with Retry-After: 1 and retried, unless
		// the first took a second or more on a busy machine (the bucket
		// refilled meanwhile): then it passes at once. Either way it
		// succeeds, which it could not if the short wait said
		// x-should-retry: false.
		if r.Attempts < 1 || r.Attempts > 2 {
			t.Fatalf("%s: the second call took %d attempts in %d ms, want 2 (or 1 if the bucket refilled): %s", tc.scenario, r.Attempts, r.ElapsedMs, r.Line)
		}
		t.Logf("%s: the second call succeeded after %d attempts in %d ms", tc.scenario, r.Attempts, r.ElapsedMs)
	}

	// /v1/check says the same bucket in the IETF fields.
	code, h, _ := s.PostJSON(t, "/v1/check", `{"user_id":"checker","model":"gpt-4"}`)
	if code != http.StatusOK || h.Get("RateLimit-Policy") != `"minute-requests";q=1;w=60` || h.Get("RateLimit") != `"minute-requests";r=0;t=60` {
		t.Fatalf("first check: %d, RateLimit-Policy %q, RateLimit %q", code, h.Get("RateLimit-Policy"), h.Get("RateLimit"))
	}
	code, h, _ = s.PostJSON(t, "/v1/check", `{"user_id":"checker","model":"gpt-4"}`)
	if code != http.StatusTooManyRequests || h.Get("RateLimit") != `"minute-requests";r=0;t=`+h.Get("Retry-After") || h.Get("X-Should-Retry") != "" {
		t.Fatalf("refused check: %d, Retry-After %q, RateLimit %q, x-should-retry %q", code, h.Get("Retry-After"), h.Get("RateLimit"), h.Get("X-Should-Retry"))
	}
}

// TestSDKsOnProviderHeadroom runs the official SDKs with their default
// options through a sidecar with --provider-headroom=respect. The fake
// provider's answer for the model "exhausted" says the key's requests are
// spent for 30 s: the SDK's next call gets RateLimitError from the
// sidecar at the first attempt (30 s is past --proxy-client-retry-max),
// and the provider sees no second call.
func TestSDKsOnProviderHeadroom(t *testing.T) {
	up := upstreamtest.Start(t)
	s := sidecartest.Start(t, sidecartest.Options{
		Flags: []string{"--upstream", "openai=" + up.URL, "--upstream", "anthropic=" + up.URL, "--flush-interval", "50ms",
			"--provider-headroom", "respect"},
	})
	for _, tc := range []struct{ scenario, base, provider, path string }{
		{"openai-chat-default-exhausted", s.APIURL() + "/openai/v1", "openai", "/v1/chat/completions"},
		{"anthropic-message-default-exhausted", s.APIURL() + "/anthropic", "anthropic", "/v1/messages"},
	} {
		r := sdktest.Run(t, tc.scenario, tc.base)
		if r.OK || r.Status != http.StatusTooManyRequests || r.ErrorClass != "RateLimitError" || r.Attempts != 1 {
			t.Fatalf("%s: %s, want RateLimitError at the first attempt", tc.scenario, r.Line)
		}
		if !strings.Contains(r.Message, "no requests left") {
			t.Errorf("%s: message %q does not say what the provider said", tc.scenario, r.Message)
		}
		n := 0
		for _, req := range up.Requests() {
			if req.Path == tc.path {
				n++
			}
		}
		if n != 1 {
			t.Fatalf("%s: the provider saw %d calls, want 1", tc.scenario, n)
		}
		if v := sidecartest.Value(s.Scrape(t), `llmusage_proxy_headroom_refusals_total{provider="`+tc.provider+`"}`); v != 1 {
			t.Fatalf("llmusage_proxy_headroom_refusals_total of %s = %v, want 1", tc.provider, v)
		}
	}
	if log := s.Log(); !strings.Contains(log, "provider-headroom") || strings.Contains(log, "sk-test-secret-key") {
		t.Fatalf("the log does not tell the refusals, or leaks the key:\n%s", log)
	}
}
