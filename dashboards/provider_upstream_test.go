package dashboards

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/llmusage/llmusage/internal/sidecartest"
)

// startRateLimitedUpstream is a fake OpenAI API whose answers carry the
// rate-limit headers of OpenAI's documentation, with 5 of 100 requests
// left (so that the provider quota panels have data, and the alert's
// condition holds), and whose every fourth answer is its own 429.
func startRateLimitedUpstream(t *testing.T) string {
	t.Helper()
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		h := w.Header()
		h.Set("x-ratelimit-limit-requests", "100")
		h.Set("x-ratelimit-remaining-requests", "5")
		h.Set("x-ratelimit-reset-requests", "1m30s")
		h.Set("x-ratelimit-limit-tokens", "30000")
		h.Set("x-ratelimit-remaining-tokens", "29000")
		h.Set("x-ratelimit-reset-tokens", "6ms")
		h.Set("Content-Type", "application/json")
		if n.Add(1)%4 == 0 {
			h.Set("retry-after", "1")
			w.WriteHeader(http.StatusTooManyRequests)
			_, _ = io.WriteString(w, `{"error":{"message":"Rate limit reached for requests","type":"requests","code":"rate_limit_exceeded"}}`)
			return
		}
		_, _ = io.WriteString(w, `{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-4o","choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"completion_tokens":2,"total_tokens":12}}`)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// proxyCall makes a chat call through the sidecar's proxy (route openai),
// with an API key whose fingerprint labels the provider quota series.
func proxyCall(t *testing.T, s *sidecartest.Sidecar, user string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, s.APIURL()+"/openai/v1/chat/completions",
		strings.NewReader(fmt.Sprintf(`{"model":"gpt-4o","user":%q,"messages":[{"role":"user","content":"Hi"}]}`, user)))
	if err != nil {
		t.Error(err)
		return
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer sk-test-dashboards")
	resp, err := s.Client.Do(req)
	if err != nil {
		t.Error(err)
		return
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusTooManyRequests {
		t.Errorf("POST /openai/v1/chat/completions through the proxy: %d", resp.StatusCode)
	}
}
