package store

import (
	"context"
	"fmt"
	"io/fs"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/llmusage/llmusage/internal/pgtest"
	"github.com/llmusage/llmusage/record"
	"github.com/llmusage/llmusage/usage"
)

// summaryRecords are calls over the last five UTC days and today: two
// users, a model under two providers, errors, priced and unpriced calls.
func summaryRecords(t *testing.T, today time.Time) []record.Record {
	var recs []record.Record
	for d := -4; d <= 0; d++ {
		at := today.AddDate(0, 0, d).Add(time.Duration(d+5) * time.Minute)
		for i := range d + 6 {
			r := rec(fmt.Sprintf("d%d-%d", d, i), []string{"alice", "bob"}[i%2], []string{"openai", "azure.ai.openai"}[i%3/2], "gpt-4o", int64(10*i+1), int64(i), at)
			if i%4 == 3 {
				r.Status = record.StatusError
			}
			if i%3 != 1 {
				r = priced(t, r, fmt.Sprintf("0.%09d", 1000*i+d+7))
			}
			recs = append(recs, r)
		}
	}
	return recs
}

// expectedUsage sums recs as the usage API must, in Go, apart from any
// SQL: the records of user (or all) from since on.
func expectedUsage(recs []record.Record, user string, since time.Time) usage.Breakdown {
	u := usage.NewBreakdown()
	byDay := map[string]usage.Totals{}
	var days []string
	for _, r := range recs {
		if (user != "" && r.UserID != user) || r.Timestamp.Before(since) {
			continue
		}
		t := usage.Totals{Calls: 1, Tokens: r.TotalTokens, PromptTokens: r.PromptTokens, CompletionTokens: r.CompletionTokens}
		if r.Status == record.StatusError {
			t.Errors = 1
		}
		if r.HasCost {
			t.CostUSD = r.Cost
		} else {
			t.UnpricedCalls = 1
		}
		u.Add(r.Model, r.Provider, t)
		day := r.Timestamp.UTC().Format(time.DateOnly)
		if _, ok := byDay[day]; !ok {
			days = append(days, day)
		}
		byDay[day] = byDay[day].Plus(t)
	}
	for _, d := range days {
		u.AddDay(d, byDay[d])
	}
	return u
}

func sameUsage(t *testing.T, what string, got, want usage.Breakdown) {
	t.Helper()
	models := func(b usage.Breakdown) string {
		out := ""
		for _, m := range slices.Sorted(maps.Keys(b.ByModel)) {
			out += fmt.Sprintf("%s %s %+v;", m, b.ByModel[m].Provider, b.ByModel[m].Totals)
		}
		return out
	}
	if got.Totals != want.Totals || fmt.Sprint(got.ByDay) != fmt.Sprint(want.ByDay) ||
		models(got) != models(want) || fmt.Sprint(got.ByProvider) != fmt.Sprint(want.ByProvider) {
		t.Fatalf("%s:\n got %+v\nwant %+v", what, got, want)
	}
}

// TestSummaryKeepsHistory: the usage API's answers are the sums of the
// records, whether the whole days are pending or stepped into the
// summary, and still after retention deleted their raw rows.
func TestSummaryKeepsHistory(t *testing.T) {
	forEachStore(t, func(t *testing.T, s Store, _ func(string)) {
		ctx := context.Background()
		today := time.Now().UTC().Truncate(24 * time.Hour)
		recs := summaryRecords(t, today)
		if _, err := s.Insert(ctx, recs); err != nil {
			t.Fatal(err)
		}
		check := func(what string) {
			t.Helper()
			for _, q := range []usage.Query{
				{Since: today.AddDate(0, 0, -29)},
				{UserID: "alice", Since: today.AddDate(0, 0, -29)},
				{UserID: "bob", Since: today.AddDate(0, 0, -2)},
				{Since: today},
			} {
				got, err := s.Usage(ctx, q)
				if err != nil {
					t.Fatal(err)
				}
				sameUsage(t, fmt.Sprintf("%s, %+v", what, q), got, expectedUsage(recs, q.UserID, q.Since))
			}
		}
		// Since within a day: that day comes from the raw rows (the usage
		// API asks for whole days only; retention leaves no raw rows to
		// split a day with).
		partial := usage.Query{Since: today.AddDate(0, 0, -3).Add(time.Minute + 30*time.Second)}
		if got, err := s.Usage(ctx, partial); err != nil {
			t.Fatal(err)
		} else {
			sameUsage(t, "from within a day", got, expectedUsage(recs, "", partial.Since))
		}
		check("pending")
		if _, pg := s.(*postgresStore); pg {
			if got := queryOne(t, s, `SELECT count(*) FROM llm_usage_daily_summary`); got != "0" {
				t.Fatalf("the summary has %s rows before a step", got)
			}
		}
		written, held, err := s.StepSummary(ctx)
		if err != nil || !held {
			t.Fatalf("step: %d, %v, %v", written, held, err)
		}
		if got := queryOne(t, s, `SELECT count(*) FROM llm_usage_daily_summary`); got != "15" {
			t.Fatalf("the summary has %s rows, want 15 (day, user, provider) groups", got)
		}
		check("stepped")
		deleted, held, err := s.DeleteBefore(ctx, today, 1000)
		if err != nil || !held || deleted != 14 {
			t.Fatalf("retention deleted %d, %v, %v; want the 14 rows before today", deleted, held, err)
		}
		if got := queryOne(t, s, `SELECT count(*) FROM llm_usage_logs`); got != "6" {
			t.Fatalf("%s rows left, want today's 6", got)
		}
		check("after retention")
	})
}

// TestSummaryStepIsIncremental: a step writes the groups of what was
// inserted since the last one, not every group of the table.
func TestSummaryStepIsIncremental(t *testing.T) {
	s := openMigrated(t, Options{DatabaseURL: pgtest.URL(t)})
	ctx := context.Background()
	var recs []record.Record
	for i := range 2000 {
		recs = append(recs, rec(fmt.Sprintf("r%d", i), fmt.Sprintf("user-%d", i%500), "openai", "gpt-4o", 1, 1, t0.Add(time.Duration(i)*time.Minute)))
	}
	if _, err := s.Insert(ctx, recs); err != nil {
		t.Fatal(err)
	}
	if written, _, err := s.StepSummary(ctx); err != nil || written < 500 {
		t.Fatalf("first step: %d, %v", written, err)
	}
	// Priced, into a group whose calls so far were not: the group's cost
	// becomes the new call's.
	if _, err := s.Insert(ctx, []record.Record{priced(t, rec("new", "user-7", "openai", "gpt-4o", 1, 1, t0), "0.25")}); err != nil {
		t.Fatal(err)
	}
	if got := queryOne(t, s, `SELECT count(*) FROM llm_usage_summary_pending`); got != "1" {
		t.Fatalf("%s pending rows after one insert of one record", got)
	}
	if written, _, err := s.StepSummary(ctx); err != nil || written != 1 {
		t.Fatalf("second step wrote %d rows (%v); want the new record's group alone", written, err)
	}
	if got := queryOne(t, s, `SELECT count(*) FROM llm_usage_summary_pending`); got != "0" {
		t.Fatalf("%s pending rows after a step", got)
	}
	if got := queryOne(t, s, `SELECT calls || ' ' || cost_usd || ' ' || unpriced_calls FROM llm_usage_daily_summary WHERE user_id = 'user-7' AND day = '2026-11-20'`); got != "3 0.250000000 2" {
		t.Fatalf("user-7's day: %s", got)
	}
}

// TestSummaryUnderConcurrentWriters: writers and steps racing (several
// sidecars, cron) leave the summary equal to the raw rows' sums.
func TestSummaryUnderConcurrentWriters(t *testing.T) {
	url := pgtest.URL(t)
	s := openMigrated(t, Options{DatabaseURL: url})
	others := make([]Store, 3)
	for i := range others {
		others[i] = openMigrated(t, Options{DatabaseURL: url})
	}
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for w, st := range others {
		wg.Go(func() {
			for b := range 20 {
				var recs []record.Record
				for i := range 50 {
					r := rec(fmt.Sprintf("w%d-%d-%d", w, b, i), fmt.Sprintf("u%d", i%3), "openai", "gpt-4o", int64(i), 1, t0.Add(time.Duration(i%30)*time.Hour))
					recs = append(recs, priced(t, r, "0.000000003"))
				}
				if _, err := st.Insert(ctx, recs); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	stepping := make(chan struct{})
	for _, st := range []Store{s, others[0]} {
		wg.Go(func() {
			for {
				select {
				case <-stepping:
					return
				default:
				}
				if _, _, err := st.StepSummary(ctx); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	time.Sleep(10 * time.Millisecond)
	for len(errs) == 0 && queryOne(t, s, `SELECT count(*) FROM llm_usage_logs`) != "3000" {
		time.Sleep(10 * time.Millisecond)
	}
	close(stepping)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if _, _, err := s.StepSummary(ctx); err != nil {
		t.Fatal(err)
	}
	diff := queryOne(t, s, `SELECT count(*) FROM (
		(SELECT (created_at AT TIME ZONE 'UTC')::date, user_id, provider, model, count(*), sum(tokens_used), sum(cost_usd)
		 FROM llm_usage_logs GROUP BY 1, 2, 3, 4
		 EXCEPT SELECT day, user_id, provider, model, calls, tokens_used, cost_usd FROM llm_usage_daily_summary)
		UNION ALL
		(SELECT day, user_id, provider, model, calls, tokens_used, cost_usd FROM llm_usage_daily_summary
		 EXCEPT SELECT (created_at AT TIME ZONE 'UTC')::date, user_id, provider, model, count(*), sum(tokens_used), sum(cost_usd)
		 FROM llm_usage_logs GROUP BY 1, 2, 3, 4)) d`)
	if diff != "0" {
		t.Fatalf("%s summary rows differ from the sums of the raw rows", diff)
	}
}

// TestMaintenanceLocks: while another session holds a lock, a sidecar
// skips that upkeep and touches nothing.
func TestMaintenanceLocks(t *testing.T) {
	s := openMigrated(t, Options{DatabaseURL: pgtest.URL(t)}).(*postgresStore)
	ctx := context.Background()
	if _, err := s.Insert(ctx, []record.Record{rec("old", "alice", "openai", "gpt-4o", 1, 1, t0)}); err != nil {
		t.Fatal(err)
	}
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	for _, key := range []int64{summaryLockKey, retentionLockKey} {
		if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, key); err != nil {
			t.Fatal(err)
		}
	}
	if written, held, err := s.StepSummary(ctx); err != nil || held || written != 0 {
		t.Fatalf("step under another's lock: %d, %v, %v", written, held, err)
	}
	if deleted, held, err := s.DeleteBefore(ctx, time.Now(), 10); err != nil || held || deleted != 0 {
		t.Fatalf("retention under another's lock: %d, %v, %v", deleted, held, err)
	}
	if got := queryOne(t, s, `SELECT count(*) FROM llm_usage_summary_pending`) + queryOne(t, s, `SELECT count(*) FROM llm_usage_logs`); got != "11" {
		t.Fatalf("pending and raw rows: %s, want both untouched", got)
	}
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_unlock_all()`); err != nil {
		t.Fatal(err)
	}
	if written, held, err := s.StepSummary(ctx); err != nil || !held || written != 1 {
		t.Fatalf("step once free: %d, %v, %v", written, held, err)
	}
}

// TestRetentionBatches: rows before the cutoff go, oldest first, at most
// a batch per transaction; the others stay.
func TestRetentionBatches(t *testing.T) {
	forEachStore(t, func(t *testing.T, s Store, _ func(string)) {
		ctx := context.Background()
		var recs []record.Record
		for i := range 15 {
			recs = append(recs, rec(fmt.Sprintf("r%d", i), "alice", "openai", "gpt-4o", 1, 1, t0.Add(time.Duration(i)*time.Hour)))
		}
		if _, err := s.Insert(ctx, recs); err != nil {
			t.Fatal(err)
		}
		cutoff := t0.Add(12 * time.Hour)
		var got []int
		for {
			n, held, err := s.DeleteBefore(ctx, cutoff, 5)
			if err != nil || !held {
				t.Fatalf("delete: %v, %v", held, err)
			}
			got = append(got, n)
			if n < 5 {
				break
			}
		}
		if fmt.Sprint(got) != "[5 5 2]" {
			t.Fatalf("batches deleted %v, want [5 5 2]", got)
		}
		if left := queryOne(t, s, `SELECT min(request_id) || ' ' || count(*) FROM llm_usage_logs`); left != "r12 3" {
			t.Fatalf("left: %s, want r12 to r14", left)
		}
	})
}

func TestRetentionCutoff(t *testing.T) {
	now := time.Date(2026, 12, 15, 10, 0, 0, 0, time.UTC)
	f := func(retention time.Duration, keep func(time.Time) time.Time, want time.Time) {
		t.Helper()
		o := MaintenanceOptions{Retention: retention, KeepSince: keep}
		if got := o.RetentionCutoff(now); !got.Equal(want) {
			t.Fatalf("cutoff %s, want %s", got, want)
		}
	}
	monthStart := func(now time.Time) time.Time { return time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC) }
	f(24*time.Hour, nil, now.Add(-24*time.Hour))
	// A month's budget needs the month's rows.
	f(24*time.Hour, monthStart, monthStart(now))
	// A retention longer than the budget period is kept as it is.
	f(90*24*time.Hour, monthStart, now.Add(-90*24*time.Hour))
}

// TestRetentionKeepsToday: the usage API reads today from the raw rows,
// so a retention shorter than a day keeps every row since today's UTC
// midnight, and the stats of today stay whole.
func TestRetentionKeepsToday(t *testing.T) {
	now := time.Date(2026, 12, 15, 10, 0, 0, 0, time.UTC)
	midnight := time.Date(2026, 12, 15, 0, 0, 0, 0, time.UTC)
	for _, retention := range []time.Duration{time.Minute, time.Hour, 10 * time.Hour} {
		if got := (MaintenanceOptions{Retention: retention}).RetentionCutoff(now); !got.Equal(midnight) {
			t.Fatalf("--retention %s at %s: cutoff %s, want today's midnight %s", retention, now, got, midnight)
		}
	}
	// In another zone, the day is still UTC's.
	if got := (MaintenanceOptions{Retention: time.Hour}).RetentionCutoff(now.In(time.FixedZone("UTC-8", -8*3600))); !got.Equal(midnight) {
		t.Fatalf("cutoff %s, want %s", got, midnight)
	}
}

// TestSummaryMigrationConcurrent: sidecars of a fleet started together
// with --migrate (serve's default) each apply migration 00006 to a
// database at version 5: one waits on the other's lock, then finds the
// summary already a table, and neither fails.
func TestSummaryMigrationConcurrent(t *testing.T) {
	url := pgtest.URL(t)
	ctx := context.Background()
	// Version 6, then back to version 5: a database of the release before 00006.
	migrateUpTo(t, url, 6)
	execAll(t, url, `DROP TRIGGER llm_usage_logs_summary ON llm_usage_logs; DROP FUNCTION llmusage_summary_collect();
		DROP TABLE llm_usage_summary_pending; DROP FUNCTION refresh_llm_usage_summary(); DROP TABLE llm_usage_daily_summary;
		CREATE MATERIALIZED VIEW llm_usage_daily_summary AS SELECT (created_at AT TIME ZONE 'UTC')::date AS day, user_id, provider, model,
		    count(*) AS calls, count(*) FILTER (WHERE status = 'error') AS errors, sum(tokens_used)::bigint AS tokens_used,
		    sum(prompt_tokens)::bigint AS prompt_tokens, sum(completion_tokens)::bigint AS completion_tokens,
		    sum(cached_tokens)::bigint AS cached_tokens, sum(reasoning_tokens)::bigint AS reasoning_tokens,
		    sum(cost_usd) AS cost_usd, count(*) FILTER (WHERE cost_usd IS NULL) AS unpriced_calls
		FROM llm_usage_logs GROUP BY 1, 2, 3, 4;
		CREATE UNIQUE INDEX idx_llm_usage_daily_summary_key ON llm_usage_daily_summary (day, user_id, provider, model);
		CREATE FUNCTION refresh_llm_usage_summary() RETURNS void LANGUAGE plpgsql AS $$ BEGIN REFRESH MATERIALIZED VIEW CONCURRENTLY llm_usage_daily_summary; END $$;
		INSERT INTO llm_usage_logs (request_id, user_id, model, provider, created_at) VALUES ('before', 'alice', 'gpt-4o', 'openai', '2026-11-20T10:00:00Z');
		DELETE FROM goose_db_version WHERE version_id = 6;`)
	const sidecars = 4
	stores := make([]Store, sidecars)
	for i := range stores {
		s, err := Open(ctx, Options{DatabaseURL: url})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		stores[i] = s
	}
	var wg sync.WaitGroup
	errs := make(chan error, sidecars)
	start := make(chan struct{})
	for _, s := range stores {
		wg.Go(func() {
			<-start
			if _, err := s.Migrate(ctx); err != nil {
				errs <- err
			}
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("concurrent migrate: %s", err)
	}
	if _, err := stores[0].Insert(ctx, []record.Record{rec("after", "alice", "openai", "gpt-4o", 1, 1, t0)}); err != nil {
		t.Fatal(err)
	}
	if got := queryOne(t, stores[0], `SELECT (SELECT coalesce(sum(calls), 0) FROM llm_usage_daily_summary) + (SELECT coalesce(sum(calls), 0) FROM llm_usage_summary_pending)`); got != "2" {
		t.Fatalf("summary and pending count %s calls, want 2 (one before the migration, one after)", got)
	}
}

// TestMigrateFreshDatabaseConcurrently: sidecars of a fleet starting
// together on an empty database (each with --migrate, the default) all
// start, and each migration is applied once.
func TestMigrateFreshDatabaseConcurrently(t *testing.T) {
	url := pgtest.URL(t)
	ctx := context.Background()
	const sidecars = 8
	applied := make([][]int64, sidecars)
	errs := make([]error, sidecars)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range sidecars {
		s, err := Open(ctx, Options{DatabaseURL: url})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		wg.Go(func() {
			<-start
			applied[i], errs[i] = s.Migrate(ctx)
		})
	}
	close(start)
	wg.Wait()
	var all []int64
	for i := range sidecars {
		if errs[i] != nil {
			t.Fatalf("sidecar %d: %v", i, errs[i])
		}
		all = append(all, applied[i]...)
	}
	slices.Sort(all)
	migrations, err := fs.Glob(migrations, "migrations/postgres/*.sql")
	if err != nil || len(all) != len(migrations) || len(slices.Compact(all)) != len(migrations) {
		t.Fatalf("applied %v by %d sidecars; want each of the %d migrations once", all, sidecars, len(migrations))
	}
}
