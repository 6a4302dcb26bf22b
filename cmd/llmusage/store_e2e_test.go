package main

import (
	"context"
	"database/sql"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	_ "modernc.org/sqlite"

	"github.com/llmusage/llmusage/internal/pgtest"
)

// sqliteWithoutDefaults migrates a fresh SQLite file with llmusage migrate
// and deletes the seeded default rules, returning its --database-url.
func sqliteWithoutDefaults(t *testing.T, path string) string {
	t.Helper()
	dbURL := "sqlite:" + path
	if out, err := exec.Command(binary, "migrate", "--database-url", dbURL).CombinedOutput(); err != nil {
		t.Fatalf("llmusage migrate: %s\n%s", err, out)
	}
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`DELETE FROM llm_rate_limit_configs`); err != nil {
		t.Fatal(err)
	}
	return dbURL
}

// TestDefaultStore runs serve with no database flag at all: records land
// in <data-dir>/llmusage.db and come back through the usage API.
func TestDefaultStore(t *testing.T) {
	dataDir := t.TempDir()
	cmd := exec.Command(binary, "serve", "--listen-address", "127.0.0.1:0", "--metrics-address", "127.0.0.1:0", "--flush-interval", "50ms")
	cmd.Dir = dataDir // the default --data-dir is ./llmusage-data
	p := &sidecarProc{cmd: cmd, stderr: &syncBuffer{},
		exited: make(chan error, 1), client: &http.Client{Timeout: 10 * time.Second}}
	startProc(t, p)

	code, _, out := p.post(t, "/v1/calls", "application/json", `[
  {"user_id": "alice", "model": "llama-3.1-70b-versatile", "prompt_tokens": 1000, "completion_tokens": 250, "metadata": {"provider": "groq"}, "request_id": "seed-1"},
  {"user_id": "alice", "model": "gpt-4", "prompt_tokens": 200, "completion_tokens": 100, "request_id": "seed-2"},
  {"user_id": "bob", "model": "claude-3-opus", "prompt_tokens": 50, "completion_tokens": 30, "request_id": "seed-3"}]`)
	if code != http.StatusAccepted || out["accepted"] != float64(3) {
		t.Fatalf("records: %d %v", code, out)
	}
	var logs []any
	waitFor(t, func() bool {
		_, page := p.get(t, p.api+"/api/llm/usage/logs?limit=10")
		logs, _ = page["logs"].([]any)
		return len(logs) == 3
	})
	if newest := logs[0].(map[string]any); newest["request_id"] != "seed-3" || newest["provider"] != "anthropic" || newest["tokens_used"] != float64(80) {
		t.Fatalf("newest log %v", newest)
	}
	_, stats := p.get(t, p.api+"/api/llm/usage/stats?user_id=alice&days=7")
	byModel := stats["by_model"].(map[string]any)
	if stats["total_calls"] != float64(2) || stats["total_tokens"] != float64(1550) || byModel["gpt-4"].(map[string]any)["provider"] != "openai" {
		t.Fatalf("stats %v", stats)
	}
	// The seeded defaults apply: 30 requests a minute.
	_, lim := p.get(t, p.api+"/api/llm/usage/rate-limit/minute?user_id=alice")
	if lim["limit"] != float64(30) || lim["used"] != float64(2) {
		t.Fatalf("default minute limit %v", lim)
	}
	if err := p.stop(t, syscall.SIGTERM); err != nil {
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
	out, err := exec.Command(binary, "migrate", "--database-url", dbURL).CombinedOutput()
	if err != nil {
		t.Fatalf("llmusage migrate: %s\n%s", err, out)
	}
	out, err = exec.Command(binary, "migrate", "--status", "--database-url", dbURL).CombinedOutput()
	if err != nil || strings.Count(string(out), "applied") != 2 || strings.Contains(string(out), "pending") {
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

	p := startSidecar(t, "", "LLMUSAGE_DATABASE_URL="+dbURL, "LLMUSAGE_MIGRATE=false")
	const batches, perBatch = 20, 500
	for b := 0; b < batches; b++ {
		var body strings.Builder
		for i := 0; i < perBatch; i++ {
			n := b*perBatch + i
			model, provider := []string{"gpt-4o", "claude-3-5-sonnet", "llama-3.1-8b-instant"}[n%3], []string{"openai", "anthropic", "groq"}[n%3]
			fmt.Fprintf(&body, `{"user_id":"user-%d","model":%q,"provider":%q,"prompt_tokens":%d,"completion_tokens":1,"request_id":"bulk-%d"}`+"\n", n%50, model, provider, n%7, n)
		}
		if code, _, out := p.post(t, "/v1/calls", "application/x-ndjson", body.String()); code != http.StatusAccepted || out["accepted"] != float64(perBatch) {
			t.Fatalf("batch %d: %d %v", b, code, out)
		}
	}
	dup := `{"user_id":"dup-user","model":"gpt-4","prompt_tokens":3,"request_id":"the-same-call"}`
	for i := 0; i < 2; i++ {
		if code, _, _ := p.post(t, "/v1/calls", "application/json", dup); code != http.StatusAccepted {
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
	waitFor(t, func() bool {
		return count("request_id LIKE 'bulk-%'") == batches*perBatch && count("request_id = 'the-same-call'") == 1
	})
	// Let any straggling flush land before counting for good.
	time.Sleep(200 * time.Millisecond)
	if n := count("true"); n != batches*perBatch+1 {
		t.Fatalf("%d rows, want %d", n, batches*perBatch+1)
	}

	_, stats := p.get(t, p.api+"/api/llm/usage/stats")
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
	waitFor(t, func() bool {
		_, lim := p.get(t, p.api+"/api/llm/usage/rate-limit/minute?user_id=user-id")
		return lim["limit"] == float64(200)
	})
	t.Logf("the new limit took effect %s after the INSERT", time.Since(start).Round(time.Millisecond))
	if _, lim := p.get(t, p.api+"/api/llm/usage/rate-limit/minute?user_id=someone-else"); lim["limit"] != float64(30) {
		t.Fatalf("other users keep the default: %v", lim)
	}

	if err := p.stop(t, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if u, _ := url.Parse(dbURL); u != nil {
		log := p.stderr.String()
		if pw, ok := u.User.Password(); ok && pw != "" && (strings.Contains(log, ":"+pw+"@") || strings.Contains(log, dbURL)) {
			t.Fatal("the database password appears in the sidecar's log")
		}
	}
}
