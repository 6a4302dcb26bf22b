package proxy

import (
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llmusage/llmusage/collector"
	"github.com/llmusage/llmusage/exporter"
	"github.com/llmusage/llmusage/limiter"
)

func headers(kv ...string) http.Header {
	h := http.Header{}
	for i := 0; i+1 < len(kv); i += 2 {
		h.Set(kv[i], kv[i+1])
	}
	return h
}

// The example header sets of each provider's documentation.
var (
	// platform.openai.com/docs/guides/rate-limits
	openAIExample = headers(
		"x-ratelimit-limit-requests", "60",
		"x-ratelimit-limit-tokens", "150000",
		"x-ratelimit-remaining-requests", "59",
		"x-ratelimit-remaining-tokens", "149984",
		"x-ratelimit-reset-requests", "1s",
		"x-ratelimit-reset-tokens", "6m0s")
	// console.groq.com/docs/rate-limits
	groqExample = headers(
		"retry-after", "2",
		"x-ratelimit-limit-requests", "14400",
		"x-ratelimit-limit-tokens", "18000",
		"x-ratelimit-remaining-requests", "14370",
		"x-ratelimit-remaining-tokens", "17997",
		"x-ratelimit-reset-requests", "2m59.56s",
		"x-ratelimit-reset-tokens", "7.66s")
	// docs.anthropic.com/en/api/rate-limits (response headers)
	anthropicExample = headers(
		"anthropic-ratelimit-requests-limit", "50",
		"anthropic-ratelimit-requests-remaining", "49",
		"anthropic-ratelimit-requests-reset", "2026-12-08T00:00:01Z",
		"anthropic-ratelimit-tokens-limit", "100000",
		"anthropic-ratelimit-tokens-remaining", "98000",
		"anthropic-ratelimit-tokens-reset", "2026-12-08T00:00:30.5Z",
		"anthropic-ratelimit-input-tokens-limit", "80000",
		"anthropic-ratelimit-input-tokens-remaining", "79000",
		"anthropic-ratelimit-input-tokens-reset", "2026-12-08T00:00:06Z",
		"anthropic-ratelimit-output-tokens-limit", "20000",
		"anthropic-ratelimit-output-tokens-remaining", "19000",
		"anthropic-ratelimit-output-tokens-reset", "2026-12-08T00:00:03Z",
		"retry-after", "1")
	// Mistral's tokens-a-minute headers.
	mistralExample = headers(
		"x-ratelimitbysize-limit-minute", "500000",
		"x-ratelimitbysize-remaining-minute", "499000",
		"x-ratelimitbysize-limit-month", "1000000000",
		"x-ratelimitbysize-remaining-month", "999000000",
		"ratelimitbysize-reset", "29")
)

func TestParseRateLimits(t *testing.T) {
	now := time.Date(2026, 12, 8, 0, 0, 0, 0, time.UTC)
	nan := math.NaN()
	type want struct {
		resource         string
		limit, remaining float64
		reset            time.Duration // from now; -1 for none
	}
	cases := []struct {
		name string
		kind Kind
		h    http.Header
		want []want
	}{
		{"openai", OpenAI, openAIExample, []want{{"requests", 60, 59, time.Second}, {"tokens", 150000, 149984, 6 * time.Minute}}},
		{"groq", OpenAI, groqExample, []want{{"requests", 14400, 14370, 2*time.Minute + 59560*time.Millisecond}, {"tokens", 18000, 17997, 7660 * time.Millisecond}}},
		{"anthropic", Anthropic, anthropicExample, []want{
			{"requests", 50, 49, time.Second}, {"tokens", 100000, 98000, 30500 * time.Millisecond},
			{"input_tokens", 80000, 79000, 6 * time.Second}, {"output_tokens", 20000, 19000, 3 * time.Second}}},
		{"mistral", OpenAI, mistralExample, []want{{"tokens", 500000, 499000, 29 * time.Second}}},
		{"xai, deepseek: OpenAI's names", OpenAI, headers("x-ratelimit-limit-requests", "480", "x-ratelimit-remaining-requests", "479", "x-ratelimit-reset-requests", "6ms"),
			[]want{{"requests", 480, 479, 6 * time.Millisecond}}},
		{"an error with only remaining", OpenAI, headers("x-ratelimit-remaining-tokens", "0", "x-ratelimit-reset-tokens", "1m30s"),
			[]want{{"tokens", nan, 0, 90 * time.Second}}},
		{"seconds as reset", OpenAI, headers("x-ratelimit-limit-requests", "10", "x-ratelimit-reset-requests", "2.5"),
			[]want{{"requests", 10, nan, 2500 * time.Millisecond}}},
		{"garbage", OpenAI, headers("x-ratelimit-limit-requests", "many", "x-ratelimit-remaining-requests", "-1", "x-ratelimit-reset-requests", "soon"), nil},
		{"none", OpenAI, http.Header{}, nil},
		{"anthropic headers on an OpenAI route are not read", OpenAI, anthropicExample, nil},
	}
	same := func(a, b float64) bool { return a == b || math.IsNaN(a) && math.IsNaN(b) }
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := ParseRateLimits(tc.kind, tc.h, now)
			if len(got) != len(tc.want) {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
			for i, w := range tc.want {
				g := got[i]
				reset := time.Duration(-1)
				if !g.Reset.IsZero() {
					reset = g.Reset.Sub(now)
				}
				if g.Resource != w.resource || !same(g.Limit, w.limit) || !same(g.Remaining, w.remaining) || reset != w.reset {
					t.Fatalf("%d: got %+v (reset in %v), want %+v", i, g, reset, w)
				}
			}
		})
	}
}

func TestKeyFingerprint(t *testing.T) {
	bearer := KeyFingerprint(headers("Authorization", "Bearer sk-proj-abc123"))
	apiKey := KeyFingerprint(headers("X-Api-Key", "sk-proj-abc123"))
	other := KeyFingerprint(headers("Authorization", "Bearer sk-proj-abc124"))
	if !regexp.MustCompile(`^[0-9a-f]{8}$`).MatchString(bearer) {
		t.Fatalf("fingerprint %q: want 8 hex digits", bearer)
	}
	// The runbook's shell command gives the same:
	// printf 'llmusage provider key fingerprint v1\0%s' sk-proj-abc123 | sha256sum | cut -c1-8
	if bearer != "4ecf4d81" {
		t.Fatalf("fingerprint %q, want 4ecf4d81 as the runbook computes it", bearer)
	}
	if bearer != apiKey || bearer == other {
		t.Fatalf("fingerprints %q %q %q: want the same key alike, two keys apart", bearer, apiKey, other)
	}
	if again := KeyFingerprint(headers("Authorization", "bearer  sk-proj-abc123 ")); again != bearer {
		t.Fatalf("fingerprint not stable: %q, %q", again, bearer)
	}
	if fp := KeyFingerprint(http.Header{}); fp != "" {
		t.Fatalf("no key: %q", fp)
	}
}

// rateLimitProxy serves a proxy with an exporter to upstream as route name
// of kind k, and the exporter's /metrics.
func rateLimitProxy(t *testing.T, name string, k Kind, provider string, upstream http.Handler) (proxyURL, metricsURL string) {
	return rateLimitProxyWithKey(t, name, k, provider, "", upstream)
}

// rateLimitProxyWithKey is rateLimitProxy with the sidecar's own key for
// the upstream (--upstream-key-file) when key is set.
func rateLimitProxyWithKey(t *testing.T, name string, k Kind, provider, key string, upstream http.Handler) (proxyURL, metricsURL string) {
	t.Helper()
	up := httptest.NewServer(upstream)
	t.Cleanup(up.Close)
	l, err := limiter.New(nil, limiter.Options{})
	if err != nil {
		t.Fatal(err)
	}
	exp := exporter.New(exporter.Options{})
	u, _ := url.Parse(up.URL)
	p, err := New(Options{Collector: collector.New(collector.Options{Limiter: l, Sink: &sink{}, Observer: exp}),
		Upstreams:  []Upstream{{Name: name, URL: u, Kind: k, Provider: provider, Key: key}},
		RateLimits: exp, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	for _, r := range p.Routes() {
		mux.Handle(r.Pattern, r.Handler)
	}
	mux.Handle("/metrics", exp.Handler())
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv.URL, srv.URL + "/metrics"
}

func callWithKey(t *testing.T, url, header, value, body string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	req.Header.Set("X-LLMUsage-User", "u")
	req.Header.Set(header, value)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return resp.StatusCode
}

// metricValue returns the value of the series of metrics text with exactly
// the labels given, and whether there is one.
func metricValue(t *testing.T, text, series string) (float64, bool) {
	t.Helper()
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return f, true
		}
	}
	return 0, false
}

func scrape(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// TestProviderRateLimitsThroughProxy: the headers of an OpenAI-shaped and
// an Anthropic upstream, success and 429 alike, end up in the exporter's
// gauges, labelled with the model sent and the key's fingerprint; the
// upstream's 429s count in llm_provider_throttled_total.
func TestProviderRateLimitsThroughProxy(t *testing.T) {
	var calls atomic.Int32
	proxyURL, metrics := rateLimitProxy(t, "groq", OpenAI, "groq", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := calls.Add(1)
		for k, v := range groqExample {
			w.Header()[k] = v
		}
		if n > 1 {
			// The 429 says the tokens are gone.
			w.Header().Set("x-ratelimit-remaining-tokens", "0")
			w.Header().Set("x-ratelimit-reset-tokens", "1m30s")
			w.Header().Del("x-ratelimit-limit-tokens")
			w.Header().Set("retry-after", "600")
			w.WriteHeader(http.StatusTooManyRequests)
			_, _ = io.WriteString(w, `{"error":{"message":"Rate limit reached","type":"tokens"}}`)
			return
		}
		_, _ = io.WriteString(w, `{"model":"llama-3.1-8b-instant","usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}`)
	}))
	body := `{"model":"llama-3.1-8b-instant","messages":[]}`
	if code := callWithKey(t, proxyURL+"/groq/openai/v1/chat/completions", "Authorization", "Bearer gsk-one", body); code != http.StatusOK {
		t.Fatalf("first call: %d", code)
	}
	fp := KeyFingerprint(headers("Authorization", "Bearer gsk-one"))
	labels := func(resource string) string {
		return `{key="` + fp + `",model="llama-3.1-8b-instant",provider="groq",resource="` + resource + `"}`
	}
	text := scrape(t, metrics)
	for series, want := range map[string]float64{
		"llm_provider_ratelimit_limit" + labels("requests"):                          14400,
		"llm_provider_ratelimit_remaining" + labels("requests"):                      14370,
		"llm_provider_ratelimit_limit" + labels("tokens"):                            18000,
		"llm_provider_ratelimit_remaining" + labels("tokens"):                        17997,
		`llm_provider_throttled_total{model="llama-3.1-8b-instant",provider="groq"}`: 0,
	} {
		if got, ok := metricValue(t, text, series); !ok || got != want {
			t.Fatalf("%s = %v (found %v), want %v\n%s", series, got, ok, want, text)
		}
	}
	if reset, ok := metricValue(t, text, "llm_provider_ratelimit_reset_seconds"+labels("requests")); !ok || reset <= 170 || reset > 179.56 {
		t.Fatalf("requests reset in %v s (found %v), want just under 179.56", reset, ok)
	}
	if strings.Contains(text, "gsk-one") {
		t.Fatal("the key is in the metrics")
	}

	if code := callWithKey(t, proxyURL+"/groq/openai/v1/chat/completions", "Authorization", "Bearer gsk-one", body); code != http.StatusTooManyRequests {
		t.Fatalf("second call: %d, want the upstream's 429", code)
	}
	text = scrape(t, metrics)
	for series, want := range map[string]float64{
		"llm_provider_ratelimit_limit" + labels("tokens"):                            18000, // kept: the 429 did not say
		"llm_provider_ratelimit_remaining" + labels("tokens"):                        0,
		`llm_provider_throttled_total{model="llama-3.1-8b-instant",provider="groq"}`: 1,
	} {
		if got, ok := metricValue(t, text, series); !ok || got != want {
			t.Fatalf("after the 429: %s = %v (found %v), want %v\n%s", series, got, ok, want, text)
		}
	}
	if reset, ok := metricValue(t, text, "llm_provider_ratelimit_reset_seconds"+labels("tokens")); !ok || reset <= 80 || reset > 90 {
		t.Fatalf("tokens reset in %v s (found %v), want just under 90", reset, ok)
	}
	// The 429's retry-after, the latest, replaced the success's 2 s.
	retry := `llm_provider_retry_after_seconds{key="` + fp + `",model="llama-3.1-8b-instant",provider="groq"}`
	if s, ok := metricValue(t, text, retry); !ok || s <= 500 || s > 600 {
		t.Fatalf("%s = %v (found %v), want just under 600", retry, s, ok)
	}

	// A second key is a series of its own.
	_ = callWithKey(t, proxyURL+"/groq/openai/v1/chat/completions", "Authorization", "Bearer gsk-two", body)
	fp2 := KeyFingerprint(headers("Authorization", "Bearer gsk-two"))
	if _, ok := metricValue(t, scrape(t, metrics), `llm_provider_ratelimit_limit{key="`+fp2+`",model="llama-3.1-8b-instant",provider="groq",resource="requests"}`); !ok || fp2 == fp {
		t.Fatal("no series for the second key")
	}
}

func TestAnthropicRateLimitsThroughProxy(t *testing.T) {
	reset := time.Now().Add(40 * time.Second).UTC().Format(time.RFC3339)
	proxyURL, metrics := rateLimitProxy(t, "anthropic", Anthropic, "anthropic", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for k, v := range anthropicExample {
			w.Header()[k] = v
		}
		w.Header().Set("anthropic-ratelimit-input-tokens-reset", reset)
		w.Header().Set("anthropic-ratelimit-requests-reset", "2020-01-01T00:00:00Z")
		w.WriteHeader(http.StatusTooManyRequests)
		_, _ = io.WriteString(w, `{"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit"}}`)
	}))
	code := callWithKey(t, proxyURL+"/anthropic/v1/messages", "X-Api-Key", "sk-ant-one", `{"model":"claude-sonnet-4-5","max_tokens":10,"messages":[]}`)
	if code != http.StatusTooManyRequests {
		t.Fatalf("call: %d", code)
	}
	fp := KeyFingerprint(headers("X-Api-Key", "sk-ant-one"))
	text := scrape(t, metrics)
	lv := `{key="` + fp + `",model="claude-sonnet-4-5",provider="anthropic",resource="`
	for series, want := range map[string]float64{
		"llm_provider_ratelimit_limit" + lv + `requests"}`:                             50,
		"llm_provider_ratelimit_remaining" + lv + `output_tokens"}`:                    19000,
		"llm_provider_ratelimit_limit" + lv + `input_tokens"}`:                         80000,
		`llm_provider_throttled_total{model="claude-sonnet-4-5",provider="anthropic"}`: 1,
	} {
		if got, ok := metricValue(t, text, series); !ok || got != want {
			t.Fatalf("%s = %v (found %v), want %v\n%s", series, got, ok, want, text)
		}
	}
	if s, ok := metricValue(t, text, "llm_provider_ratelimit_reset_seconds"+lv+`input_tokens"}`); !ok || s < 30 || s > 41 {
		t.Fatalf("input tokens reset in %v s (found %v), want about 40", s, ok)
	}
	// A reset in the past (the example's fixed date) is 0, not negative.
	if s, ok := metricValue(t, text, "llm_provider_ratelimit_reset_seconds"+lv+`requests"}`); !ok || s != 0 {
		t.Fatalf("past reset: %v (found %v), want 0", s, ok)
	}
}

// TestRateLimitKeyIsTheOneSent: with the sidecar's own key the series are
// labelled with its fingerprint, not the client's.
func TestRateLimitKeyIsTheOneSent(t *testing.T) {
	proxyURL, metrics := rateLimitProxyWithKey(t, "openai", OpenAI, "openai", "sk-sidecar-secret", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for k, v := range openAIExample {
			w.Header()[k] = v
		}
		_, _ = io.WriteString(w, `{"usage":{"prompt_tokens":1,"completion_tokens":1}}`)
	}))
	if code := callWithKey(t, proxyURL+"/openai/v1/chat/completions", "Authorization", "Bearer client-key", `{"model":"gpt-4o","messages":[]}`); code != http.StatusOK {
		t.Fatalf("call: %d", code)
	}
	text := scrape(t, metrics)
	sidecar := KeyFingerprint(headers("Authorization", "Bearer sk-sidecar-secret"))
	if _, ok := metricValue(t, text, `llm_provider_ratelimit_remaining{key="`+sidecar+`",model="gpt-4o",provider="openai",resource="tokens"}`); !ok {
		t.Fatalf("no series for the sidecar's key %s:\n%s", sidecar, text)
	}
	if client := KeyFingerprint(headers("Authorization", "Bearer client-key")); strings.Contains(text, client) {
		t.Fatal("the client's key, replaced, labels a series")
	}
}
