package collector

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/llmusage/llmusage/exporter"
	"github.com/llmusage/llmusage/internal/clock"
	"github.com/llmusage/llmusage/limiter"
	"github.com/llmusage/llmusage/provider"
	"github.com/llmusage/llmusage/spool"
)

// providerServer is the intake API with the real exporter as its
// observer and a real spool as its sink, as serve wires them.
type providerServer struct {
	api, metrics http.Handler
	spool        *spool.Spool
	clock        *clock.Manual
}

func newProviderServer(t *testing.T) *providerServer {
	t.Helper()
	clk := clock.NewManual(testNow)
	l, err := limiter.New(nil, limiter.Options{Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	sp, err := spool.Open(t.TempDir(), spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sp.Close() })
	exp := exporter.New(exporter.Options{Clock: clk})
	c := New(Options{Limiter: l, Sink: sp, Observer: exp, Clock: clk})
	mux := http.NewServeMux()
	for _, r := range c.Routes() {
		mux.Handle(r.Pattern, r.Handler)
	}
	return &providerServer{api: mux, metrics: exp.Handler(), spool: sp, clock: clk}
}

func (s *providerServer) post(t *testing.T, contentType, body string) (int, string) {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, "/v1/calls", strings.NewReader(body))
	req.Header.Set("Content-Type", contentType)
	rec := httptest.NewRecorder()
	s.api.ServeHTTP(rec, req)
	return rec.Code, rec.Body.String()
}

// series returns the values of the metrics text's series named with
// their labels, "" for a series absent.
func (s *providerServer) series(t *testing.T) map[string]string {
	t.Helper()
	rec := httptest.NewRecorder()
	s.metrics.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	out := map[string]string{}
	for _, line := range strings.Split(rec.Body.String(), "\n") {
		if strings.HasPrefix(line, "llm_provider_") {
			name, value, _ := strings.Cut(line, " ")
			out[name] = value
		}
	}
	return out
}

// TestProviderRateLimitRecords: a record's provider_ratelimit, as figures
// or as the answer's headers, becomes the same gauges the proxy feeds,
// under the record's resolved provider and model; the records go to the
// spool as any other (the figures are not stored).
func TestProviderRateLimitRecords(t *testing.T) {
	s := newProviderServer(t)
	fp := provider.KeyFingerprint("sk-proj-abc123")
	// Figures, on a record whose provider is inferred from the model.
	code, body := s.post(t, "application/json", `{"user_id":"u","model":"gpt-4o","prompt_tokens":3,"provider_ratelimit":{"key":"`+fp+`",
		"requests":{"limit":30,"remaining":29,"reset_seconds":2.5},"tokens":{"remaining":0},"retry_after_seconds":3}}`)
	if code != http.StatusAccepted {
		t.Fatalf("figures: %d %s", code, body)
	}
	// An NDJSON batch: Groq's headers (a day's reset), Anthropic's by the
	// record's provider, and a record without any.
	s.clock.Advance(time.Second)
	groq, _ := json.Marshal(map[string]string{"x-ratelimit-limit-requests": "14400", "x-ratelimit-remaining-requests": "14370",
		"x-ratelimit-reset-requests": "1d2h", "retry-after": "7", "content-type": "application/json"})
	anthropic, _ := json.Marshal(map[string]string{"anthropic-ratelimit-input-tokens-limit": "80000",
		"anthropic-ratelimit-input-tokens-remaining": "79000", "anthropic-ratelimit-input-tokens-reset": testNow.Add(41 * time.Second).Format(time.RFC3339),
		"x-ratelimit-limit-requests": "1"})
	code, body = s.post(t, "application/x-ndjson", `{"user_id":"u","model":"llama-3.1-8b-instant","provider":"Groq","provider_ratelimit":{"headers":`+string(groq)+`}}
{"user_id":"u","model":"claude-sonnet-4-5","provider_ratelimit":{"key":"`+fp+`","headers":`+string(anthropic)+`}}
{"user_id":"u","model":"gpt-4o-mini"}
`)
	if code != http.StatusAccepted {
		t.Fatalf("headers: %d %s", code, body)
	}
	got := s.series(t)
	labels := func(prov, model, resource, key string) string {
		return `{key="` + key + `",model="` + model + `",provider="` + prov + `",resource="` + resource + `"}`
	}
	for series, want := range map[string]string{
		"llm_provider_ratelimit_limit" + labels("openai", "gpt-4o", "requests", fp):                           "30",
		"llm_provider_ratelimit_remaining" + labels("openai", "gpt-4o", "requests", fp):                       "29",
		"llm_provider_ratelimit_reset_seconds" + labels("openai", "gpt-4o", "requests", fp):                   "1.5", // 2.5 s from the record, scraped 1 s later
		"llm_provider_ratelimit_remaining" + labels("openai", "gpt-4o", "tokens", fp):                         "0",
		`llm_provider_retry_after_seconds{key="` + fp + `",model="gpt-4o",provider="openai"}`:                 "2",
		"llm_provider_ratelimit_limit" + labels("groq", "llama-3.1-8b-instant", "requests", ""):               "14400",
		"llm_provider_ratelimit_reset_seconds" + labels("groq", "llama-3.1-8b-instant", "requests", ""):       strconv.Itoa(26 * 3600),
		`llm_provider_retry_after_seconds{key="",model="llama-3.1-8b-instant",provider="groq"}`:               "7",
		"llm_provider_ratelimit_remaining" + labels("anthropic", "claude-sonnet-4-5", "input_tokens", fp):     "79000",
		"llm_provider_ratelimit_reset_seconds" + labels("anthropic", "claude-sonnet-4-5", "input_tokens", fp): "40",
	} {
		if got[series] != want {
			t.Errorf("%s = %q, want %q", series, got[series], want)
		}
	}
	for series := range got {
		// Anthropic's records read Anthropic's names only; the figures
		// are no usage, and count no 429 (that is the proxy's to see).
		if strings.Contains(series, `provider="anthropic",resource="requests"`) || strings.Contains(series, "gpt-4o-mini") ||
			strings.HasPrefix(series, "llm_provider_throttled_total") {
			t.Errorf("unexpected series %s", series)
		}
	}
	if n := s.spool.Len(); n != 4 {
		t.Fatalf("%d records spooled, want 4", n)
	}
	recs, err := s.spool.Peek(4)
	if err != nil || len(recs) != 4 || recs[1].Provider != "groq" || recs[2].Provider != "anthropic" {
		t.Fatalf("spooled %+v, %v", recs, err)
	}
}

// TestProviderRateLimitErrors: a provider_ratelimit that is not exactly
// right refuses its request (nothing applied, nothing observed) with every
// problem named, and never echoes a key sent in place of a fingerprint.
func TestProviderRateLimitErrors(t *testing.T) {
	s := newProviderServer(t)
	f := func(pr string, wantFields ...string) {
		t.Helper()
		code, body := s.post(t, "application/json", `[{"user_id":"u","model":"gpt-4o","provider_ratelimit":{"requests":{"limit":1}}},
			{"user_id":"u","model":"gpt-4o","provider_ratelimit":`+pr+`}]`)
		if code != http.StatusBadRequest {
			t.Fatalf("%s: %d %s, want 400", pr, code, body)
		}
		var out struct {
			Error   string
			Details []Detail
		}
		if err := json.Unmarshal([]byte(body), &out); err != nil || out.Error == "" {
			t.Fatalf("%s: answer %s", pr, body)
		}
		var got []string
		for _, d := range out.Details {
			if d.Index != 1 || d.Message == "" {
				t.Fatalf("%s: detail %+v", pr, d)
			}
			got = append(got, d.Field)
		}
		if strings.Join(got, ",") != strings.Join(wantFields, ",") {
			t.Fatalf("%s: fields %v, want %v; %s", pr, got, wantFields, body)
		}
		if strings.Contains(body, "sk-") {
			t.Fatalf("%s: the key is in the answer %s", pr, body)
		}
	}
	f(`[]`, "provider_ratelimit")
	f(`"x-ratelimit-limit-requests: 1"`, "provider_ratelimit")
	f(`{}`, "provider_ratelimit")
	f(`{"key":"4ecf4d81"}`, "provider_ratelimit")
	f(`{"requests":{}}`, "provider_ratelimit.requests")
	f(`{"request":{"limit":1}}`, "provider_ratelimit.request")
	f(`{"requests":{"limit":1,"remainig":1}}`, "provider_ratelimit.requests.remainig")
	f(`{"images":{"limit":1}}`, "provider_ratelimit.images")
	f(`{"requests":{"limit":-1,"remaining":"5","reset_seconds":true}}`,
		"provider_ratelimit.requests.limit", "provider_ratelimit.requests.remaining", "provider_ratelimit.requests.reset_seconds")
	f(`{"tokens":{"reset_seconds":1e12}}`, "provider_ratelimit.tokens.reset_seconds")
	f(`{"tokens":{"limit":1e300}}`, "provider_ratelimit.tokens.limit")
	f(`{"retry_after_seconds":-3}`, "provider_ratelimit.retry_after_seconds")
	f(`{"requests":5}`, "provider_ratelimit.requests")
	f(`{"key":"sk-proj-abc123","requests":{"limit":1}}`, "provider_ratelimit.key")
	f(`{"key":"4ECF4D81","requests":{"limit":1}}`, "provider_ratelimit.key")
	f(`{"headers":{"retry-after":3}}`, "provider_ratelimit.headers.retry-after")
	f(`{"headers":["retry-after: 3"]}`, "provider_ratelimit.headers")
	f(`{"headers":{"retry-after":"3"},"retry_after_seconds":3}`, "provider_ratelimit")
	f(`{"requests":{"limit":1},"requests":{"limit":2}}`, "provider_ratelimit.requests")
	if got := s.series(t); len(got) != 0 {
		t.Fatalf("series from refused requests: %v", got)
	}
	if n := s.spool.Len(); n != 0 {
		t.Fatalf("%d records spooled from refused requests", n)
	}

	// Remaining over the limit is what a provider says after lowering a
	// limit: taken as said. Headers that say nothing readable are taken
	// as the proxy takes them, with nothing to observe.
	for _, pr := range []string{`{"tokens":{"limit":10,"remaining":20}}`, `{"headers":{"x-ratelimit-limit-requests":"many","server":"x"}}`, `{"requests":{"limit":1},"key":null}`} {
		if code, body := s.post(t, "application/json", `{"user_id":"u","model":"gpt-4o","provider_ratelimit":`+pr+`}`); code != http.StatusAccepted {
			t.Fatalf("%s: %d %s", pr, code, body)
		}
	}
	got := s.series(t)
	if got[`llm_provider_ratelimit_remaining{key="",model="gpt-4o",provider="openai",resource="tokens"}`] != "20" || len(got) != 3 {
		t.Fatalf("series %v, want tokens' limit and remaining and requests' limit", got)
	}
}

// TestDocProviderRateLimitExample: docs/proxy.md's record with
// provider_ratelimit is accepted and feeds the gauges it says.
func TestDocProviderRateLimitExample(t *testing.T) {
	readme, err := os.ReadFile("../docs/proxy.md")
	if err != nil {
		t.Fatal(err)
	}
	var example string
	for _, block := range strings.Split(string(readme), "```json\n")[1:] {
		if block, _, _ = strings.Cut(block, "```"); strings.Contains(block, `"provider_ratelimit"`) {
			example = block
		}
	}
	if example == "" {
		t.Fatal("docs/proxy.md has no json block with provider_ratelimit")
	}
	s := newProviderServer(t)
	if code, body := s.post(t, "application/json", example); code != http.StatusAccepted {
		t.Fatalf("docs/proxy.md's example: %d %s", code, body)
	}
	if got := s.series(t)[`llm_provider_ratelimit_remaining{key="4ecf4d81",model="llama-3.1-8b-instant",provider="groq",resource="tokens"}`]; got != "17850" {
		t.Fatalf("remaining tokens %q, want the example's 17850", got)
	}
}
