package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"

	"github.com/llmusage/llmusage/internal/pgtest"
	"github.com/llmusage/llmusage/record"
	"github.com/llmusage/llmusage/usage"
)

// cacheWriting returns r with cached reads and writes, as an Anthropic
// call reports them (both part of PromptTokens).
func cacheWriting(r record.Record, cached, written int64) record.Record {
	r.CachedTokens, r.CacheWriteTokens = cached, written
	return r
}

// cacheWritesOf reads the logs into request_id -> cache_write_tokens, and
// checks that the JSON of each entry carries the field.
func cacheWritesOf(t *testing.T, s Store) map[string]int64 {
	t.Helper()
	page, err := s.Logs(context.Background(), usage.LogQuery{Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int64{}
	for _, e := range page.Logs {
		got[e.RequestID] = e.CacheWriteTokens
		b, _ := json.Marshal(e)
		if want := fmt.Sprintf(`"cache_write_tokens":%d,`, e.CacheWriteTokens); !strings.Contains(string(b), want) {
			t.Fatalf("logs JSON %s, want %s", b, want)
		}
	}
	return got
}

func TestCacheWriteTokensRoundTrip(t *testing.T) {
	forEachStore(t, func(t *testing.T, s Store, exec func(string)) {
		ctx := context.Background()
		a := cacheWriting(rec("a", "alice", "anthropic", "claude-sonnet-4", 1210, 50, t0), 1000, 200)
		b := cacheWriting(rec("b", "alice", "anthropic", "claude-sonnet-4", 500, 5, t0.Add(time.Second)), 0, 490)
		if n, err := s.Insert(ctx, []record.Record{a, b}); err != nil || n != 2 {
			t.Fatalf("insert: %d, %v", n, err)
		}
		// A batch holding a stored request_id takes Postgres' other path
		// (a temporary table and ON CONFLICT), which must keep it too.
		c := cacheWriting(rec("c", "alice", "anthropic", "claude-sonnet-4", 300, 1, t0.Add(2*time.Second)), 0, 299)
		plain := rec("plain", "alice", "openai", "gpt-4o", 10, 1, t0.Add(3*time.Second))
		if n, err := s.Insert(ctx, []record.Record{b, c, plain}); err != nil || n != 2 {
			t.Fatalf("insert with a duplicate: %d, %v", n, err)
		}
		want := map[string]int64{"a": 200, "b": 490, "c": 299, "plain": 0}
		if got := cacheWritesOf(t, s); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("cache_write_tokens in the logs: %v, want %v", got, want)
		}
		if got := queryOne(t, s, `SELECT sum(cache_write_tokens) || ' ' || sum(cached_tokens) FROM llm_usage_logs`); got != "989 1000" {
			t.Fatalf("stored cache writes and reads: %s, want 989 1000", got)
		}

		// The daily summary sums them, across inserts and (on Postgres) steps.
		if _, ok := s.(*postgresStore); ok {
			exec(`SELECT refresh_llm_usage_summary()`)
		}
		d := cacheWriting(rec("d", "alice", "anthropic", "claude-sonnet-4", 20, 1, t0.Add(4*time.Second)), 0, 11)
		if _, err := s.Insert(ctx, []record.Record{d}); err != nil {
			t.Fatal(err)
		}
		if _, ok := s.(*postgresStore); ok {
			exec(`SELECT refresh_llm_usage_summary()`)
		}
		row := func(model string) string {
			return queryOne(t, s, `SELECT calls || ' ' || prompt_tokens || ' ' || cached_tokens || ' ' || cache_write_tokens || ' ' || unpriced_calls
				FROM llm_usage_daily_summary WHERE user_id = 'alice' AND model = '`+model+`'`)
		}
		if got := row("claude-sonnet-4"); got != "4 2030 1000 1000 4" {
			t.Fatalf("summary of claude-sonnet-4: %s, want 4 calls, 2030 prompt, 1000 cached, 1000 written, 4 unpriced", got)
		}
		if got := row("gpt-4o"); got != "1 10 0 0 1" {
			t.Fatalf("summary of gpt-4o: %s", got)
		}
	})
}

// TestUpgradeToCacheWrites migrates a database that llmusage wrote before
// it stored cache writes (every migration but the last), with records in
// the logs and the summary: they read 0 after, and new records keep theirs.
func TestUpgradeToCacheWrites(t *testing.T) {
	forEachStoreAt(t, 5, 6, func(t *testing.T, s Store, db *sql.DB, kind string, version int64) {
		ctx := context.Background()
		// As the previous release wrote them: through the store's own
		// insert there (this one names the new column), so by SQL.
		createdAt := "'2026-11-20T09:30:00Z'"
		if kind == "sqlite" {
			createdAt = fmt.Sprint(t0.UnixMicro())
			if _, err := db.ExecContext(ctx, `INSERT INTO llmusage_daily_totals VALUES ('2026-11-20', 'alice', 'anthropic', 'claude-sonnet-4', 1, 0, 110, 100, 10, 40, 0, NULL, 1)`); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := db.ExecContext(ctx, `INSERT INTO llm_usage_logs (request_id, user_id, provider, model, tokens_used, prompt_tokens, completion_tokens, cached_tokens, created_at)
			VALUES ('old', 'alice', 'anthropic', 'claude-sonnet-4', 110, 100, 10, 40, `+createdAt+`)`); err != nil {
			t.Fatal(err)
		}
		if kind == "postgres" {
			// One old row folded into the summary, one left pending.
			if _, err := db.ExecContext(ctx, `SELECT refresh_llm_usage_summary()`); err != nil {
				t.Fatal(err)
			}
			if _, err := db.ExecContext(ctx, `INSERT INTO llm_usage_logs (request_id, user_id, provider, model, tokens_used, prompt_tokens, created_at)
				VALUES ('pending', 'bob', 'anthropic', 'claude-sonnet-4', 5, 5, `+createdAt+`)`); err != nil {
				t.Fatal(err)
			}
		}
		if applied, err := s.Migrate(ctx); err != nil || len(applied) == 0 || applied[0] != version+1 {
			t.Fatalf("migrate: %v, %v; want the cache-write migration first", applied, err)
		}
		n := cacheWriting(rec("new", "alice", "anthropic", "claude-sonnet-4", 100, 10, t0.Add(time.Second)), 40, 60)
		if _, err := s.Insert(ctx, []record.Record{n}); err != nil {
			t.Fatal(err)
		}
		got := cacheWritesOf(t, s)
		if got["old"] != 0 || got["new"] != 60 {
			t.Fatalf("cache_write_tokens after the upgrade: %v, want old 0 and new 60", got)
		}
		if kind == "postgres" {
			if _, err := db.ExecContext(ctx, `SELECT refresh_llm_usage_summary()`); err != nil {
				t.Fatal(err)
			}
			if got := queryOne(t, s, `SELECT calls || ' ' || cache_write_tokens FROM llm_usage_daily_summary WHERE user_id = 'bob'`); got != "1 0" {
				t.Fatalf("bob's summary, pending across the upgrade: %s, want 1 0", got)
			}
		}
		if got := queryOne(t, s, `SELECT calls || ' ' || prompt_tokens || ' ' || cached_tokens || ' ' || cache_write_tokens
			FROM llm_usage_daily_summary WHERE user_id = 'alice'`); got != "2 200 80 60" {
			t.Fatalf("alice's summary after the upgrade: %s, want 2 calls, 200 prompt, 80 cached, 60 written", got)
		}
	})
}

// migrateUpTo applies the Postgres migrations up to version to the
// database at url.
func migrateUpTo(t *testing.T, url string, version int64) {
	t.Helper()
	ctx := context.Background()
	st, err := Open(ctx, Options{DatabaseURL: url})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	db := stdlib.OpenDBFromPool(st.(*postgresStore).pool)
	defer db.Close()
	p, err := newGoose(db, goose.DialectPostgres, "postgres")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.UpTo(ctx, version); err != nil {
		t.Fatal(err)
	}
}

// previousUsage is the usage API's query as the release before teams
// wrote it: a sidecar not upgraded yet runs it while another migrates.
const previousUsage = `SELECT to_char(day, 'YYYY-MM-DD'), model, provider, sum(calls)::bigint
	FROM (
		SELECT day, model, provider, calls FROM llm_usage_daily_summary WHERE day >= $1::date AND user_id = $2
		UNION ALL
		SELECT day, model, provider, calls FROM llm_usage_summary_pending WHERE day >= $1::date AND user_id = $2
		UNION ALL
		SELECT (created_at AT TIME ZONE 'UTC')::date, model, provider, count(*)
		FROM llm_usage_logs WHERE created_at >= $3 AND user_id = $2
		GROUP BY 1, 2, 3
	) parts
	GROUP BY day, model, provider`

// TestCacheWriteMigrationUnderLoad applies the Postgres migrations of
// cache writes (00007) and of teams (00008) while records are inserted
// and the usage API reads: their locks are taken without waiting while
// holding one (inserts and reads take the tables in different orders),
// so they neither deadlock nor fail, and neither does any insert or read
// of the release before or of this one once its column exists.
func TestCacheWriteMigrationUnderLoad(t *testing.T) {
	for _, c := range []struct {
		name   string
		before int64
		// column is the migration's new column of llm_usage_logs, value
		// what this release's insert puts in it.
		column, value string
	}{
		{"cache_write_tokens", 6, "cache_write_tokens", "3"},
		{"team_id", 7, "team_id", "'team-' || (g % 3)"},
	} {
		t.Run(c.name, func(t *testing.T) {
			migrationUnderLoad(t, c.before, c.column, c.value)
		})
	}
}

func migrationUnderLoad(t *testing.T, before int64, column, value string) {
	ctx := context.Background()
	url := pgtest.URL(t)
	migrateUpTo(t, url, before)
	st, err := Open(ctx, Options{DatabaseURL: url})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	s := st.(*postgresStore)
	// Writers and readers on connections of their own.
	load, err := Open(ctx, Options{DatabaseURL: url, MaxConns: 8})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { load.Close() })
	lp := load.(*postgresStore).pool
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for w := range 3 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				// The previous release's insert, without the new column.
				_, err := lp.Exec(ctx, `INSERT INTO llm_usage_logs (request_id, user_id, provider, model, created_at)
					SELECT $1 || g, 'alice', 'anthropic', 'claude-sonnet-4', now() FROM generate_series(1, 20) g`, fmt.Sprintf("w%d-%d-", w, i))
				if err != nil {
					errs <- fmt.Errorf("insert: %w", err)
					return
				}
				// This release's, which fails until the column exists (the
				// spool would retry it).
				_, err = lp.Exec(ctx, `INSERT INTO llm_usage_logs (request_id, user_id, provider, model, created_at, `+column+`)
					SELECT $1 || g, 'alice', 'anthropic', 'claude-sonnet-4', now(), `+value+` FROM generate_series(1, 20) g`, fmt.Sprintf("n%d-%d-", w, i))
				if pgErr := (*pgconn.PgError)(nil); err != nil && !(errors.As(err, &pgErr) && pgErr.Code == "42703") {
					errs <- fmt.Errorf("insert with %s: %w", column, err)
					return
				}
			}
		})
		wg.Go(func() {
			since := time.Now().AddDate(0, 0, -3)
			for {
				select {
				case <-stop:
					return
				default:
				}
				rows, err := lp.Query(ctx, previousUsage, since.Format(time.DateOnly), "alice", since)
				if err == nil {
					for rows.Next() {
					}
					rows.Close()
					err = rows.Err()
				}
				if err != nil {
					errs <- fmt.Errorf("usage: %w", err)
					return
				}
			}
		})
	}
	time.Sleep(200 * time.Millisecond)
	p, err := newGoose(stdlib.OpenDBFromPool(s.pool), goose.DialectPostgres, "postgres")
	if err != nil {
		t.Fatal(err)
	}
	_, migrateErr := p.UpTo(ctx, before+1)
	time.Sleep(200 * time.Millisecond)
	close(stop)
	wg.Wait()
	close(errs)
	if migrateErr != nil {
		t.Fatalf("migrate under load: %s", migrateErr)
	}
	for err := range errs {
		t.Errorf("under the migration: %s", err)
	}
	if _, err := s.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Insert(ctx, []record.Record{cacheWriting(rec("after", "carol", "anthropic", "claude-sonnet-4", 10, 1, t0), 0, 7)}); err != nil {
		t.Fatal(err)
	}
	page, err := st.Logs(ctx, usage.LogQuery{UserID: "carol", Limit: 1})
	if err != nil || len(page.Logs) != 1 || page.Logs[0].CacheWriteTokens != 7 {
		t.Fatalf("the record after: %+v, %v; want cache_write_tokens 7", page.Logs, err)
	}
	// No insert was stored with a value the summary missed.
	if _, err := s.pool.Exec(ctx, `SELECT refresh_llm_usage_summary()`); err != nil {
		t.Fatal(err)
	}
	logs := queryOne(t, st, `SELECT string_agg(n, ' ' ORDER BY n) FROM (SELECT coalesce(team_id, '') || ':' || count(*) || ':' || sum(cache_write_tokens) AS n
		FROM llm_usage_logs WHERE created_at IS NOT NULL GROUP BY coalesce(team_id, '')) x`)
	if summary := queryOne(t, st, `SELECT string_agg(n, ' ' ORDER BY n) FROM (SELECT team_id || ':' || sum(calls) || ':' || sum(cache_write_tokens) AS n
		FROM llm_usage_daily_summary GROUP BY team_id) x`); summary != logs {
		t.Fatalf("summary: calls and cache writes by team %s; the logs: %s", summary, logs)
	}
}
