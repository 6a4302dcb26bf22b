package store

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/llmusage/llmusage/internal/pgtest"
	"github.com/llmusage/llmusage/record"
	"github.com/llmusage/llmusage/rules"
	"github.com/llmusage/llmusage/usage"
	"github.com/llmusage/llmusage/usd"
)

// groqSchema is the Groq-era schema of the system llmusage replaces, with
// the fewest log columns it may have had, uuid keys, and its own view,
// function and indexes.
const groqSchema = `
CREATE TABLE groq_usage_logs (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id UUID NOT NULL,
    model VARCHAR(100) NOT NULL,
    tokens_used INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    metadata JSONB,
    created_at TIMESTAMPTZ DEFAULT NOW()
);
CREATE INDEX idx_groq_usage_user_id ON groq_usage_logs(user_id);
CREATE INDEX idx_groq_usage_model ON groq_usage_logs(model);
CREATE INDEX idx_groq_usage_created_at ON groq_usage_logs(created_at);
CREATE TABLE groq_rate_limit_configs (id SERIAL PRIMARY KEY, limit_type VARCHAR(20) NOT NULL UNIQUE, limit_value INTEGER NOT NULL, description TEXT);
INSERT INTO groq_rate_limit_configs (limit_type, limit_value, description) VALUES ('minute', 30, 'Default'), ('day', 14400, 'Groq free tier');
CREATE TABLE groq_rate_limits (id SERIAL PRIMARY KEY, user_id UUID NOT NULL, limit_type VARCHAR(20) NOT NULL, limit_value INTEGER NOT NULL, reset_at TIMESTAMPTZ,
    CONSTRAINT groq_rate_limits_positive CHECK (limit_value > 0));
CREATE FUNCTION touch_row() RETURNS trigger AS $$ BEGIN RETURN NEW; END; $$ LANGUAGE plpgsql;
CREATE TRIGGER groq_rate_limits_touch BEFORE INSERT ON groq_rate_limits FOR EACH ROW EXECUTE FUNCTION touch_row();
INSERT INTO groq_rate_limits (user_id, limit_type, limit_value) VALUES ('11111111-1111-1111-1111-111111111111', 'minute', 200);
INSERT INTO groq_usage_logs (user_id, model, tokens_used, prompt_tokens, completion_tokens, metadata, created_at) VALUES
    ('11111111-1111-1111-1111-111111111111', 'llama-3.1-70b-versatile', 150, 100, 50, NULL, '2025-06-01T10:00:00Z'),
    ('11111111-1111-1111-1111-111111111111', 'llama-3.1-8b-instant', 15, 10, 5, '{"route": "/chat"}', '2025-06-01T11:00:00Z'),
    ('22222222-2222-2222-2222-222222222222', 'gpt-4', 30, 20, 10, '{"provider": "OpenAI"}', '2025-06-02T09:00:00Z');
CREATE MATERIALIZED VIEW groq_usage_daily_summary AS
    SELECT user_id, DATE(created_at) AS date, model, COUNT(*) AS total_calls, SUM(tokens_used) AS total_tokens
    FROM groq_usage_logs GROUP BY user_id, DATE(created_at), model;
CREATE UNIQUE INDEX idx_groq_usage_daily_summary ON groq_usage_daily_summary(user_id, date, model);
CREATE FUNCTION refresh_groq_usage_summary() RETURNS void AS $$
BEGIN
    REFRESH MATERIALIZED VIEW CONCURRENTLY groq_usage_daily_summary;
END;
$$ LANGUAGE plpgsql;
`

func execAll(t *testing.T, url, sql string) {
	t.Helper()
	ctx := context.Background()
	c, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	if _, err := c.Exec(ctx, sql); err != nil {
		t.Fatalf("%s: %s", sql, err)
	}
}

func queryStrings(t *testing.T, s *postgresStore, sql string) []string {
	t.Helper()
	rows, err := s.pool.Query(context.Background(), sql)
	if err != nil {
		t.Fatalf("%s: %s", sql, err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatalf("%s: %s", sql, err)
	}
	return out
}

func TestAdoptGroqDatabase(t *testing.T) {
	url := pgtest.URL(t)
	execAll(t, url, groqSchema)
	s := openMigrated(t, Options{DatabaseURL: url}).(*postgresStore)
	ctx := context.Background()

	if got := queryStrings(t, s, `SELECT relname::text FROM pg_class WHERE relname LIKE 'groq%' OR relname LIKE 'idx_groq%'`); len(got) != 0 {
		t.Fatalf("legacy objects left: %v", got)
	}
	if got := queryStrings(t, s, `SELECT relname::text FROM pg_class WHERE relname LIKE '%groq%'`); len(got) != 0 {
		t.Fatalf("legacy relations (tables, indexes, sequences, views) left: %v", got)
	}
	if got := queryStrings(t, s, `SELECT conname::text FROM pg_constraint WHERE conname LIKE '%groq%'`); len(got) != 0 {
		t.Fatalf("legacy constraints left: %v", got)
	}
	if got := queryStrings(t, s, `SELECT tgname::text FROM pg_trigger WHERE tgname LIKE '%groq%'`); len(got) != 0 {
		t.Fatalf("legacy triggers left: %v", got)
	}
	if got := queryStrings(t, s, `SELECT proname::text FROM pg_proc WHERE proname LIKE '%groq%'`); len(got) != 0 {
		t.Fatalf("legacy functions left: %v", got)
	}
	// The renamed constraints still hold.
	if got := queryStrings(t, s, `SELECT conname::text FROM pg_constraint WHERE conrelid IN ('llm_rate_limit_configs'::regclass, 'llm_rate_limits'::regclass) ORDER BY 1`); strings.Join(got, " ") != "llm_rate_limit_configs_limit_type_key llm_rate_limit_configs_limit_usd_check llm_rate_limit_configs_pkey llm_rate_limits_limit_usd_check llm_rate_limits_pkey llm_rate_limits_positive" {
		t.Fatalf("constraints of the adopted rule tables: %v", got)
	}
	got := queryStrings(t, s, `SELECT user_id || ' ' || model || ' ' || provider || ' ' || tokens_used FROM llm_usage_logs ORDER BY created_at`)
	want := []string{
		"11111111-1111-1111-1111-111111111111 llama-3.1-70b-versatile groq 150",
		"11111111-1111-1111-1111-111111111111 llama-3.1-8b-instant groq 15",
		"22222222-2222-2222-2222-222222222222 gpt-4 openai 30",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("adopted rows:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// Adopted rows predate costs: unpriced, which is not free.
	if got := queryStrings(t, s, `SELECT count(*)::text FROM llm_usage_logs WHERE cost_usd IS NULL`); got[0] != "3" {
		t.Fatalf("adopted rows with a NULL cost: %v, want all 3", got)
	}
	if u, err := s.Usage(ctx, usage.Query{Since: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}); err != nil || u.Calls != 3 || u.UnpricedCalls != 3 || u.CostUSD != 0 {
		t.Fatalf("usage of the adopted rows: %+v, %v", u.Totals, err)
	}
	legacyUser := usage.SpendQuery{UserID: "11111111-1111-1111-1111-111111111111", From: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC), To: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	if spent, err := s.Spent(ctx, legacyUser); err != nil || spent != 0 {
		t.Fatalf("spend of an adopted user: %s, %v", spent, err)
	}
	for _, idx := range []string{"idx_llm_usage_user_id", "idx_llm_usage_model", "idx_llm_usage_created_at", "idx_llm_usage_request_id", "idx_llm_usage_user_created"} {
		if got := queryStrings(t, s, `SELECT indexname::text FROM pg_indexes WHERE indexname = '`+idx+`'`); len(got) != 1 {
			t.Fatalf("index %s missing", idx)
		}
	}
	execAll(t, url, `SELECT refresh_llm_usage_summary()`)
	if got := queryStrings(t, s, `SELECT provider || ' ' || calls || ' ' || coalesce(cost_usd::text, 'NULL') || ' ' || unpriced_calls FROM llm_usage_daily_summary ORDER BY day, provider, model`); len(got) != 3 || got[0] != "groq 1 NULL 1" {
		t.Fatalf("summary over adopted rows: %v", got)
	}
	rows, err := s.RuleRows(ctx)
	if err != nil || len(rows) != 3 {
		t.Fatalf("rule rows from adopted tables: %+v %v", rows, err)
	}
	for _, r := range rows {
		if r.Seeded || r.LimitUSD != nil {
			t.Fatalf("adopted row %+v taken for a seeded default, or with a budget amount", r)
		}
	}
	if set := rules.Merge(nil, rows); len(set.InForce) != 3 || len(set.Skipped) != 0 {
		t.Fatalf("rules from adopted tables: %+v", set)
	}

	// An adopted rule table takes budgets (its own CHECK on limit_value stays).
	execAll(t, url, `INSERT INTO llm_rate_limits (user_id, limit_type, limit_value, unit, limit_usd) VALUES ('11111111-1111-1111-1111-111111111111', 'month', 1, 'usd', 2.5)`)
	if rows, err := s.RuleRows(ctx); err != nil || len(rows) != 4 || rows[3].LimitUSD == nil || *rows[3].LimitUSD != "2.5" || rows[3].LimitType != "month" {
		t.Fatalf("a budget row in an adopted table: %+v, %v", rows, err)
	}

	// The adopted table takes new records, with any user_id and a cost,
	// and pages by its uuid keys.
	var recs []record.Record
	for i := 0; i < 5; i++ {
		r := rec("new-"+string(rune('a'+i)), "alice", "openai", "gpt-4o", 1, 1, t0)
		r.Cost, r.HasCost = usd.Amount(i+1), true
		recs = append(recs, r)
	}
	if n, err := s.Insert(ctx, recs); err != nil || n != 5 {
		t.Fatalf("insert into the adopted table: %d, %v", n, err)
	}
	seen := 0
	for q := (usage.LogQuery{Limit: 3}); ; {
		page, err := s.Logs(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		seen += len(page.Logs)
		for _, e := range page.Logs {
			if adopted := e.UserID != "alice"; (e.CostUSD == nil) != adopted {
				t.Fatalf("log entry %+v: want a cost exactly on the new records", e)
			}
		}
		if page.NextCursor == "" {
			break
		}
		q.Before = page.NextCursor
	}
	if seen != 8 {
		t.Fatalf("paged through %d rows, want 8", seen)
	}
	if spent, err := s.Spent(ctx, usage.SpendQuery{UserID: "alice", Model: "GPT-4o", From: t0, To: t0.Add(time.Second)}); err != nil || spent != 15 {
		t.Fatalf("spend of new records in the adopted table: %d nano-USD, %v; want 15", spent, err)
	}

	// Teams: records, rule rows, logs, usage and a pool's spend.
	team := rec("new-team", "bob", "openai", "gpt-4o", 1, 1, t0)
	team.TeamID, team.Cost, team.HasCost = "red", 7, true
	if n, err := s.Insert(ctx, []record.Record{team}); err != nil || n != 1 {
		t.Fatalf("insert a team's record into the adopted table: %d, %v", n, err)
	}
	if page, err := s.Logs(ctx, usage.LogQuery{TeamID: "red", Limit: 5}); err != nil || len(page.Logs) != 1 || page.Logs[0].TeamID != "red" {
		t.Fatalf("team logs of the adopted table: %+v, %v", page, err)
	}
	if spent, err := s.Spent(ctx, usage.SpendQuery{TeamID: "red", From: t0, To: t0.Add(time.Second)}); err != nil || spent != 7 {
		t.Fatalf("team pool spend in the adopted table: %d nano-USD, %v; want 7", spent, err)
	}
	if u, err := s.Usage(ctx, usage.Query{Since: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}); err != nil || u.ByTeam["red"].Calls != 1 || u.ByTeam[""].Calls != 8 {
		t.Fatalf("usage by team of the adopted table: %+v, %v", u.ByTeam, err)
	}
	execAll(t, url, `UPDATE llm_rate_limits SET team_id = 'red', per = 'team' WHERE limit_type = 'month'`)
	if rows, err := s.RuleRows(ctx); err != nil || rows[3].TeamID != "red" || rows[3].Per != "team" {
		t.Fatalf("team rule row in an adopted table: %+v, %v", rows, err)
	}

	// Idempotent: a second run changes nothing.
	if applied, err := s.Migrate(ctx); err != nil || len(applied) != 0 {
		t.Fatalf("second migrate: %v, %v", applied, err)
	}
}

func TestAdoptRefusesTwoFullTables(t *testing.T) {
	url := pgtest.URL(t)
	execAll(t, url, groqSchema+`
CREATE TABLE llm_usage_logs (id BIGSERIAL PRIMARY KEY, user_id TEXT NOT NULL, model TEXT NOT NULL, tokens_used BIGINT, prompt_tokens BIGINT, completion_tokens BIGINT, metadata JSONB, created_at TIMESTAMPTZ);
INSERT INTO llm_usage_logs (user_id, model, tokens_used, created_at) VALUES ('bob', 'gpt-4', 9, now());`)
	s, err := Open(context.Background(), Options{DatabaseURL: url})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_, err = s.Migrate(context.Background())
	if err == nil || !strings.Contains(err.Error(), "cannot adopt the legacy table groq_usage_logs: llm_usage_logs holds rows too") {
		t.Fatalf("migrate: %v, want a refusal naming both tables", err)
	}
	ps := s.(*postgresStore)
	if got := queryStrings(t, ps, `SELECT count(*)::text FROM groq_usage_logs`); got[0] != "3" {
		t.Fatalf("groq_usage_logs changed: %v rows", got)
	}
	if got := queryStrings(t, ps, `SELECT count(*)::text FROM llm_usage_logs`); got[0] != "1" {
		t.Fatalf("llm_usage_logs changed: %v rows", got)
	}
	if got := queryStrings(t, ps, `SELECT relname::text FROM pg_class WHERE relname IN ('groq_usage_daily_summary', 'idx_groq_usage_model', 'groq_rate_limits')`); len(got) != 3 {
		t.Fatalf("legacy objects touched: %v", got)
	}
}

func TestAdoptOverEmptyNewTables(t *testing.T) {
	// The seed's renamed migration may have created empty llm_* tables
	// beside the Groq-era ones that hold the data.
	url := pgtest.URL(t)
	execAll(t, url, groqSchema+`
CREATE TABLE llm_usage_logs (id BIGSERIAL PRIMARY KEY, user_id TEXT NOT NULL, model TEXT NOT NULL, tokens_used BIGINT, metadata JSONB, created_at TIMESTAMPTZ);
CREATE TABLE llm_rate_limits (id BIGSERIAL PRIMARY KEY, user_id TEXT NOT NULL, limit_type TEXT NOT NULL, limit_value BIGINT NOT NULL);`)
	s := openMigrated(t, Options{DatabaseURL: url}).(*postgresStore)
	if got := queryStrings(t, s, `SELECT count(*)::text FROM llm_usage_logs`); got[0] != "3" {
		t.Fatalf("llm_usage_logs has %v rows, want the 3 adopted ones", got)
	}
	if got := queryStrings(t, s, `SELECT count(*)::text FROM llm_rate_limits`); got[0] != "1" {
		t.Fatalf("llm_rate_limits has %v rows, want the adopted one", got)
	}
}

// TestQueriesUseIndexes checks with EXPLAIN that the usage and logs
// queries can be answered from indexes.
func TestQueriesUseIndexes(t *testing.T) {
	s := openMigrated(t, Options{DatabaseURL: pgtest.URL(t)}).(*postgresStore)
	ctx := context.Background()
	execAll(t, pgURL(s), `INSERT INTO llm_usage_logs (request_id, user_id, provider, model, created_at)
		SELECT 'r' || i, 'u' || (i % 500), 'openai', 'gpt-' || (i % 7), now() - i * interval '1 minute' FROM generate_series(1, 20000) i;
		ANALYZE llm_usage_logs;`)
	f := func(sql string, args ...any) {
		t.Helper()
		rows, err := s.pool.Query(ctx, "EXPLAIN "+sql, args...)
		if err != nil {
			t.Fatal(err)
		}
		plan := strings.Join(must(pgx.CollectRows(rows, pgx.RowTo[string])), "\n")
		if strings.Contains(plan, "Seq Scan on llm_usage_logs") {
			t.Fatalf("full scan for %s:\n%s", sql, plan)
		}
	}
	f(`SELECT id FROM llm_usage_logs WHERE user_id = $1 ORDER BY created_at DESC, id DESC LIMIT 51`, "u7")
	f(`SELECT id FROM llm_usage_logs ORDER BY created_at DESC, id DESC LIMIT 51`)
	f(`SELECT model, count(*) FROM llm_usage_logs WHERE created_at >= now() - interval '1 day' AND user_id = $1 GROUP BY model`, "u7")
	f(`SELECT model, count(*) FROM llm_usage_logs WHERE created_at >= now() - interval '1 hour' GROUP BY model`)
}

func pgURL(s *postgresStore) string { return s.pool.Config().ConnString() }

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// TestAdoptRowsWithoutCreatedAt: the Groq-era created_at may be NULL
// (its column had a default but no NOT NULL). Such rows belong to no day:
// the migration to the incremental summary, and later inserts of them,
// must not fail on them, and every dated row is still summed.
func TestAdoptRowsWithoutCreatedAt(t *testing.T) {
	url := pgtest.URL(t)
	execAll(t, url, groqSchema+`
INSERT INTO groq_usage_logs (user_id, model, tokens_used, created_at) VALUES ('11111111-1111-1111-1111-111111111111', 'gpt-4', 7, NULL);`)
	s := openMigrated(t, Options{DatabaseURL: url}).(*postgresStore)
	// An application of the seed's era still writing to the table.
	execAll(t, url, `INSERT INTO llm_usage_logs (user_id, model, tokens_used, created_at) VALUES ('33333333-3333-3333-3333-333333333333', 'gpt-4', 9, NULL)`)
	execAll(t, url, `SELECT refresh_llm_usage_summary()`)
	if got := queryStrings(t, s, `SELECT sum(calls)::text || ' ' || sum(tokens_used)::text FROM llm_usage_daily_summary`); got[0] != "3 195" {
		t.Fatalf("summary over the dated adopted rows: %v, want their 3 calls and 195 tokens", got)
	}
	if u, err := s.Usage(context.Background(), usage.Query{Since: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}); err != nil || u.Calls != 3 {
		t.Fatalf("usage of the adopted rows: %+v, %v", u.Totals, err)
	}
}
