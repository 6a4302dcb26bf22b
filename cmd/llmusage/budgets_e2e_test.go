package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/llmusage/llmusage/internal/pgtest"
	"github.com/llmusage/llmusage/internal/redistest"
	"github.com/llmusage/llmusage/internal/sidecartest"
)

// The seed's three examples (docs of the Python tracker), as records.
const seedExamples = `{"user_id":"alice","model":"llama-3.1-70b-versatile","tokens_used":150,"prompt_tokens":100,"completion_tokens":50,"metadata":{"provider":"groq"}}
{"user_id":"alice","model":"gpt-4","prompt_tokens":1000,"completion_tokens":500,"metadata":{"provider":"openai"}}
{"user_id":"alice","model":"claude-3-opus","prompt_tokens":2000,"completion_tokens":1000,"metadata":{"provider":"anthropic"}}
`

// TestCostsOnDefaultStore, as a new user tries it: the seed's examples
// show their cost in the usage API and in llm_cost_usd_total; an unknown
// model is stored with a null cost and shows as unpriced; a price
// override in the limits file changes the cost of the next record.
func TestCostsOnDefaultStore(t *testing.T) {
	s := sidecartest.Start(t, sidecartest.Options{Limits: "limits: []\n", Flags: []string{"--flush-interval", "50ms"}})
	if code, _, body := s.Post(t, "/v1/calls", "application/x-ndjson", seedExamples); code != http.StatusAccepted {
		t.Fatalf("seed examples: %d %v", code, body)
	}
	// groq llama-3.1-70b-versatile $0.59/$0.79, gpt-4 $30/$60,
	// claude-3-opus $15/$75 per million tokens.
	want := map[string]float64{"llama-3.1-70b-versatile": 0.0000985, "gpt-4": 0.06, "claude-3-opus": 0.105}
	var stats map[string]any
	sidecartest.WaitFor(t, 10*time.Second, func() bool {
		_, stats = s.Get(t, "/api/llm/usage/stats?user_id=alice")
		return stats["total_calls"] == float64(3)
	}, "the records were not stored")
	if stats["cost_usd"] != 0.1650985 || stats["unpriced_calls"] != float64(0) {
		t.Fatalf("stats: cost %v, unpriced %v", stats["cost_usd"], stats["unpriced_calls"])
	}
	byModel := stats["by_model"].(map[string]any)
	metrics := s.Scrape(t)
	for model, cost := range want {
		if got := byModel[model].(map[string]any)["cost_usd"]; got != cost {
			t.Fatalf("%s: cost_usd %v, want %v", model, got, cost)
		}
		prov := byModel[model].(map[string]any)["provider"]
		series := fmt.Sprintf(`llm_cost_usd_total{model=%q,provider=%q,team="",user="alice"}`, model, prov)
		if got := sidecartest.Value(metrics, series); got != cost {
			t.Fatalf("%s = %v, want %v", series, got, cost)
		}
	}

	// An unknown model: a null cost, never a made-up zero.
	if code, _, body := s.PostJSON(t, "/v1/calls", `{"user_id":"bob","model":"house-llm-7b","prompt_tokens":10,"request_id":"unpriced-1"}`); code != http.StatusAccepted {
		t.Fatalf("unknown model: %d %v", code, body)
	}
	var logs map[string]any
	sidecartest.WaitFor(t, 10*time.Second, func() bool {
		_, logs = s.Get(t, "/api/llm/usage/logs?user_id=bob")
		return len(logs["logs"].([]any)) == 1
	}, "bob's record was not stored")
	if cost, has := logs["logs"].([]any)[0].(map[string]any)["cost_usd"]; !has || cost != nil {
		t.Fatalf("the unknown model's cost_usd: %v, want null", logs)
	}
	_, unpriced := s.Get(t, "/v1/prices?unpriced=1")
	if list := unpriced["unpriced"].([]any); len(list) != 1 || list[0].(map[string]any)["model"] != "house-llm-7b" {
		t.Fatalf("unpriced models %v", unpriced)
	}
	if got := s.Gauge(`llmusage_records_unpriced_total{provider="unknown"}`); got != 1 {
		t.Fatalf("llmusage_records_unpriced_total = %v, want 1", got)
	}
	if !strings.Contains(s.Log(), "a model without a price") || !strings.Contains(s.Log(), "house-llm-7b") {
		t.Fatalf("no warning names the model:\n%s", s.Log())
	}

	// A price in the limits file prices it from the next record on.
	if err := os.WriteFile(s.LimitsFile, []byte("prices:\n  - model: house-llm-*\n    input: 1\n    output: 2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	s.Signal(t, syscall.SIGHUP)
	sidecartest.WaitFor(t, 5*time.Second, func() bool { return strings.Contains(s.Log(), "limits file reloaded") }, "the limits file was not reloaded")
	s.PostJSON(t, "/v1/calls", `{"user_id":"bob","model":"house-llm-7b","prompt_tokens":1000,"completion_tokens":1000}`)
	sidecartest.WaitFor(t, 10*time.Second, func() bool {
		_, stats = s.Get(t, "/api/llm/usage/stats?user_id=bob")
		return stats["total_calls"] == float64(2)
	}, "bob's second record was not stored")
	if stats["cost_usd"] != 0.003 || stats["unpriced_calls"] != float64(1) {
		t.Fatalf("bob after the override: cost %v (want 1000 x $1 + 1000 x $2 per million), unpriced %v", stats["cost_usd"], stats["unpriced_calls"])
	}
	_, price := s.Get(t, "/v1/prices?model=house-llm-7b")
	if p := price["price"].(map[string]any); p["input"] != float64(1) || !strings.HasSuffix(p["source"].(string), "prices[0]") {
		t.Fatalf("/v1/prices for the override: %v", price)
	}
}

// postCosted posts a record of a call that cost usd dollars.
func postCosted(t *testing.T, s *sidecartest.Sidecar, user string, usd float64) {
	t.Helper()
	if code, _, body := s.PostJSON(t, "/v1/calls", fmt.Sprintf(`{"user_id":%q,"model":"gpt-4o","prompt_tokens":100,"cost_usd":%g}`, user, usd)); code != http.StatusAccepted {
		t.Fatalf("record: %d %v", code, body)
	}
}

// checkStatus posts a check and returns its status.
func checkStatus(t *testing.T, s *sidecartest.Sidecar, body string) int {
	t.Helper()
	code, h, out := s.PostJSON(t, "/v1/check", body)
	if code == http.StatusTooManyRequests && h.Get("Retry-After") == "" {
		t.Fatalf("429 without Retry-After: %v", out)
	}
	if code != http.StatusOK && code != http.StatusTooManyRequests {
		t.Fatalf("check %s: %d %v", body, code, out)
	}
	return code
}

// TestDailyBudgetSurvivesRestart: a user with a $0.01 daily budget is
// refused once their records spent it, and still after a kill -9 and a
// restart on the embedded store, the spend rebuilt from the database and
// the spool.
func TestDailyBudgetSurvivesRestart(t *testing.T) {
	s := sidecartest.Start(t, sidecartest.Options{Limits: "limits:\n  - user_id: intern\n    limit_type: day\n    usd: 0.01\n"})
	check := `{"user_id":"intern","model":"gpt-4o","prompt_tokens":100,"max_tokens":100}`
	if code := checkStatus(t, s, check); code != http.StatusOK {
		t.Fatal("the first check was refused")
	}
	postCosted(t, s, "intern", 0.006)
	postCosted(t, s, "intern", 0.005)
	if code := checkStatus(t, s, check); code != http.StatusTooManyRequests {
		t.Fatalf("a check after $0.011 of $0.01 spent: %d, want 429", code)
	}
	// Another user has no budget.
	if code := checkStatus(t, s, `{"user_id":"other","model":"gpt-4o","tokens":100}`); code != http.StatusOK {
		t.Fatal("a user without a budget was refused")
	}
	s.Kill9(t)
	s.Restart(t)
	if code := checkStatus(t, s, check); code != http.StatusTooManyRequests {
		t.Fatalf("after kill -9 and a restart: %d, want 429\n%s", code, s.Log())
	}
	// Once the database has the records, a restart reads them from it.
	sidecartest.WaitFor(t, 10*time.Second, func() bool {
		_, st := s.Get(t, "/api/llm/usage/stats?user_id=intern")
		return st["total_calls"] == float64(2)
	}, "the records were not stored")
	if err := s.Stop(t, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	s.Restart(t)
	if code := checkStatus(t, s, check); code != http.StatusTooManyRequests {
		t.Fatalf("after a restart with the records stored: %d, want 429\n%s", code, s.Log())
	}
	_, limits := s.Get(t, "/v1/limits?user_id=intern")
	b := limits["limits"].([]any)[0].(map[string]any)
	tomorrow := time.Now().UTC().Truncate(24 * time.Hour).Add(24 * time.Hour).Format(time.RFC3339)
	if b["unit"] != "usd" || b["limit"] != 0.01 || b["remaining"] != float64(0) || b["reset_at"] != tomorrow {
		t.Fatalf("budget after the restart: %v", b)
	}
}

// TestBudgetAcrossReplicasOnRedis, on Postgres and Redis: concurrent
// checks on three replicas reserve no more than the budget holds, a
// record on one replica counts on all, and a budget Redis lost is rebuilt
// from Postgres.
func TestBudgetAcrossReplicasOnRedis(t *testing.T) {
	srv := redistest.Start(t)
	dbURL := pgtest.URL(t)
	sidecars := sidecartest.StartN(t, 3, sidecartest.Options{
		Limits:      "limits:\n  - limit_type: day\n    usd: 2\n  - user_id: intern\n    limit_type: day\n    usd: 0.01\nprices:\n  - model: house-model\n    input: 0\n    output: 1000\n",
		DatabaseURL: dbURL,
		Flags:       []string{"--redis-url", srv.URL(), "--redis-timeout", "2s", "--flush-interval", "50ms"},
	})
	// $1.00 of alice's $2.00 spent, then 50 concurrent checks that each
	// reserve $0.10 (100 output tokens at $1,000 per million). The spend
	// is learnt from the database alone: a record learnt from the spool
	// while the writer stores it can count twice (docs/limits.md "Where it
	// errs"), which made this test refuse all 50 in one CI run.
	postCosted(t, sidecars[0], "alice", 1)
	sidecartest.WaitFor(t, 10*time.Second, func() bool {
		_, st := sidecars[0].Get(t, "/api/llm/usage/stats?user_id=alice")
		return st["total_calls"] == float64(1)
	}, "alice's record was not stored")
	srv.Do(t, "FLUSHALL")
	var admitted atomic.Int64
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			code, _, _ := sidecars[i%3].PostJSON(t, "/v1/check", `{"user_id":"alice","model":"house-model","max_tokens":100}`)
			if code == http.StatusOK {
				admitted.Add(1)
			} else if code != http.StatusTooManyRequests {
				t.Errorf("check: %d", code)
			}
		}(i)
	}
	wg.Wait()
	assertNoFallback(t, sidecars)
	if n := admitted.Load(); n != 10 {
		t.Fatalf("%d of 50 checks of $0.10 admitted on 3 replicas against $1.00 left, want exactly 10", n)
	}

	// The intern spends their $0.01 on one replica: every replica refuses.
	postCosted(t, sidecars[1], "intern", 0.01)
	for i, s := range sidecars {
		if code := checkStatus(t, s, `{"user_id":"intern","model":"gpt-4o","tokens":10}`); code != http.StatusTooManyRequests {
			t.Fatalf("replica %d admitted the intern after the budget was spent on replica 1", i)
		}
	}

	// Redis loses everything: the spend is rebuilt from Postgres, once
	// the records are stored.
	sidecartest.WaitFor(t, 10*time.Second, func() bool {
		_, st := sidecars[0].Get(t, "/api/llm/usage/stats?user_id=intern")
		return st["total_calls"] == float64(1)
	}, "the intern's record was not stored")
	srv.Do(t, "FLUSHALL")
	for i, s := range sidecars {
		if code := checkStatus(t, s, `{"user_id":"intern","model":"gpt-4o","tokens":10}`); code != http.StatusTooManyRequests {
			t.Fatalf("replica %d admitted the intern after Redis lost the budget", i)
		}
	}

	// A budget row changes the intern's budget on every replica.
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `INSERT INTO llm_rate_limits (user_id, limit_type, unit, limit_value, limit_usd) VALUES ('intern', 'day', 'usd', 0, 0.05)`); err != nil {
		t.Fatal(err)
	}
	for i, s := range sidecars {
		sidecartest.WaitFor(t, 5*time.Second, func() bool {
			return checkStatus(t, s, `{"user_id":"intern","model":"gpt-4o","tokens":10}`) == http.StatusOK
		}, "replica %d did not take the intern's $0.05 row", i)
	}
}
