package proxy

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llmusage/llmusage/collector"
	"github.com/llmusage/llmusage/limiter"
)

// countingObserver counts the headroom refusals by provider.
type countingObserver struct {
	mu       sync.Mutex
	refusals map[string]int
}

func (o *countingObserver) ObserveProviderRateLimit(string, string, string, string, float64, float64, time.Time) {
}
func (o *countingObserver) ObserveProviderAnswer(string, string, bool)                  {}
func (o *countingObserver) ObserveProviderRetryAfter(string, string, string, time.Time) {}
func (o *countingObserver) ObserveHeadroomRefusals(provider string, n int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.refusals[provider] += n
}

func (o *countingObserver) count(provider string) (int, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	n, ok := o.refusals[provider]
	return n, ok
}

// fakeProvider is an upstream that counts its calls by key and model and
// answers with the headers the test gives it.
type fakeProvider struct {
	mu      sync.Mutex
	calls   map[string]int
	status  int
	headers http.Header
}

func (f *fakeProvider) set(status int, kv ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.status, f.headers = status, http.Header{}
	for i := 0; i+1 < len(kv); i += 2 {
		f.headers.Set(kv[i], kv[i+1])
	}
}

func (f *fakeProvider) n(key, model string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[key+" "+model]
}

func (f *fakeProvider) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Model string `json:"model"`
	}
	_ = json.NewDecoder(r.Body).Decode(&body)
	key := r.Header.Get("X-Api-Key")
	if key == "" {
		key = strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
	}
	f.mu.Lock()
	f.calls[key+" "+body.Model]++
	status, headers := f.status, f.headers.Clone()
	f.mu.Unlock()
	for k, v := range headers {
		w.Header()[k] = v
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, `{"model":"`+body.Model+`","usage":{"prompt_tokens":1,"completion_tokens":1,"input_tokens":1,"output_tokens":1}}`)
}

type headroomSetup struct {
	srv      *httptest.Server
	up       *fakeProvider
	clock    *lockedClock
	observer *countingObserver
	sink     *sink
}

// startHeadroom serves a proxy in mode to a fakeProvider (routes openai,
// anthropic, and sidecar-key with the sidecar's own key), on a manual
// clock, with a user limit of 3 requests a minute.
func startHeadroom(t *testing.T, mode Headroom) *headroomSetup {
	t.Helper()
	s := &headroomSetup{up: &fakeProvider{calls: map[string]int{}, status: http.StatusOK, headers: http.Header{}},
		clock: &lockedClock{t: time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)}, observer: &countingObserver{refusals: map[string]int{}}, sink: &sink{}}
	up := httptest.NewServer(s.up)
	t.Cleanup(up.Close)
	l, err := limiter.New([]limiter.Rule{{Window: limiter.Minute, Unit: limiter.Requests, Limit: 3}}, limiter.Options{Clock: s.clock})
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(up.URL)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	p, err := New(Options{Collector: collector.New(collector.Options{Limiter: l, Sink: s.sink, Clock: s.clock, Logger: logger}),
		Upstreams: []Upstream{{Name: "openai", URL: u, Kind: OpenAI, Provider: "openai"}, {Name: "anthropic", URL: u, Kind: Anthropic, Provider: "anthropic"},
			{Name: "sidecar-key", URL: u, Kind: OpenAI, Provider: "sidecar-key", Key: "sk-sidecar"}},
		Logger: logger, Headroom: mode, Clock: s.clock, RateLimits: s.observer})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	for _, r := range p.Routes() {
		mux.Handle(r.Pattern, r.Handler)
	}
	s.srv = httptest.NewServer(mux)
	t.Cleanup(s.srv.Close)
	return s
}

type answer struct {
	status                                  int
	retryAfter, retryAfterMs, shouldRetry   string
	errType, message, anthropicEnvelopeType string
}

// call sends one metered call as user with key to route and model.
func (s *headroomSetup) call(t *testing.T, route, user, key, model string) answer {
	t.Helper()
	path, body := "/v1/chat/completions", `{"model":"`+model+`","max_tokens":10,"messages":[]}`
	if route == "anthropic" {
		path = "/v1/messages"
	}
	req, _ := http.NewRequest(http.MethodPost, s.srv.URL+"/"+route+path, strings.NewReader(body))
	req.Header.Set("X-LLMUsage-User", user)
	if route == "anthropic" {
		req.Header.Set("X-Api-Key", key)
	} else {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	a := answer{status: resp.StatusCode, retryAfter: resp.Header.Get("Retry-After"), retryAfterMs: resp.Header.Get("Retry-After-Ms"),
		shouldRetry: resp.Header.Get("X-Should-Retry")}
	if resp.StatusCode == http.StatusTooManyRequests {
		var e struct {
			Type  string `json:"type"`
			Error struct {
				Type    string `json:"type"`
				Message string `json:"message"`
			} `json:"error"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
			t.Fatal(err)
		}
		a.errType, a.message, a.anthropicEnvelopeType = e.Error.Type, e.Error.Message, e.Type
	}
	return a
}

// TestHeadroomRespect: after an answer with no requests left until a
// reset 2 s away, the next call of that key and model gets the sidecar's
// 429 without reaching the provider or costing the user a request; once
// the reset has passed, calls reach the provider again.
func TestHeadroomRespect(t *testing.T) {
	s := startHeadroom(t, HeadroomRespect)
	if n, ok := s.observer.count("openai"); !ok || n != 0 {
		t.Fatalf("refusals of openai at start: %d (made: %v), want a series at 0", n, ok)
	}
	s.up.set(http.StatusOK, "X-Ratelimit-Remaining-Requests", "0", "X-Ratelimit-Reset-Requests", "2s")
	if a := s.call(t, "openai", "alice", "sk-a", "gpt-4o"); a.status != http.StatusOK {
		t.Fatalf("first call: %+v", a)
	}
	a := s.call(t, "openai", "alice", "sk-a", "gpt-4o")
	if a.status != http.StatusTooManyRequests || a.retryAfter != "2" || a.retryAfterMs != "2000" || a.shouldRetry != "" || a.errType != "rate_limit_exceeded" {
		t.Fatalf("the call after remaining 0: %+v, want 429, Retry-After 2, retry-after-ms 2000, left to the SDK's retry", a)
	}
	if !strings.Contains(a.message, "openai has no requests left") || !strings.Contains(a.message, "gpt-4o") || strings.Contains(a.message, "sk-a") {
		t.Fatalf("message %q: want the provider, resource and model named, never the key", a.message)
	}
	if n := s.up.n("sk-a", "gpt-4o"); n != 1 {
		t.Fatalf("the provider saw %d calls, want 1", n)
	}
	if n, _ := s.observer.count("openai"); n != 1 {
		t.Fatalf("%d refusals counted, want 1", n)
	}
	s.clock.Advance(1500 * time.Millisecond)
	if a := s.call(t, "openai", "alice", "sk-a", "gpt-4o"); a.status != http.StatusTooManyRequests || a.retryAfter != "1" || a.retryAfterMs != "500" {
		t.Fatalf("half a second before the reset: %+v, want Retry-After 1, retry-after-ms 500", a)
	}
	s.clock.Advance(500 * time.Millisecond)
	s.up.set(http.StatusOK, "X-Ratelimit-Remaining-Requests", "5", "X-Ratelimit-Reset-Requests", "1s")
	// The user's limit is 3 a minute: the third call passes only if the
	// two refusals took nothing from it.
	for i := range 2 {
		if a := s.call(t, "openai", "alice", "sk-a", "gpt-4o"); a.status != http.StatusOK {
			t.Fatalf("call %d after the reset: %+v", i+1, a)
		}
	}
	if n := s.up.n("sk-a", "gpt-4o"); n != 3 {
		t.Fatalf("the provider saw %d calls, want 3", n)
	}
	if a := s.call(t, "openai", "alice", "sk-a", "gpt-4o"); a.status != http.StatusTooManyRequests || !strings.Contains(a.message, "user alice") {
		t.Fatalf("the user's fourth call: %+v, want the user's own limit", a)
	}
	if recs := s.sink.wait(t, 3); len(recs) != 3 {
		t.Fatalf("%d records, want 3: refusals are not calls", len(recs))
	}
	if n, _ := s.observer.count("openai"); n != 2 {
		t.Fatalf("%d refusals counted, want 2", n)
	}
}

// TestHeadroomOff: by default the provider decides every call.
func TestHeadroomOff(t *testing.T) {
	s := startHeadroom(t, HeadroomOff)
	s.up.set(http.StatusOK, "X-Ratelimit-Remaining-Requests", "0", "X-Ratelimit-Reset-Requests", "2s")
	for i := range 2 {
		if a := s.call(t, "openai", "alice", "sk-a", "gpt-4o"); a.status != http.StatusOK {
			t.Fatalf("call %d: %+v", i+1, a)
		}
	}
	s.up.set(http.StatusTooManyRequests, "Retry-After", "20")
	s.call(t, "openai", "alice", "sk-a", "gpt-4o")
	if n := s.up.n("sk-a", "gpt-4o"); n != 3 {
		t.Fatalf("the provider saw %d calls, want 3", n)
	}
	if _, ok := s.observer.count("openai"); ok {
		t.Fatal("refusals counted with headroom off")
	}
}

// TestHeadroomKeys: a key, a model and a provider are apart; with the
// sidecar's own key, every client's call goes out with the same key.
func TestHeadroomKeys(t *testing.T) {
	s := startHeadroom(t, HeadroomRespect)
	s.up.set(http.StatusOK, "X-Ratelimit-Remaining-Requests", "0", "X-Ratelimit-Reset-Requests", "30s")
	s.call(t, "openai", "alice", "sk-a", "gpt-4o")
	s.up.set(http.StatusOK)
	for _, c := range []struct{ route, key, model string }{
		{"openai", "sk-b", "gpt-4o"},
		{"openai", "sk-a", "gpt-4o-mini"},
		{"anthropic", "sk-a", "gpt-4o"},
	} {
		if a := s.call(t, c.route, "bob", c.key, c.model); a.status != http.StatusOK {
			t.Fatalf("%+v: %+v, want it through", c, a)
		}
	}
	a := s.call(t, "openai", "bob", "sk-a", "gpt-4o")
	if a.status != http.StatusTooManyRequests || a.retryAfter != "30" || a.retryAfterMs != "30000" || a.shouldRetry != "false" {
		t.Fatalf("another user of the exhausted key: %+v, want 429 for 30 s, past --proxy-client-retry-max: not retried", a)
	}
	if n := s.up.n("sk-a", "gpt-4o"); n != 2 {
		t.Fatalf("the provider saw %d calls of the key and model, want 2: the first, and one to the other provider", n)
	}

	s.up.set(http.StatusOK, "X-Ratelimit-Remaining-Requests", "0", "X-Ratelimit-Reset-Requests", "30s")
	s.call(t, "sidecar-key", "alice", "client-1", "m")
	if a := s.call(t, "sidecar-key", "bob", "client-2", "m"); a.status != http.StatusTooManyRequests {
		t.Fatalf("another client of the sidecar's key: %+v, want 429", a)
	}
	if n := s.up.n("sk-sidecar", "m"); n != 1 {
		t.Fatalf("the provider saw %d calls with the sidecar's key, want 1", n)
	}
}

// TestHeadroomAnthropic: Anthropic's header names and RFC 3339 resets,
// and the refusal in Anthropic's error format.
func TestHeadroomAnthropic(t *testing.T) {
	s := startHeadroom(t, HeadroomRespect)
	reset := s.clock.Now().Add(2 * time.Second).Format(time.RFC3339)
	s.up.set(http.StatusOK, "Anthropic-Ratelimit-Input-Tokens-Remaining", "0", "Anthropic-Ratelimit-Input-Tokens-Reset", reset,
		"Anthropic-Ratelimit-Requests-Remaining", "10", "Anthropic-Ratelimit-Requests-Reset", reset)
	s.call(t, "anthropic", "alice", "sk-ant", "claude-3-5-haiku")
	a := s.call(t, "anthropic", "alice", "sk-ant", "claude-3-5-haiku")
	if a.status != http.StatusTooManyRequests || a.errType != "rate_limit_error" || a.anthropicEnvelopeType != "error" ||
		a.retryAfter != "2" || a.retryAfterMs != "2000" || !strings.Contains(a.message, "input_tokens") {
		t.Fatalf("after input tokens ran out: %+v, want Anthropic's rate_limit_error for 2 s", a)
	}
	s.clock.Advance(2 * time.Second)
	s.up.set(http.StatusOK)
	if a := s.call(t, "anthropic", "alice", "sk-ant", "claude-3-5-haiku"); a.status != http.StatusOK {
		t.Fatalf("after the reset: %+v", a)
	}
	if n := s.up.n("sk-ant", "claude-3-5-haiku"); n != 2 {
		t.Fatalf("the provider saw %d calls, want 2", n)
	}
	if n, _ := s.observer.count("anthropic"); n != 1 {
		t.Fatalf("%d refusals counted, want 1", n)
	}
}

// TestHeadroomRefill: with the limit known, the wait is until the call's
// share is back, not until the limit is whole (the providers refill
// continuously); the provider's 429 holds for its Retry-After.
func TestHeadroomRefill(t *testing.T) {
	s := startHeadroom(t, HeadroomRespect)
	s.up.set(http.StatusOK, "X-Ratelimit-Limit-Requests", "60", "X-Ratelimit-Remaining-Requests", "0", "X-Ratelimit-Reset-Requests", "60s")
	s.call(t, "openai", "alice", "sk-a", "a")
	if a := s.call(t, "openai", "alice", "sk-a", "a"); a.status != http.StatusTooManyRequests || a.retryAfter != "1" || a.retryAfterMs != "1000" {
		t.Fatalf("60 requests a minute, none left: %+v, want a wait of one request, 1 s", a)
	}
	s.clock.Advance(time.Second)
	s.up.set(http.StatusOK, "X-Ratelimit-Limit-Tokens", "1000", "X-Ratelimit-Remaining-Tokens", "0", "X-Ratelimit-Reset-Tokens", "60s")
	if a := s.call(t, "openai", "bob", "sk-a", "a"); a.status != http.StatusOK {
		t.Fatalf("a request refilled: %+v", a)
	}
	// The call's tokens: max_tokens 10 and its body's size / 4.
	units := 10 + (int64(len(`{"model":"a","max_tokens":10,"messages":[]}`))+3)/4
	a := s.call(t, "openai", "alice", "sk-a", "a")
	if want := strconv.FormatInt(units*60, 10); a.status != http.StatusTooManyRequests || a.retryAfterMs != want || !strings.Contains(a.message, "tokens") {
		t.Fatalf("1,000 tokens a minute, none left: %+v, want retry-after-ms %s (%d tokens at 60 ms each)", a, want, units)
	}

	s.up.set(http.StatusTooManyRequests, "Retry-After", "3")
	s.call(t, "openai", "carol", "sk-a", "b")
	s.up.set(http.StatusOK)
	if a := s.call(t, "openai", "carol", "sk-a", "b"); a.status != http.StatusTooManyRequests || a.retryAfter != "3" || !strings.Contains(a.message, "Retry-After") {
		t.Fatalf("after the provider's 429: %+v, want its Retry-After, 3", a)
	}
	s.clock.Advance(3 * time.Second)
	if a := s.call(t, "openai", "carol", "sk-a", "b"); a.status != http.StatusOK {
		t.Fatalf("after the provider's Retry-After: %+v", a)
	}
	if n := s.up.n("sk-a", "b"); n != 2 {
		t.Fatalf("the provider saw %d calls of b, want 2", n)
	}
}

// TestHeadroomBounded: the entries are capped, and go once past.
func TestHeadroomBounded(t *testing.T) {
	hr := newHeadroom()
	hr.max = 2
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	exhausted := http.Header{"X-Ratelimit-Remaining-Requests": {"0"}, "X-Ratelimit-Reset-Requests": {"10s"}}
	for i := range 5 {
		hr.observe(headroomKey{provider: "openai", key: strconv.Itoa(i), model: "m"}, OpenAI, http.StatusOK, exhausted, now)
		if len(hr.entries) > 2 {
			t.Fatalf("%d entries after %d keys, want at most 2", len(hr.entries), i+1)
		}
	}
	k := headroomKey{provider: "openai", key: "4", model: "m"}
	if w, _ := hr.wait(k, need{}, now); w != 10*time.Second {
		t.Fatalf("the latest key waits %s, want 10s", w)
	}
	if w, _ := hr.wait(k, need{}, now.Add(10*time.Second)); w != 0 || len(hr.entries) != 1 {
		t.Fatalf("past the reset: wait %s, %d entries, want 0 and the entry gone", w, len(hr.entries))
	}
	hr.observe(k, OpenAI, http.StatusOK, http.Header{"X-Ratelimit-Remaining-Requests": {"3"}}, now)
	if _, ok := hr.entries[k]; ok {
		t.Fatal("an answer with requests left kept the key's entry")
	}
}

func TestParseHeadroom(t *testing.T) {
	for s, want := range map[string]Headroom{"off": HeadroomOff, "respect": HeadroomRespect} {
		if got, err := ParseHeadroom(s); err != nil || got != want {
			t.Fatalf("ParseHeadroom(%q) = %v, %v", s, got, err)
		}
	}
	if _, err := ParseHeadroom("on"); err == nil || !strings.Contains(err.Error(), "--provider-headroom") || !strings.Contains(err.Error(), "off or respect") {
		t.Fatalf("ParseHeadroom(on): %v", err)
	}
}
