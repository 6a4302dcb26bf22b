package proxy

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llmusage/llmusage/collector"
	"github.com/llmusage/llmusage/limiter"
)

// lockedClock is a manual clock the test moves while the proxy's
// handlers read it.
type lockedClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *lockedClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *lockedClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// TestRefusalHeaders: the sidecar's own 429 says Retry-After and the IETF
// RateLimit fields of the bucket that refused, and x-should-retry: false
// when the wait is past ClientRetryMax, so that the official SDKs raise at
// once instead of sleeping through it; a short wait is left to their retry.
func TestRefusalHeaders(t *testing.T) {
	upstream := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"model":"m","usage":{"prompt_tokens":1,"completion_tokens":1,"input_tokens":1,"output_tokens":1}}`)
	})
	rules := []limiter.Rule{
		{Model: "fast", Window: limiter.Second, Unit: limiter.Requests, Limit: 1},
		{Model: "slow", Window: limiter.Minute, Unit: limiter.Requests, Limit: 1},
		{Model: "slow", Window: limiter.Minute, Unit: limiter.Requests, Limit: 1, Per: limiter.PerAll},
	}
	start := func(t *testing.T, retryMax time.Duration) (*httptest.Server, *lockedClock) {
		up := httptest.NewServer(upstream)
		t.Cleanup(up.Close)
		clk := &lockedClock{t: time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)}
		l, err := limiter.New(rules, limiter.Options{Clock: clk})
		if err != nil {
			t.Fatal(err)
		}
		u, _ := url.Parse(up.URL)
		p, err := New(Options{Collector: collector.New(collector.Options{Limiter: l, Sink: &sink{}, Clock: clk, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}), ClientRetryMax: retryMax,
			Upstreams: []Upstream{{Name: "openai", URL: u, Kind: OpenAI, Provider: "openai"}, {Name: "anthropic", URL: u, Kind: Anthropic, Provider: "anthropic"}},
			Logger:    slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			t.Fatal(err)
		}
		mux := http.NewServeMux()
		for _, r := range p.Routes() {
			mux.Handle(r.Pattern, r.Handler)
		}
		srv := httptest.NewServer(mux)
		t.Cleanup(srv.Close)
		return srv, clk
	}
	call := func(t *testing.T, srv *httptest.Server, route, path, model string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, srv.URL+"/"+route+path, strings.NewReader(`{"model":"`+model+`","max_tokens":1,"messages":[]}`))
		req.Header.Set("X-LLMUsage-User", "user-of-"+route)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = resp.Body.Close() })
		return resp
	}
	type want struct {
		retryAfter, retryAfterMs, shouldRetry, policy, rateLimit, errType string
	}
	refused := func(t *testing.T, resp *http.Response, w want) {
		t.Helper()
		if resp.StatusCode != http.StatusTooManyRequests {
			t.Fatalf("status %d, want 429", resp.StatusCode)
		}
		h := resp.Header
		got := want{h.Get("Retry-After"), h.Get("Retry-After-Ms"), h.Get("X-Should-Retry"), h.Get("RateLimit-Policy"), h.Get("RateLimit"), ""}
		var body struct {
			Error struct {
				Type    string `json:"type"`
				Message string `json:"message"`
			} `json:"error"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
			t.Fatal(err)
		}
		got.errType = body.Error.Type
		if got != w {
			t.Fatalf("refusal %+v, want %+v (message %q)", got, w, body.Error.Message)
		}
	}

	t.Run("default", func(t *testing.T) {
		srv, _ := start(t, 0)
		for _, route := range []string{"openai", "anthropic"} {
			path, errType := "/v1/chat/completions", "rate_limit_exceeded"
			if route == "anthropic" {
				path, errType = "/v1/messages", "rate_limit_error"
			}
			if resp := call(t, srv, route, path, "fast"); resp.StatusCode != http.StatusOK || resp.Header.Get("RateLimit") != "" {
				t.Fatalf("%s: first call %d, RateLimit %q: the upstream's answer, as it came", route, resp.StatusCode, resp.Header.Get("RateLimit"))
			}
			// A second's limit: back in 1 s, which the SDK's retry waits.
			refused(t, call(t, srv, route, path, "fast"), want{"1", "1000", "", `"second-requests";q=1;w=1`, `"second-requests";r=0;t=1`, errType})
		}
		if resp := call(t, srv, "openai", "/v1/chat/completions", "slow"); resp.StatusCode != http.StatusOK {
			t.Fatalf("first slow call: %d", resp.StatusCode)
		}
		// A minute's limit, the user's and the pool's: a minute's wait,
		// past 5 s: not to be retried. Both refuse alike; the user's,
		// first, names it.
		refused(t, call(t, srv, "openai", "/v1/chat/completions", "slow"),
			want{"60", "60000", "false", `"minute-requests";q=1;w=60`, `"minute-requests";r=0;t=60`, "rate_limit_exceeded"})
		// Another user: refused by the pool alone.
		refused(t, call(t, srv, "anthropic", "/v1/messages", "slow"),
			want{"60", "60000", "false", `"all-minute-requests";q=1;w=60`, `"all-minute-requests";r=0;t=60`, "rate_limit_error"})
	})
	t.Run("never retried", func(t *testing.T) {
		srv, _ := start(t, -1)
		call(t, srv, "openai", "/v1/chat/completions", "fast")
		refused(t, call(t, srv, "openai", "/v1/chat/completions", "fast"),
			want{"1", "1000", "false", `"second-requests";q=1;w=1`, `"second-requests";r=0;t=1`, "rate_limit_exceeded"})
	})
	t.Run("a minute retried", func(t *testing.T) {
		srv, _ := start(t, time.Minute)
		call(t, srv, "openai", "/v1/chat/completions", "slow")
		refused(t, call(t, srv, "openai", "/v1/chat/completions", "slow"),
			want{"60", "60000", "", `"minute-requests";q=1;w=60`, `"minute-requests";r=0;t=60`, "rate_limit_exceeded"})
	})
	t.Run("a short wait", func(t *testing.T) {
		// retry-after-ms keeps 300 ms from being rounded up to the
		// second that Retry-After must say.
		srv, clk := start(t, 0)
		call(t, srv, "openai", "/v1/chat/completions", "fast")
		clk.Advance(700 * time.Millisecond)
		refused(t, call(t, srv, "openai", "/v1/chat/completions", "fast"),
			want{"1", "300", "", `"second-requests";q=1;w=1`, `"second-requests";r=0;t=1`, "rate_limit_exceeded"})
	})
}
