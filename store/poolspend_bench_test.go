package store

import (
	"context"
	"flag"
	"fmt"
	"testing"
	"time"

	"github.com/llmusage/llmusage/internal/pgtest"
	"github.com/llmusage/llmusage/usage"
	"github.com/llmusage/llmusage/usd"
)

// poolRows is the rows of llm_usage_logs BenchmarkPoolSpendPostgres fills:
// few by default, so that make bench stays brief; docs/benchmarks.md runs
// it on 10 million.
var poolRows = flag.Int("pool-rows", 200_000, "rows of llm_usage_logs for BenchmarkPoolSpendPostgres")

// BenchmarkPoolSpendPostgres measures a pool's spend (no user_id: every
// user's calls, or one team's), as a budget shared by a team or by every
// call reads it after a restart, over -pool-rows rows spread over the last
// 30 days (1,000 users, 20 teams and calls without one, 3 models), with
// the daily summary stepped as the sidecars step it. The sub-benchmarks:
// a calendar period of 30 whole days to now (a month's budget), a rolling
// 30 days (a partial first day from the raw rows), one team's pool, by
// model and team as the limiter asks; and, for comparison, the sum over
// every raw row of the period that the summary spares.
func BenchmarkPoolSpendPostgres(b *testing.B) {
	s := openMigratedB(b, Options{DatabaseURL: pgtest.URL(b)}).(*postgresStore)
	ctx := context.Background()
	rows := *poolRows
	start := time.Now()
	for off := 0; off < rows; off += 1_000_000 {
		n := min(rows-off, 1_000_000)
		_, err := s.pool.Exec(ctx, `INSERT INTO llm_usage_logs (request_id, user_id, team_id, provider, model, tokens_used, prompt_tokens,
				completion_tokens, cost_usd, created_at)
			SELECT 'p-' || i, 'user-' || (i % 1000), CASE WHEN i % 21 = 20 THEN NULL ELSE 'team-' || (i % 21) END, 'openai',
			       (ARRAY['gpt-4o', 'gpt-4o-mini', 'o3'])[1 + i % 3], 30, 20, 10, 0.000125,
			       now() - interval '30 days' + (i::float8 / $1) * interval '30 days'
			FROM generate_series($2::bigint, $3::bigint) i`, rows, off, off+n-1)
		if err != nil {
			b.Fatal(err)
		}
	}
	for {
		n, _, err := s.StepSummary(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if n == 0 {
			break
		}
	}
	if _, err := s.pool.Exec(ctx, `VACUUM ANALYZE llm_usage_logs, llm_usage_summary_pending, llm_usage_daily_summary`); err != nil {
		b.Fatal(err)
	}
	var size string
	if err := s.pool.QueryRow(ctx, `SELECT pg_size_pretty(pg_total_relation_size('llm_usage_logs'))`).Scan(&size); err != nil {
		b.Fatal(err)
	}
	b.Logf("%d rows inserted and summarised in %s; llm_usage_logs with its indexes: %s", rows, time.Since(start).Round(time.Second), size)

	now := time.Now()
	month := now.UTC().Truncate(24*time.Hour).AddDate(0, 0, -29)
	want := usd.Amount(0)
	for _, c := range []struct {
		name  string
		q     usage.SpendQuery
		model bool
	}{
		{"all-30-whole-days", usage.SpendQuery{From: month, To: now}, false},
		{"all-rolling-30-days", usage.SpendQuery{From: now.Add(-30 * 24 * time.Hour), To: now}, false},
		{"team-30-whole-days", usage.SpendQuery{TeamID: "team-7", From: month, To: now}, false},
		{"all-by-model-and-team", usage.SpendQuery{From: month, To: now}, true},
		{"team-by-model", usage.SpendQuery{TeamID: "team-7", Model: "gpt-4o*", From: month, To: now}, true},
	} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				if c.model {
					by, err := s.SpentByModel(ctx, c.q)
					if err != nil || len(by) == 0 {
						b.Fatal(by, err)
					}
					continue
				}
				spent, err := s.Spent(ctx, c.q)
				if err != nil || spent == 0 {
					b.Fatal(spent, err)
				}
				if c.name == "all-30-whole-days" {
					want = spent
				}
			}
		})
	}
	// What the summary spares: the same sum over every raw row.
	b.Run("raw-rows-30-whole-days", func(b *testing.B) {
		for b.Loop() {
			var spent usd.Amount
			if err := s.pool.QueryRow(ctx, `SELECT `+nanoUSD(`coalesce(sum(cost_usd), 0)`)+` FROM llm_usage_logs WHERE created_at >= $1 AND created_at < $2`,
				month, now).Scan(&spent); err != nil {
				b.Fatal(err)
			}
			if spent != want {
				b.Fatal(fmt.Sprintf("raw rows sum %s, the summary's %s", spent, want))
			}
		}
	})
}
