package main

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/llmusage/llmusage/internal/pgtest"
	"github.com/llmusage/llmusage/internal/sidecartest"
)

// TestDefaultStore runs serve with no database flag at all: records land
// in <data-dir>/llmusage.db and come back through the usage API.
func TestDefaultStore(t *testing.T) {
	dataDir := t.TempDir()
	// The default --data-dir is ./llmusage-data in the working directory.
	p := sidecartest.Start(t, sidecartest.Options{Dir: dataDir, DefaultDataDir: true,
		Flags: []string{"--flush-interval", "50ms"}})

	code, _, out := p.Post(t, "/v1/calls", "application/json", `[
  {"user_id": "alice", "model": "llama-3.1-70b-versatile", "prompt_tokens": 1000, "completion_tokens": 250, "metadata": {"provider": "groq"}, "request_id": "seed-1"},
  {"user_id": "alice", "model": "gpt-4", "prompt_tokens": 200, "completion_tokens": 100, "request_id": "seed-2"},
  {"user_id": "bob", "model": "claude-3-opus", "prompt_tokens": 50, "completion_tokens": 30, "request_id": "seed-3"}]`)
	if code != http.StatusAccepted || out["accepted"] != float64(3) {
		t.Fatalf("records: %d %v", code, out)
	}
	var logs []any
	sidecartest.WaitFor(t, 30*time.Second, func() bool {
		_, page := p.Get(t, "/api/llm/usage/logs?limit=10")
		logs, _ = page["logs"].([]any)
		return len(logs) == 3
	}, "the 3 records are not all in the logs")
	if newest := logs[0].(map[string]any); newest["request_id"] != "seed-3" || newest["provider"] != "anthropic" || newest["tokens_used"] != float64(80) {
		t.Fatalf("newest log %v", newest)
	}
	_, stats := p.Get(t, "/api/llm/usage/stats?user_id=alice&days=7")
	byModel := stats["by_model"].(map[string]any)
	if stats["total_calls"] != float64(2) || stats["total_tokens"] != float64(1550) || byModel["gpt-4"].(map[string]any)["provider"] != "openai" {
		t.Fatalf("stats %v", stats)
	}
	// The seeded defaults apply: 30 requests a minute.
	_, lim := p.Get(t, "/api/llm/usage/rate-limit/minute?user_id=alice")
	if lim["limit"] != float64(30) || lim["used"] != float64(2) {
		t.Fatalf("default minute limit %v", lim)
	}
	if err := p.Stop(t, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// The default --data-dir is ./llmusage-data: the database and the spool live there.
	for _, path := range []string{"llmusage.db", "spool"} {
		if _, err := os.Stat(filepath.Join(dataDir, "llmusage-data", path)); err != nil {
			t.Fatalf("default data directory: %s", err)
		}
	}
}

// TestPostgresStore is the new user's path to Postgres: migrate, then
// serve, post 10,000 records, redeliver one, read the stats, and change a
// user's limit in SQL.
func TestPostgresStore(t *testing.T) {
	dbURL := pgtest.URL(t)
	out, err := sidecartest.Run(t, "migrate", "--database-url", dbURL)
	if err != nil {
		t.Fatalf("llmusage migrate: %s\n%s", err, out)
	}
	out, err = sidecartest.Run(t, "migrate", "--status", "--database-url", dbURL)
	migrations, _ := filepath.Glob("../../store/migrations/postgres/*.sql")
	if err != nil || len(migrations) < 2 || strings.Count(out, "applied") != len(migrations) || strings.Contains(out, "pending") {
		t.Fatalf("migrate --status: %v\n%s", err, out)
	}
	ctx := context.Background()
	db, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(ctx)
	for _, obj := range []string{"llm_usage_logs", "llm_rate_limit_configs", "llm_rate_limits", "llm_usage_daily_summary", "idx_llm_usage_user_id", "idx_llm_usage_model"} {
		var found bool
		if err := db.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, obj).Scan(&found); err != nil || !found {
			t.Fatalf("%s not created by migrate (%v)", obj, err)
		}
	}
	if _, err := db.Exec(ctx, `SELECT refresh_llm_usage_summary()`); err != nil {
		t.Fatal(err)
	}

	// A limits file without rules: the database's seeded defaults decide.
	p := startSidecar(t, "# no rules\n", "LLMUSAGE_DATABASE_URL="+dbURL, "LLMUSAGE_MIGRATE=false")
	const batches, perBatch = 20, 500
	for b := 0; b < batches; b++ {
		var body strings.Builder
		for i := 0; i < perBatch; i++ {
			n := b*perBatch + i
			model, provider := []string{"gpt-4o", "claude-3-5-sonnet", "llama-3.1-8b-instant"}[n%3], []string{"openai", "anthropic", "groq"}[n%3]
			fmt.Fprintf(&body, `{"user_id":"user-%d","model":%q,"provider":%q,"prompt_tokens":%d,"completion_tokens":1,"request_id":"bulk-%d"}`+"\n", n%50, model, provider, n%7, n)
		}
		if code, _, out := p.Post(t, "/v1/calls", "application/x-ndjson", body.String()); code != http.StatusAccepted || out["accepted"] != float64(perBatch) {
			t.Fatalf("batch %d: %d %v", b, code, out)
		}
	}
	dup := `{"user_id":"dup-user","model":"gpt-4","prompt_tokens":3,"request_id":"the-same-call"}`
	for i := 0; i < 2; i++ {
		if code, _, _ := p.Post(t, "/v1/calls", "application/json", dup); code != http.StatusAccepted {
			t.Fatalf("duplicate post %d: %d", i, code)
		}
	}
	count := func(where string) int {
		var n int
		if err := db.QueryRow(ctx, `SELECT count(*) FROM llm_usage_logs WHERE `+where).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	sidecartest.WaitFor(t, 30*time.Second, func() bool {
		return count("request_id LIKE 'bulk-%'") == batches*perBatch && count("request_id = 'the-same-call'") == 1
	}, "the records are not all stored, once each")
	// Let any straggling flush land before counting for good.
	time.Sleep(200 * time.Millisecond)
	if n := count("true"); n != batches*perBatch+1 {
		t.Fatalf("%d rows, want %d", n, batches*perBatch+1)
	}

	_, stats := p.Get(t, "/api/llm/usage/stats")
	byProvider := stats["by_provider"].(map[string]any)
	if stats["total_calls"] != float64(batches*perBatch+1) || byProvider["groq"].(map[string]any)["calls"] != float64(3333) ||
		stats["by_model"].(map[string]any)["claude-3-5-sonnet"].(map[string]any)["provider"] != "anthropic" {
		t.Fatalf("stats: calls %v, by_provider %v", stats["total_calls"], byProvider)
	}

	// The seed's way to raise one user's limit, verbatim.
	start := time.Now()
	if _, err := db.Exec(ctx, `INSERT INTO llm_rate_limits (user_id, limit_type, limit_value, reset_at)
VALUES ('user-id', 'minute', 200, NOW() + INTERVAL '1 minute');`); err != nil {
		t.Fatal(err)
	}
	sidecartest.WaitFor(t, 30*time.Second, func() bool {
		_, lim := p.Get(t, "/api/llm/usage/rate-limit/minute?user_id=user-id")
		return lim["limit"] == float64(200)
	}, "the limit inserted in llm_rate_limits did not take effect")
	t.Logf("the new limit took effect %s after the INSERT", time.Since(start).Round(time.Millisecond))
	if _, lim := p.Get(t, "/api/llm/usage/rate-limit/minute?user_id=someone-else"); lim["limit"] != float64(30) {
		t.Fatalf("other users keep the default: %v", lim)
	}

	if err := p.Stop(t, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if u, _ := url.Parse(dbURL); u != nil {
		log := p.Log()
		if pw, ok := u.User.Password(); ok && pw != "" && (strings.Contains(log, ":"+pw+"@") || strings.Contains(log, dbURL)) {
			t.Fatal("the database password appears in the sidecar's log")
		}
	}
}
