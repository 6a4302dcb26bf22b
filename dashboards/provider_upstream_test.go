package dashboards

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llmusage/llmusage/internal/sidecartest"
	"github.com/llmusage/llmusage/proxy"
)

// startRateLimitedUpstream is a fake OpenAI API whose answers carry the
// rate-limit headers of OpenAI's documentation, with 5 of 100 requests
// left (so that the provider quota panels have data, and the alert's
// condition holds), and whose every fourth answer is its own 429. A call
// of slowModel streams a chunk a second until the test ends: a call in
// flight for the Calls in flight panel.
func startRateLimitedUpstream(t *testing.T) string {
	t.Helper()
	var n atomic.Int64
	done := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		h := w.Header()
		if strings.Contains(string(body), slowModel) {
			h.Set("Content-Type", "text/event-stream")
			for {
				_, _ = io.WriteString(w, `data: {"id":"chatcmpl-2","object":"chat.completion.chunk","model":"`+slowModel+`","choices":[{"index":0,"delta":{"content":"."}}]}`+"\n\n")
				w.(http.Flusher).Flush()
				select {
				case <-done:
					return
				case <-r.Context().Done():
					return
				case <-time.After(time.Second):
				}
			}
		}
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
	t.Cleanup(func() { close(done) }) // before Close, which waits for the streams
	return srv.URL
}

// slowModel is the model whose calls the fake upstream never ends.
const slowModel = "slow-model"

// holdCall streams a call of slowModel for user through the sidecar's
// proxy until the test ends.
func holdCall(t *testing.T, s *sidecartest.Sidecar, user string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, s.APIURL()+"/openai/v1/chat/completions",
		strings.NewReader(fmt.Sprintf(`{"model":%q,"user":%q,"stream":true,"messages":[{"role":"user","content":"Hi"}]}`, slowModel, user)))
	if err != nil {
		t.Error(err)
		return
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer sk-test-dashboards")
	resp, err := s.Client.Do(req)
	if err != nil {
		return // the test is over
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("a call of %s through the proxy: %d", slowModel, resp.StatusCode)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
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

// checkProviderAlerts: the fake upstream's 5 of 100 requests left and its
// 429s fire LLMProviderRateLimitNearlyExhausted and LLMProviderThrottling,
// once each across the three sidecars (no instance), labelled with the
// key's fingerprint, and not for the tokens limit (97% left).
func checkProviderAlerts(t *testing.T, prom *promProc) {
	t.Helper()
	// The fingerprint of "sk-test-dashboards" (proxy.KeyFingerprint).
	key := keyFingerprint("sk-test-dashboards")
	for name, match := range map[string]func(a alert) bool{
		"LLMProviderRateLimitNearlyExhausted": func(a alert) bool {
			return a.Labels["provider"] == "openai" && a.Labels["model"] == "gpt-4o" && a.Labels["resource"] == "requests" && a.Labels["key"] == key
		},
		"LLMProviderThrottling": func(a alert) bool { return a.Labels["provider"] == "openai" && a.Labels["model"] == "gpt-4o" },
	} {
		sidecartest.WaitFor(t, 90*time.Second, func() bool {
			for _, a := range prom.alerts(t) {
				if a.Labels["alertname"] == name && a.State == "firing" && match(a) {
					return true
				}
			}
			return false
		}, "%s is not firing for openai gpt-4o", name)
		var n int
		for _, a := range prom.alerts(t) {
			if a.Labels["alertname"] != name {
				continue
			}
			if a.Labels["instance"] != "" || !match(a) {
				t.Errorf("%s: %+v, want one alert for openai gpt-4o without instance", name, a)
			}
			n++
		}
		if n != 1 {
			t.Errorf("%d %s alerts, want 1", n, name)
		}
	}
}

// keyFingerprint is proxy.KeyFingerprint of a bearer key.
func keyFingerprint(key string) string {
	h := http.Header{}
	h.Set("Authorization", "Bearer "+key)
	return proxy.KeyFingerprint(h)
}
