package sdktest_test

import (
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"github.com/llmusage/llmusage/internal/sdktest"
	"github.com/llmusage/llmusage/internal/upstreamtest"
)

// The usage the SDKs must expose, as upstreamtest reports it.
var (
	chatUsage = map[string]int{
		"prompt_tokens":                              upstreamtest.OpenAIUsage.Prompt,
		"completion_tokens":                          upstreamtest.OpenAIUsage.Completion,
		"total_tokens":                               upstreamtest.OpenAIUsage.Prompt + upstreamtest.OpenAIUsage.Completion,
		"prompt_tokens_details.cached_tokens":        upstreamtest.OpenAIUsage.Cached,
		"completion_tokens_details.reasoning_tokens": upstreamtest.OpenAIUsage.Reasoning,
	}
	responsesUsage = map[string]int{
		"input_tokens":                           upstreamtest.OpenAIUsage.Prompt,
		"input_tokens_details.cached_tokens":     upstreamtest.OpenAIUsage.Cached,
		"output_tokens":                          upstreamtest.OpenAIUsage.Completion,
		"output_tokens_details.reasoning_tokens": upstreamtest.OpenAIUsage.Reasoning,
		"total_tokens":                           upstreamtest.OpenAIUsage.Prompt + upstreamtest.OpenAIUsage.Completion,
	}
	groqUsage = map[string]int{
		"prompt_tokens":     upstreamtest.GroqUsage.Prompt,
		"completion_tokens": upstreamtest.GroqUsage.Completion,
		"total_tokens":      upstreamtest.GroqUsage.Prompt + upstreamtest.GroqUsage.Completion,
	}
	anthropicUsage = map[string]int{
		"input_tokens":                upstreamtest.AnthropicUsage.Input,
		"cache_read_input_tokens":     upstreamtest.AnthropicUsage.CacheRead,
		"cache_creation_input_tokens": upstreamtest.AnthropicUsage.CacheWrite,
		"output_tokens":               upstreamtest.AnthropicUsage.Output,
	}
)

// want is what a scenario must print and send.
type want struct {
	// ok, text, chunks as printed (chunks -1: any).
	ok     bool
	text   string
	chunks int
	// usage are the usage numbers by dotted path; nil: no usage.
	usage map[string]int
	// tool is the tool call's name, "" for none.
	tool string
	// aborted is an *-abort scenario's flag.
	aborted bool
	// status and errorClass of a failure.
	status     int
	errorClass string
	// path is the request path the fake must have received.
	path string
	// bodyUser is the body's user (OpenAI user, Anthropic
	// metadata.user_id), "" for a request carrying X-LLMUsage-User instead.
	bodyUser string
}

func TestScenariosAgainstTheFake(t *testing.T) {
	openai := func(s *upstreamtest.Server) string { return s.URL + "/v1" }
	groq := func(s *upstreamtest.Server) string { return s.URL + "/openai/v1" }
	anthropic := func(s *upstreamtest.Server) string { return s.URL }
	const text = upstreamtest.Text
	for _, tc := range []struct {
		name, scenario string
		base           func(*upstreamtest.Server) string
		want           want
	}{
		{"openai-chat", "openai-chat", openai, want{ok: true, text: text, usage: chatUsage, path: "/v1/chat/completions"}},
		{"openai-chat-stream", "openai-chat-stream", openai, want{ok: true, text: text, chunks: 4, path: "/v1/chat/completions"}},
		{"openai-chat-stream-usage", "openai-chat-stream-usage", openai, want{ok: true, text: text, chunks: 5, usage: chatUsage, path: "/v1/chat/completions"}},
		{"openai-tool", "openai-tool", openai, want{ok: true, chunks: 5, usage: chatUsage, tool: upstreamtest.ToolName, path: "/v1/chat/completions"}},
		{"openai-error", "openai-error", openai, want{status: 500, errorClass: "InternalServerError", path: "/v1/chat/completions"}},
		{"openai-ratelimited", "openai-ratelimited", openai, want{status: 429, errorClass: "RateLimitError", path: "/v1/chat/completions"}},
		{"openai-abort", "openai-abort", openai, want{ok: true, text: "Hello", chunks: -1, aborted: true, path: "/v1/chat/completions"}},
		{"openai-body-user", "openai-body-user", openai, want{ok: true, text: text, usage: chatUsage, path: "/v1/chat/completions", bodyUser: "body-user"}},
		{"openai-responses", "openai-responses", openai, want{ok: true, text: text, usage: responsesUsage, path: "/v1/responses"}},
		{"openai-responses-stream", "openai-responses-stream", openai, want{ok: true, text: text, chunks: -1, usage: responsesUsage, path: "/v1/responses"}},
		{"openai-embeddings", "openai-embeddings", openai, want{ok: true, usage: map[string]int{"prompt_tokens": 5, "total_tokens": 5}, path: "/v1/embeddings"}},
		{"groq chat", "openai-chat", groq, want{ok: true, text: text, usage: groqUsage, path: "/openai/v1/chat/completions"}},
		{"groq stream", "openai-chat-stream", groq, want{ok: true, text: text, chunks: 4, path: "/openai/v1/chat/completions"}},
		{"groq stream usage", "openai-chat-stream-usage", groq, want{ok: true, text: text, chunks: 5, usage: groqUsage, path: "/openai/v1/chat/completions"}},
		{"anthropic-message", "anthropic-message", anthropic, want{ok: true, text: text, usage: anthropicUsage, path: "/v1/messages"}},
		{"anthropic-stream", "anthropic-stream", anthropic, want{ok: true, text: text, chunks: 8, usage: anthropicUsage, path: "/v1/messages"}},
		{"anthropic-tool", "anthropic-tool", anthropic, want{ok: true, chunks: 8, usage: anthropicUsage, tool: upstreamtest.ToolName, path: "/v1/messages"}},
		{"anthropic-error", "anthropic-error", anthropic, want{status: 500, errorClass: "InternalServerError", path: "/v1/messages"}},
		{"anthropic-ratelimited", "anthropic-ratelimited", anthropic, want{status: 429, errorClass: "RateLimitError", path: "/v1/messages"}},
		{"anthropic-abort", "anthropic-abort", anthropic, want{ok: true, text: "Hello", chunks: -1, aborted: true, path: "/v1/messages",
			usage: map[string]int{"input_tokens": 10, "output_tokens": upstreamtest.AnthropicOutputSteps[0]}}},
		{"anthropic-body-user", "anthropic-body-user", anthropic, want{ok: true, text: text, usage: anthropicUsage, path: "/v1/messages", bodyUser: "body-user"}},
		{"anthropic-count-tokens", "anthropic-count-tokens", anthropic, want{ok: true, usage: map[string]int{"input_tokens": 10}, path: "/v1/messages/count_tokens"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			fake := upstreamtest.Start(t)
			r := sdktest.Run(t, tc.scenario, tc.base(fake))
			check(t, r, tc.want)
			checkRequest(t, fake, tc.scenario, tc.want)
		})
	}
}

// check compares what the scenario printed with w.
func check(t *testing.T, r sdktest.Result, w want) {
	t.Helper()
	if r.OK != w.ok {
		t.Fatalf("ok = %v, want %v: %s", r.OK, w.ok, r.Line)
	}
	if !w.ok {
		if r.Status != w.status || r.ErrorClass != w.errorClass || r.Message == "" {
			t.Errorf("error %d %s %q, want %d %s: %s", r.Status, r.ErrorClass, r.Message, w.status, w.errorClass, r.Line)
		}
		return
	}
	if r.Text != w.text {
		t.Errorf("text %q, want %q: %s", r.Text, w.text, r.Line)
	}
	if w.chunks >= 0 && r.Chunks != w.chunks {
		t.Errorf("chunks %d, want %d: %s", r.Chunks, w.chunks, r.Line)
	}
	if r.Aborted != w.aborted {
		t.Errorf("aborted %v, want %v: %s", r.Aborted, w.aborted, r.Line)
	}
	if w.usage == nil && r.Usage != nil {
		t.Errorf("usage %v, want none: %s", r.Usage, r.Line)
	}
	for path, n := range w.usage {
		if got := r.UsageInt(strings.Split(path, ".")...); got != n {
			t.Errorf("usage.%s = %d, want %d: %s", path, got, n, r.Line)
		}
	}
	switch {
	case w.tool == "" && len(r.ToolCalls) != 0:
		t.Errorf("tool calls %v, want none", r.ToolCalls)
	case w.tool != "":
		if len(r.ToolCalls) != 1 {
			t.Fatalf("tool calls %v, want one", r.ToolCalls)
		}
		call, _ := r.ToolCalls[0].(map[string]any)
		if call["name"] != w.tool {
			t.Errorf("tool call %v, want %s", call, w.tool)
		}
		// OpenAI hands over the arguments as text, Anthropic's SDK parses them.
		args, isText := call["arguments"]
		if isText && args != upstreamtest.ToolArguments {
			t.Errorf("tool arguments %v, want %s", args, upstreamtest.ToolArguments)
		}
		if !isText && !reflect.DeepEqual(call["input"], map[string]any{"city": "Paris"}) {
			t.Errorf("tool input %v", call["input"])
		}
	}
}

// checkRequest checks the one request the fake received: its path, the
// SDK's credentials and the user, in the header or in the body.
func checkRequest(t *testing.T, fake *upstreamtest.Server, scenario string, w want) {
	t.Helper()
	reqs := fake.Requests()
	if len(reqs) != 1 {
		t.Fatalf("the fake received %d requests, want 1 (maxRetries 0)", len(reqs))
	}
	req := reqs[0]
	if req.Method != http.MethodPost || req.Path != w.path {
		t.Errorf("request %s %s, want POST %s", req.Method, req.Path, w.path)
	}
	if strings.HasPrefix(scenario, "anthropic-") {
		// Older SDKs sent the key in x-api-key; @anthropic-ai/sdk 1.x sends
		// Authorization: Bearer. A proxy must pass either through.
		key, bearer := req.Header.Get("X-Api-Key"), req.Header.Get("Authorization")
		if key != "sk-ant-test-secret-key" && bearer != "Bearer sk-ant-test-secret-key" {
			t.Errorf("the API key is neither in x-api-key (%q) nor in authorization (%q): %v", key, bearer, req.Header)
		}
		if req.Header.Get("Anthropic-Version") == "" {
			t.Errorf("no anthropic-version header: %v", req.Header)
		}
	} else if got := req.Header.Get("Authorization"); got != "Bearer sk-test-secret-key" {
		t.Errorf("authorization %q", got)
	}
	body := req.JSON()
	if body == nil {
		t.Fatalf("the body is not a JSON object: %s", req.Body)
	}
	var bodyUser any = body["user"]
	if m, ok := body["metadata"].(map[string]any); ok {
		bodyUser = m["user_id"]
	}
	if w.bodyUser != "" {
		if h := req.Header.Get("X-LLMUsage-User"); h != "" {
			t.Errorf("X-LLMUsage-User %q sent with a body user", h)
		}
		if bodyUser != w.bodyUser {
			t.Errorf("body user %v, want %s: %s", bodyUser, w.bodyUser, req.Body)
		}
		return
	}
	if h := req.Header.Get("X-LLMUsage-User"); h != "sdk-user" {
		t.Errorf("X-LLMUsage-User %q, want sdk-user", h)
	}
	if bodyUser != nil {
		t.Errorf("body user %v without the scenario asking one", bodyUser)
	}
}

func TestRunTellsAnUnknownScenario(t *testing.T) {
	ft := &fakeT{TB: t}
	func() {
		defer func() { recover() }()
		sdktest.Run(ft, "no-such-scenario", "http://127.0.0.1:1")
	}()
	if !strings.Contains(ft.msg, "no-such-scenario") || !strings.Contains(ft.msg, "exit status 2") {
		t.Errorf("message %q", ft.msg)
	}
}

// fakeT records a Fatalf instead of failing the test.
type fakeT struct {
	testing.TB
	msg string
}

func (f *fakeT) Helper() {}

func (f *fakeT) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	panic("fatal")
}

// TestDefaultScenariosAgainstTheFake: the *-default scenarios (the SDKs'
// default options) call once, the *-twice ones twice, each answered at
// the first attempt, and say so (the *-exhausted ones too: the provider
// says its requests are spent, but only the sidecar acts on it).
func TestDefaultScenariosAgainstTheFake(t *testing.T) {
	for _, tc := range []struct {
		scenario, path string
		calls          int
	}{
		{"openai-chat-default", "/v1/chat/completions", 1},
		{"openai-chat-default-twice", "/v1/chat/completions", 2},
		{"anthropic-message-default", "/v1/messages", 1},
		{"anthropic-message-default-twice", "/v1/messages", 2},
		{"openai-chat-default-exhausted", "/v1/chat/completions", 2},
		{"anthropic-message-default-exhausted", "/v1/messages", 2},
	} {
		t.Run(tc.scenario, func(t *testing.T) {
			t.Parallel()
			fake := upstreamtest.Start(t)
			base := fake.URL + "/v1"
			if strings.HasPrefix(tc.scenario, "anthropic") {
				base = fake.URL
			}
			r := sdktest.Run(t, tc.scenario, base)
			if !r.OK || r.Text != upstreamtest.Text || r.Attempts != 1 || r.ElapsedMs < 0 {
				t.Fatalf("%s: %s, want the fake's answer at the first attempt", tc.scenario, r.Line)
			}
			reqs := fake.Requests()
			if len(reqs) != tc.calls {
				t.Fatalf("the fake received %d requests, want %d", len(reqs), tc.calls)
			}
			for _, req := range reqs {
				if req.Path != tc.path || req.Header.Get("X-LLMUsage-User") != "sdk-user" {
					t.Fatalf("request %s, user %q", req.Path, req.Header.Get("X-LLMUsage-User"))
				}
			}
		})
	}
}
