package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/llmusage/llmusage/internal/sidecartest"
	"github.com/llmusage/llmusage/internal/upstreamtest"
)

// proxyPost sends a provider request through the sidecar's proxy and
// returns the status, headers and the whole body.
func proxyPost(t *testing.T, s *sidecartest.Sidecar, path string, header map[string]string, body string) (int, http.Header, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, s.APIURL()+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := s.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

// logsOf waits for n stored records of user and returns them.
func logsOf(t *testing.T, s *sidecartest.Sidecar, user string, n int) []map[string]any {
	t.Helper()
	var logs []any
	sidecartest.WaitFor(t, 10*time.Second, func() bool {
		_, page := s.Get(t, "/api/llm/usage/logs?user_id="+user)
		logs, _ = page["logs"].([]any)
		return len(logs) >= n
	}, "%s's %d records were not stored", user, n)
	out := make([]map[string]any, len(logs))
	for i, l := range logs {
		out[i] = l.(map[string]any)
	}
	return out
}

func tokens(r map[string]any) string {
	return fmt.Sprintf("prompt %v completion %v cached %v reasoning %v", r["prompt_tokens"], r["completion_tokens"], r["cached_tokens"], r["reasoning_tokens"])
}

// TestProxyOpenAI: the OpenAI wire format through the proxy, against a
// fake upstream: answers relayed, usage recorded from the answer and the
// stream (asked for, and hidden from a client that did not ask), limits
// enforced before the upstream is called, keys passed through and kept
// out of the data.
func TestProxyOpenAI(t *testing.T) {
	up := upstreamtest.Start(t)
	s := sidecartest.Start(t, sidecartest.Options{
		Limits: "limits:\n  - user_id: bob\n    limit_type: minute\n    requests: 1\n",
		Flags:  []string{"--upstream", "openai=" + up.URL, "--flush-interval", "50ms", "--log-level", "debug"},
	})
	auth := map[string]string{"Authorization": "Bearer sk-test-secret-key", "X-LLMUsage-User": "alice"}

	code, _, body := proxyPost(t, s, "/openai/v1/chat/completions", auth, `{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"max_tokens":50}`)
	if code != http.StatusOK || !strings.Contains(body, upstreamtest.Text) {
		t.Fatalf("chat: %d %s", code, body)
	}
	code, _, body = proxyPost(t, s, "/openai/v1/chat/completions", auth, `{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}`)
	if code != http.StatusOK || !strings.Contains(body, `"Hello"`) || !strings.Contains(body, "[DONE]") {
		t.Fatalf("stream: %d %s", code, body)
	}
	if strings.Contains(body, `"usage":{`) {
		t.Fatalf("the usage chunk the proxy asked for reached a client that did not ask:\n%s", body)
	}
	reqs := up.Requests()
	if len(reqs) != 2 {
		t.Fatalf("upstream saw %d requests, want 2", len(reqs))
	}
	if got := reqs[1].JSON()["stream_options"]; fmt.Sprint(got) != "map[include_usage:true]" {
		t.Fatalf("the streamed request upstream has stream_options %v, want include_usage", got)
	}
	for _, r := range reqs {
		if r.Header.Get("Authorization") != "Bearer sk-test-secret-key" || r.Header.Get("X-LLMUsage-User") != "" {
			t.Fatalf("upstream headers %v: the key must pass untouched and the user header not at all", r.Header)
		}
	}
	want := fmt.Sprintf("prompt %d completion %d cached %d reasoning %d", upstreamtest.OpenAIUsage.Prompt, upstreamtest.OpenAIUsage.Completion, upstreamtest.OpenAIUsage.Cached, upstreamtest.OpenAIUsage.Reasoning)
	for _, r := range logsOf(t, s, "alice", 2) {
		if tokens(r) != want || r["provider"] != "openai" || r["status"] != "success" || r["cost_usd"] == nil {
			t.Fatalf("record %v, want %s from the upstream's usage, priced", r, want)
		}
	}
	if got := s.Gauge(`llm_tokens_total{model="gpt-4o",provider="openai",team="",token_type="prompt",user="alice"}`); got != float64(2*upstreamtest.OpenAIUsage.Prompt) {
		t.Fatalf("llm_tokens_total prompt = %v", got)
	}

	// Over the limit: 429 in OpenAI's shape, Retry-After, the upstream not called.
	bob := map[string]string{"Authorization": "Bearer sk-test-secret-key", "X-LLMUsage-User": "bob"}
	if code, _, body := proxyPost(t, s, "/openai/v1/chat/completions", bob, `{"model":"gpt-4o","messages":[]}`); code != http.StatusOK {
		t.Fatalf("bob's first call: %d %s", code, body)
	}
	n := len(up.Requests())
	code, h, body := proxyPost(t, s, "/openai/v1/chat/completions", bob, `{"model":"gpt-4o","messages":[]}`)
	var oaErr struct {
		Error struct{ Type, Message string } `json:"error"`
	}
	if code != http.StatusTooManyRequests || h.Get("Retry-After") == "" || json.Unmarshal([]byte(body), &oaErr) != nil || oaErr.Error.Message == "" {
		t.Fatalf("bob over the limit: %d %v %s", code, h, body)
	}
	if len(up.Requests()) != n {
		t.Fatal("the upstream was called for a refused call")
	}

	// The user from the body; none at all is a 400 in OpenAI's shape.
	if code, _, body := proxyPost(t, s, "/openai/v1/chat/completions", map[string]string{"Authorization": "Bearer k"}, `{"model":"gpt-4o","user":"carol","messages":[]}`); code != http.StatusOK {
		t.Fatalf("user in the body: %d %s", code, body)
	}
	logsOf(t, s, "carol", 1)
	if code, _, body := proxyPost(t, s, "/openai/v1/chat/completions", map[string]string{"Authorization": "Bearer k"}, `{"model":"gpt-4o","messages":[]}`); code != http.StatusBadRequest || !strings.Contains(body, "X-LLMUsage-User") {
		t.Fatalf("no user: %d %s", code, body)
	}

	// An upstream error is relayed and recorded as one.
	dave := map[string]string{"Authorization": "Bearer k", "X-LLMUsage-User": "dave"}
	if code, _, _ := proxyPost(t, s, "/openai/v1/chat/completions", dave, `{"model":"error-500","messages":[]}`); code != http.StatusInternalServerError {
		t.Fatalf("upstream error: %d", code)
	}
	if r := logsOf(t, s, "dave", 1)[0]; r["status"] != "error" || r["error_type"] == "" {
		t.Fatalf("upstream error's record %v", r)
	}

	// A stream the upstream cuts: recorded from what was relayed, marked.
	erin := map[string]string{"Authorization": "Bearer k", "X-LLMUsage-User": "erin"}
	proxyPost(t, s, "/openai/v1/chat/completions", erin, `{"model":"cut","stream":true,"messages":[]}`)
	r := logsOf(t, s, "erin", 1)[0]
	meta, _ := r["metadata"].(map[string]any)
	if r["status"] != "error" || meta["usage_estimated"] != true || r["completion_tokens"] == float64(0) || r["prompt_tokens"] == float64(0) {
		t.Fatalf("cut stream's record %v: want an error, usage estimated, never zero", r)
	}

	// Paths that are not calls pass through unmetered.
	req, _ := http.NewRequest(http.MethodGet, s.APIURL()+"/openai/v1/models", nil)
	if resp, err := s.Client.Do(req); err != nil {
		t.Fatal(err)
	} else {
		resp.Body.Close()
	}

	// No key anywhere: the data directory, the logs.
	assertNoSecret(t, s, "sk-test-secret-key")
}

// TestProxyAnthropic: the Messages API through the proxy: JSON and
// stream, counts as Anthropic reports them (input excludes the cache),
// the cumulative output of a stream taken once, cache writes stored.
func TestProxyAnthropic(t *testing.T) {
	up := upstreamtest.Start(t)
	s := sidecartest.Start(t, sidecartest.Options{Limits: "limits: []\n",
		Flags: []string{"--upstream", "anthropic=" + up.URL, "--flush-interval", "50ms"}})
	h := map[string]string{"X-Api-Key": "sk-ant-test-secret-key", "Anthropic-Version": "2023-06-01"}
	body := `{"model":"claude-3-5-sonnet-20241022","max_tokens":100,"metadata":{"user_id":"ann"},"messages":[{"role":"user","content":"hi"}]}`
	if code, _, out := proxyPost(t, s, "/anthropic/v1/messages", h, body); code != http.StatusOK || !strings.Contains(out, "Hello") {
		t.Fatalf("message: %d %s", code, out)
	}
	stream := strings.Replace(body, `"max_tokens":100`, `"max_tokens":100,"stream":true`, 1)
	if code, _, out := proxyPost(t, s, "/anthropic/v1/messages", h, stream); code != http.StatusOK || !strings.Contains(out, "message_stop") {
		t.Fatalf("stream: %d %s", code, out)
	}
	u := upstreamtest.AnthropicUsage
	want := fmt.Sprintf("prompt %d completion %d cached %d reasoning 0", u.Input+u.CacheRead+u.CacheWrite, u.Output, u.CacheRead)
	for _, r := range logsOf(t, s, "ann", 2) {
		if tokens(r) != want || r["provider"] != "anthropic" {
			t.Fatalf("record %v, want %s", r, want)
		}
		// cache_creation_input_tokens, stored and read back.
		if r["cache_write_tokens"] != float64(u.CacheWrite) {
			t.Fatalf("record %v, want cache_write_tokens %d", r, u.CacheWrite)
		}
	}
	if up.Requests()[0].Header.Get("X-Api-Key") != "sk-ant-test-secret-key" {
		t.Fatal("the key did not reach the upstream")
	}
	assertNoSecret(t, s, "sk-ant-test-secret-key")
}

// assertNoSecret fails t if secret is in the sidecar's data directory or log.
func assertNoSecret(t *testing.T, s *sidecartest.Sidecar, secret string) {
	t.Helper()
	if strings.Contains(s.Log(), secret) {
		t.Fatalf("the key is in the log")
	}
	dir := s.DataDir
	if dir == "" {
		dir = s.Dir
	}
	_ = filepath.Walk(dir, func(path string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return nil
		}
		if b, err := os.ReadFile(path); err == nil && bytes.Contains(b, []byte(secret)) {
			t.Errorf("the key is in %s", path)
		}
		return nil
	})
}

// TestProxyUpstreams: the sidecar's own key in place of the client's, an
// upstream that stalls (the idle timeout ends it, recorded), Groq's
// stream usage taken once, the Responses and Embeddings APIs metered.
func TestProxyUpstreams(t *testing.T) {
	up := upstreamtest.Start(t)
	keyFile := filepath.Join(t.TempDir(), "openai-key")
	if err := os.WriteFile(keyFile, []byte("sk-sidecar-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := sidecartest.Start(t, sidecartest.Options{Limits: "limits: []\n", Flags: []string{
		"--upstream", "openai=" + up.URL, "--upstream", "groq=" + up.URL, "--upstream-key-file", "openai=" + keyFile,
		"--upstream-idle-timeout", "300ms", "--flush-interval", "50ms"}})
	h := map[string]string{"Authorization": "Bearer client-key", "X-LLMUsage-User": "kim"}

	if code, _, body := proxyPost(t, s, "/openai/v1/chat/completions", h, `{"model":"gpt-4o","messages":[]}`); code != http.StatusOK {
		t.Fatalf("chat: %d %s", code, body)
	}
	if got := up.Requests()[0].Header.Get("Authorization"); got != "Bearer sk-sidecar-secret" {
		t.Fatalf("upstream Authorization %q, want the sidecar's key", got)
	}

	// Stalled after one chunk: the idle timeout ends it, as an error.
	start := time.Now()
	_, _, body := proxyPost(t, s, "/openai/v1/chat/completions", map[string]string{"X-LLMUsage-User": "stalled"}, `{"model":"stall","stream":true,"messages":[]}`)
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("a stalled upstream held the client %s", d)
	}
	if !strings.Contains(body, "data:") {
		t.Fatalf("the chunk before the stall did not reach the client: %q", body)
	}
	r := logsOf(t, s, "stalled", 1)[0]
	if meta, _ := r["metadata"].(map[string]any); r["error_type"] != "upstream_idle_timeout" || meta["usage_estimated"] != true {
		t.Fatalf("stalled stream's record %v", r)
	}

	// Groq: usage in x_groq.usage and again in a usage chunk, counted once.
	if code, _, body := proxyPost(t, s, "/groq/openai/v1/chat/completions", map[string]string{"X-LLMUsage-User": "gil"},
		`{"model":"llama-3.1-8b-instant","stream":true,"messages":[]}`); code != http.StatusOK || !strings.Contains(body, "Hello") {
		t.Fatalf("groq stream: %d %s", code, body)
	}
	g := logsOf(t, s, "gil", 1)[0]
	if g["provider"] != "groq" || g["prompt_tokens"] != float64(upstreamtest.GroqUsage.Prompt) || g["completion_tokens"] != float64(upstreamtest.GroqUsage.Completion) {
		t.Fatalf("groq record %v", g)
	}

	// The Responses and Embeddings APIs.
	for _, c := range []struct {
		user, path, body   string
		prompt, completion int
	}{
		{"rita", "/openai/v1/responses", `{"model":"gpt-4o","input":"hi"}`, upstreamtest.OpenAIUsage.Prompt, upstreamtest.OpenAIUsage.Completion},
		{"rosa", "/openai/v1/responses", `{"model":"gpt-4o","input":"hi","stream":true}`, upstreamtest.OpenAIUsage.Prompt, upstreamtest.OpenAIUsage.Completion},
		{"emma", "/openai/v1/embeddings", `{"model":"text-embedding-3-small","input":"hi"}`, upstreamtest.EmbeddingsUsage.Prompt, 0},
	} {
		if code, _, body := proxyPost(t, s, c.path, map[string]string{"X-LLMUsage-User": c.user}, c.body); code != http.StatusOK {
			t.Fatalf("%s: %d %s", c.path, code, body)
		}
		r := logsOf(t, s, c.user, 1)[0]
		if r["prompt_tokens"] != float64(c.prompt) || r["completion_tokens"] != float64(c.completion) || r["status"] != "success" {
			t.Fatalf("%s %s: record %v", c.path, c.body, r)
		}
	}
	assertNoSecret(t, s, "sk-sidecar-secret")
	assertNoSecret(t, s, "client-key")
}
