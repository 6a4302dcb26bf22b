package collector

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/llmusage/llmusage/internal/clock"
	"github.com/llmusage/llmusage/limiter"
	"github.com/llmusage/llmusage/rules"
	"github.com/llmusage/llmusage/store"
)

// newStoreServer serves the API over a real SQLite store, records going
// through a real Writer.
func newStoreServer(t *testing.T, maxQueue int) (*testServer, *store.Writer) {
	t.Helper()
	return newStoreServerWithLimits(t, maxQueue, "")
}

// newStoreServerWithLimits is newStoreServer with a limits file of
// limitsYAML; empty for none.
func newStoreServerWithLimits(t *testing.T, maxQueue int, limitsYAML string) (*testServer, *store.Writer) {
	t.Helper()
	ctx := context.Background()
	file := ""
	if limitsYAML != "" {
		file = filepath.Join(t.TempDir(), "limits.yaml")
		if err := os.WriteFile(file, []byte(limitsYAML), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	s, err := store.Open(ctx, store.Options{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if _, err := s.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	m, err := rules.New(ctx, rules.Options{File: file, DB: s})
	if err != nil {
		t.Fatal(err)
	}
	clk := clock.NewManual(testNow)
	l, err := limiter.New(m.Set().InForce, limiter.Options{Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	w := store.NewWriter(s, store.NewMemoryQueue(maxQueue), store.WriterOptions{})
	obs := &recordingObserver{}
	c := New(Options{Limiter: l, Sink: w, Usage: s, Observer: obs, Clock: clk, Rules: m.Set})
	mux := http.NewServeMux()
	for _, r := range c.Routes() {
		mux.Handle(r.Pattern, r.Handler)
	}
	return &testServer{handler: mux, observer: obs, limiter: l, clock: clk}, w
}

// TestSummaryBudgets: a user's summary tells each usd budget's limit,
// spend, what is left and when its period ends, as /v1/limits does.
func TestSummaryBudgets(t *testing.T) {
	s, _ := newStoreServerWithLimits(t, 100, `limits:
  - limit_type: day
    usd: 0.01
  - user_id: vip
    limit_type: month
    usd: 5
prices:
  - model: house-model
    input: 10
    output: 40
`)
	// 100 prompt tokens at $10 per million: $0.001.
	rec, _ := s.do(t, http.MethodPost, "/v1/calls", "application/json", `{"user_id":"u","model":"house-model","prompt_tokens":100,"completion_tokens":0}`)
	if rec.Code != http.StatusAccepted {
		t.Fatalf("record: %d %s", rec.Code, rec.Body)
	}
	_, sum := s.do(t, http.MethodGet, "/api/llm/usage/summary?user_id=u", "", "")
	want := []any{map[string]any{"limit_type": "day", "limit_usd": 0.01, "spent_usd": 0.001, "remaining_usd": 0.009, "period_end": "2026-11-28T00:00:00Z"}}
	if !reflect.DeepEqual(sum["budgets"], want) {
		t.Fatalf("u's budgets %v, want %v", sum["budgets"], want)
	}
	_, vip := s.do(t, http.MethodGet, "/api/llm/usage/summary?user_id=vip", "", "")
	budgets, _ := vip["budgets"].([]any)
	if len(budgets) != 2 {
		t.Fatalf("vip's budgets %v, want the day and the month budgets", vip["budgets"])
	}
	for _, b := range budgets {
		if m := b.(map[string]any); m["limit_type"] == "month" &&
			(m["limit_usd"] != float64(5) || m["spent_usd"] != float64(0) || m["remaining_usd"] != float64(5) || m["period_end"] != "2026-12-01T00:00:00Z") {
			t.Fatalf("vip's month budget %v", m)
		}
	}
	// Without a budget, the list is empty rather than absent.
	_, none := newStoreServerSummary(t)
	if b, ok := none["budgets"].([]any); !ok || len(b) != 0 {
		t.Fatalf("budgets without a budget rule: %v", none["budgets"])
	}
}

func newStoreServerSummary(t *testing.T) (*testServer, map[string]any) {
	t.Helper()
	s, _ := newStoreServer(t, 10)
	_, sum := s.do(t, http.MethodGet, "/api/llm/usage/summary?user_id=u", "", "")
	return s, sum
}

func TestUsageAPI(t *testing.T) {
	s, w := newStoreServer(t, 1000)
	rec, _ := s.do(t, http.MethodPost, "/v1/calls", "application/x-ndjson", `{"user_id":"alice","model":"gpt-4","prompt_tokens":100,"completion_tokens":50}
{"user_id":"alice","model":"llama-3.1-70b-versatile","provider":"groq","prompt_tokens":10,"completion_tokens":5,"status":"error"}
{"user_id":"bob","model":"claude-3-opus","prompt_tokens":7,"completion_tokens":3,"timestamp":"2026-11-25T08:00:00Z"}`)
	if rec.Code != http.StatusAccepted {
		t.Fatalf("records: %d %s", rec.Code, rec.Body)
	}
	if err := w.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}

	_, sum := s.do(t, http.MethodGet, "/api/llm/usage/summary?user_id=alice", "", "")
	limits := sum["limits"].(map[string]any)
	if sum["calls_today"] != float64(2) || sum["tokens_today"] != float64(165) || sum["errors_today"] != float64(1) || sum["date"] != "2026-11-27" {
		t.Fatalf("summary %v", sum)
	}
	if m := limits["minute"].(map[string]any); m["limit"] != float64(30) || m["used"] != float64(2) || m["can_call"] != true {
		t.Fatalf("summary minute limit %v", m)
	}
	_, all := s.do(t, http.MethodGet, "/api/llm/usage/summary", "", "")
	if all["calls_today"] != float64(2) || all["user_id"] != nil || all["limits"] != nil {
		t.Fatalf("all-users summary %v (bob's call was two days ago)", all)
	}

	_, stats := s.do(t, http.MethodGet, "/api/llm/usage/stats?days=7", "", "")
	if stats["total_calls"] != float64(3) || stats["days"] != float64(7) || stats["since"] != "2026-11-21" {
		t.Fatalf("stats %v", stats)
	}
	if p := stats["by_provider"].(map[string]any)["anthropic"].(map[string]any); p["tokens"] != float64(10) {
		t.Fatalf("anthropic %v", p)
	}
	// The seed's models are priced: gpt-4 100 x $30 + 50 x $60, llama
	// 10 x $0.59 + 5 x $0.79, claude-3-opus 7 x $15 + 3 x $75 per million.
	if stats["cost_usd"] != 0.00633985 || stats["unpriced_calls"] != float64(0) {
		t.Fatalf("stats cost %v, unpriced %v", stats["cost_usd"], stats["unpriced_calls"])
	}
	for _, c := range []struct {
		name      string
		breakdown map[string]any
		cost      float64
	}{
		{"gpt-4", stats["by_model"].(map[string]any)["gpt-4"].(map[string]any), 0.006},
		{"anthropic", stats["by_provider"].(map[string]any)["anthropic"].(map[string]any), 0.00033},
		{"2026-11-25", stats["by_day"].([]any)[0].(map[string]any), 0.00033},
		{"2026-11-27", stats["by_day"].([]any)[1].(map[string]any), 0.00600985},
	} {
		if c.breakdown["cost_usd"] != c.cost || c.breakdown["unpriced_calls"] != float64(0) {
			t.Fatalf("%s's cost: %v, want %v", c.name, c.breakdown, c.cost)
		}
	}
	if sum["cost_usd_today"] != 0.00600985 || sum["unpriced_calls_today"] != float64(0) {
		t.Fatalf("summary cost %v", sum)
	}
	// A model without a price is counted apart, not as free.
	s.do(t, http.MethodPost, "/v1/calls", "application/json", `{"user_id":"carol","model":"house-model","prompt_tokens":10}`)
	if err := w.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	_, carol := s.do(t, http.MethodGet, "/api/llm/usage/stats?user_id=carol", "", "")
	if carol["cost_usd"] != float64(0) || carol["unpriced_calls"] != float64(1) || carol["total_calls"] != float64(1) {
		t.Fatalf("carol's stats %v", carol)
	}
	_, stats = s.do(t, http.MethodGet, "/api/llm/usage/stats?days=1", "", "")
	if stats["total_calls"] != float64(3) { // alice's two and carol's
		t.Fatalf("one day of stats %v", stats)
	}

	_, page := s.do(t, http.MethodGet, "/api/llm/usage/logs?limit=1&user_id=alice", "", "")
	logs := page["logs"].([]any)
	if len(logs) != 1 || page["next_cursor"] == "" {
		t.Fatalf("first page %v", page)
	}
	if cost := logs[0].(map[string]any)["cost_usd"]; cost != 9.85e-06 {
		t.Fatalf("the llama record's cost_usd: %v, want 0.00000985", logs[0])
	}
	_, page = s.do(t, http.MethodGet, "/api/llm/usage/logs?user_id=carol", "", "")
	if cost, has := page["logs"].([]any)[0].(map[string]any)["cost_usd"]; !has || cost != nil {
		t.Fatalf("an unpriced record's cost_usd: %v, want null", page)
	}
	_, page = s.do(t, http.MethodGet, "/api/llm/usage/logs?limit=1&user_id=alice", "", "")
	_, page = s.do(t, http.MethodGet, "/api/llm/usage/logs?limit=1&user_id=alice&before="+page["next_cursor"].(string), "", "")
	if logs := page["logs"].([]any); len(logs) != 1 || page["next_cursor"] != "" {
		t.Fatalf("second page %v", page)
	}
	_, page = s.do(t, http.MethodGet, "/api/llm/usage/logs?provider=Anthropic", "", "")
	if logs := page["logs"].([]any); len(logs) != 1 || logs[0].(map[string]any)["user_id"] != "bob" {
		t.Fatalf("provider filter %v", page)
	}
}

func TestUsageAPIErrors(t *testing.T) {
	s, _ := newStoreServer(t, 1000)
	f := func(path string, wantStatus int, wantField string) {
		t.Helper()
		rec, out := s.do(t, http.MethodGet, path, "", "")
		if rec.Code != wantStatus {
			t.Fatalf("%s: %d %s, want %d", path, rec.Code, rec.Body, wantStatus)
		}
		if d, _ := out["details"].([]any); wantField != "" && (len(d) == 0 || d[0].(map[string]any)["field"] != wantField) {
			t.Fatalf("%s: %s, want a detail on %s", path, rec.Body, wantField)
		}
	}
	f("/api/llm/usage/stats?days=0", http.StatusBadRequest, "days")
	f("/api/llm/usage/stats?days=367", http.StatusBadRequest, "days")
	f("/api/llm/usage/stats?days=week", http.StatusBadRequest, "days")
	f("/api/llm/usage/logs?limit=1001", http.StatusBadRequest, "limit")
	f("/api/llm/usage/logs?limit=-1", http.StatusBadRequest, "limit")
	f("/api/llm/usage/logs?before=garbage", http.StatusBadRequest, "before")
	rec := httptest.NewRecorder()
	s.handler.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/api/llm/usage/logs", nil))
	if rec.Code != http.StatusMethodNotAllowed {
		t.Fatalf("POST logs: %d", rec.Code)
	}
}

func TestSinkFull(t *testing.T) {
	s, w := newStoreServer(t, 2)
	body := `[{"user_id":"u","model":"m"},{"user_id":"u","model":"m"},{"user_id":"u","model":"m"}]`
	rec, out := s.do(t, http.MethodPost, "/v1/calls", "application/json", body)
	if rec.Code != http.StatusServiceUnavailable || rec.Header().Get("Retry-After") == "" || out["error"] == nil {
		t.Fatalf("over the queue bound: %d %s, want 503 with Retry-After", rec.Code, rec.Body)
	}
	// Nothing from the refused request was applied.
	if w.Len() != 0 || len(s.observer.records) != 0 {
		t.Fatalf("refused request applied: queue %d, observed %d", w.Len(), len(s.observer.records))
	}
	if got, err := s.limiter.Limits("u", "", "", ""); err != nil || got[0].Remaining != got[0].Limit {
		t.Fatalf("refused request charged the limiter: %+v", got)
	}
}
