package main

import (
	"strings"
	"testing"

	"github.com/llmusage/llmusage/internal/sdktest"
	"github.com/llmusage/llmusage/internal/sidecartest"
	"github.com/llmusage/llmusage/internal/upstreamtest"
)

// TestProxyWithTheSDKs, as a new user tries proxy mode: the official
// openai and @anthropic-ai/sdk npm packages pointed at the sidecar, which
// forwards to a fake upstream. Each call returns the upstream's answer and
// lands as a record with the upstream's token counts; over a limit the
// SDK raises its rate-limit error and the upstream is not called; no key
// is kept.
func TestProxyWithTheSDKs(t *testing.T) {
	up := upstreamtest.Start(t)
	s := sidecartest.Start(t, sidecartest.Options{
		// One call a day of the model error-429 per user: the second is
		// the sidecar's refusal, not the upstream's.
		Limits: "limits:\n  - model: error-429\n    limit_type: day\n    requests: 1\n",
		Flags:  []string{"--upstream", "openai=" + up.URL, "--upstream", "anthropic=" + up.URL, "--flush-interval", "50ms"},
	})
	openai, anthropic := s.APIURL()+"/openai/v1", s.APIURL()+"/anthropic"
	ok := func(scenario, base string) sdktest.Result {
		t.Helper()
		r := sdktest.Run(t, scenario, base)
		if !r.OK || !strings.HasPrefix(r.Text, "Hello") {
			t.Fatalf("%s through the sidecar: %s", scenario, r.Line)
		}
		return r
	}
	ok("openai-chat", openai)
	if r := ok("openai-chat-stream", openai); r.Usage != nil {
		t.Fatalf("a stream whose client did not ask for usage got the usage chunk the proxy asked for: %s", r.Line)
	}
	if r := ok("openai-chat-stream-usage", openai); r.UsageInt("prompt_tokens") != upstreamtest.OpenAIUsage.Prompt {
		t.Fatalf("a client that asked for usage did not get it: %s", r.Line)
	}
	ok("anthropic-message", anthropic)
	ok("anthropic-stream", anthropic)
	for _, sc := range []string{"openai-tool", "anthropic-tool"} {
		if r := sdktest.Run(t, sc, map[bool]string{true: anthropic, false: openai}[strings.HasPrefix(sc, "anthropic")]); !r.OK || len(r.ToolCalls) == 0 {
			t.Fatalf("%s: %s", sc, r.Line)
		}
	}
	if r := sdktest.Run(t, "openai-error", openai); r.OK || r.Status != 500 {
		t.Fatalf("openai-error: %s", r.Line)
	}

	// The first error-429 call reaches the upstream (its 429), the
	// second is refused by the sidecar: RateLimitError either way.
	for _, sc := range []string{"openai-ratelimited", "openai-ratelimited", "anthropic-ratelimited"} {
		base := openai
		if strings.HasPrefix(sc, "anthropic") {
			base = anthropic
		}
		if r := sdktest.Run(t, sc, base); r.OK || r.Status != 429 || r.ErrorClass != "RateLimitError" {
			t.Fatalf("%s: %s", sc, r.Line)
		}
	}
	n := 0
	for _, r := range up.Requests() {
		if m := r.JSON(); m != nil && m["model"] == "error-429" {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("the upstream saw %d calls of error-429, want 1: the sidecar's limit must stop the rest", n)
	}

	// Aborted by the client: recorded all the same.
	ok("openai-abort", openai)

	// Every call is a record with the upstream's counts.
	recs := logsOf(t, s, "sdk-user", 10)
	counts := map[string]int{}
	for _, r := range recs {
		counts[r["provider"].(string)+"/"+r["status"].(string)]++
	}
	if counts["openai/success"] < 4 || counts["anthropic/success"] < 3 {
		t.Fatalf("records by provider and status: %v", counts)
	}
	for _, r := range recs {
		if r["status"] != "success" {
			continue
		}
		meta, _ := r["metadata"].(map[string]any)
		switch {
		case r["provider"] == "anthropic":
			u := upstreamtest.AnthropicUsage
			if r["prompt_tokens"] != float64(u.Input+u.CacheRead+u.CacheWrite) || r["completion_tokens"] != float64(u.Output) {
				t.Fatalf("anthropic record %v", r)
			}
		case meta["usage_estimated"] == true:
			// the aborted stream
		default:
			if r["prompt_tokens"] != float64(upstreamtest.OpenAIUsage.Prompt) || r["completion_tokens"] != float64(upstreamtest.OpenAIUsage.Completion) {
				t.Fatalf("openai record %v", r)
			}
		}
	}
	if got := s.Gauge(`llm_requests_total{model="error-429",provider="openai",status="error",team="",user="sdk-user"}`); got != 1 {
		t.Fatalf("llm_requests_total of the upstream's 429 = %v, want 1 (the sidecar's refusal is no call)", got)
	}
	assertNoSecret(t, s, "sk-test-secret-key")
	assertNoSecret(t, s, "sk-ant-test-secret-key")
}
