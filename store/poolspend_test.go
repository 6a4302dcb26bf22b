package store

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/llmusage/llmusage/internal/pgtest"
	"github.com/llmusage/llmusage/usage"
)

// TestPoolSpentUsesIndexes checks with EXPLAIN that a pool's spend reads
// whole days from the summary and today from an index alone: every
// user's calls from idx_llm_usage_created_at (idx_llm_usage_created_cover
// on SQLite), one team's from idx_llm_usage_team_created.
func TestPoolSpentUsesIndexes(t *testing.T) {
	now := time.Now()
	month := now.UTC().Truncate(24*time.Hour).AddDate(0, 0, -29)
	cases := []struct {
		q                usage.SpendQuery
		postgres, sqlite string
	}{
		{usage.SpendQuery{From: month, To: now}, "Index Only Scan using idx_llm_usage_created_at", "USING COVERING INDEX idx_llm_usage_created_cover (created_at>? AND created_at<?)"},
		{usage.SpendQuery{TeamID: "t3", From: month, To: now}, "Index Only Scan using idx_llm_usage_team_created", "USING COVERING INDEX idx_llm_usage_team_created (team_id=? AND created_at>? AND created_at<?)"},
	}
	t.Run("postgres", func(t *testing.T) {
		s := openMigrated(t, Options{DatabaseURL: pgtest.URL(t)}).(*postgresStore)
		execAll(t, pgURL(s), `INSERT INTO llm_usage_logs (request_id, user_id, team_id, provider, model, created_at, cost_usd)
			SELECT 'r' || i, 'u' || (i % 500), 't' || (i % 7), 'openai', 'gpt-' || (i % 7), now() - i * interval '50 second', i * 0.000001
			FROM generate_series(1, 50000) i`)
		execAll(t, pgURL(s), `SELECT refresh_llm_usage_summary()`)
		execAll(t, pgURL(s), `VACUUM ANALYZE llm_usage_logs, llm_usage_daily_summary, llm_usage_summary_pending`)
		for _, c := range cases {
			for _, byModel := range []bool{false, true} {
				sql, args := postgresSpend.spendQuery(c.q, byModel, now)
				rows, err := s.pool.Query(context.Background(), "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) "+sql, args...)
				if err != nil {
					t.Fatal(err)
				}
				plan := strings.Join(must(pgx.CollectRows(rows, pgx.RowTo[string])), "\n")
				if !strings.Contains(plan, c.postgres) || !strings.Contains(plan, "Heap Fetches: 0") || !strings.Contains(plan, "llm_usage_daily_summary") {
					t.Fatalf("%+v: the raw part is not an index-only scan (%s):\n%s\n%s", c.q, c.postgres, sql, plan)
				}
			}
		}
	})
	t.Run("sqlite", func(t *testing.T) {
		s := openMigrated(t, Options{DataDir: t.TempDir()}).(*sqliteStore)
		for _, c := range cases {
			query, args := sqliteSpend.spendQuery(c.q, true, now)
			rows, err := s.db.Query("EXPLAIN QUERY PLAN "+query, args...)
			if err != nil {
				t.Fatal(err)
			}
			var plan []string
			for rows.Next() {
				var id, parent, unused int
				var detail string
				if err := rows.Scan(&id, &parent, &unused, &detail); err != nil {
					t.Fatal(err)
				}
				plan = append(plan, detail)
			}
			rows.Close()
			if p := strings.Join(plan, "\n"); !strings.Contains(p, c.sqlite) || !strings.Contains(p, "llmusage_daily_totals") {
				t.Fatalf("%+v: the raw part does not range-scan %s:\n%s", c.q, c.sqlite, p)
			}
		}
	})
}
