package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"

	"github.com/llmusage/llmusage/internal/pgtest"
	"github.com/llmusage/llmusage/limiter"
	"github.com/llmusage/llmusage/record"
	"github.com/llmusage/llmusage/rules"
	"github.com/llmusage/llmusage/usage"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// forEachStore runs the conformance case f against a migrated SQLite
// file and a migrated, empty Postgres database.
func forEachStore(t *testing.T, f func(t *testing.T, s Store, exec func(sql string))) {
	t.Run("sqlite", func(t *testing.T) {
		s := openMigrated(t, Options{DataDir: t.TempDir()})
		f(t, s, func(q string) {
			t.Helper()
			if _, err := s.(*sqliteStore).db.Exec(q); err != nil {
				t.Fatalf("%s: %s", q, err)
			}
		})
	})
	t.Run("postgres", func(t *testing.T) {
		s := openMigrated(t, Options{DatabaseURL: pgtest.URL(t)})
		f(t, s, func(q string) {
			t.Helper()
			if _, err := s.(*postgresStore).pool.Exec(context.Background(), q); err != nil {
				t.Fatalf("%s: %s", q, err)
			}
		})
	})
}

// forEachStoreAt runs f against a SQLite file and a Postgres database
// migrated up to the given versions only (a database of an earlier
// release), with a database/sql handle on each for SQL the store's own
// code would no longer write.
func forEachStoreAt(t *testing.T, sqliteVersion, postgresVersion int64, f func(t *testing.T, s Store, db *sql.DB, kind string, version int64)) {
	for _, c := range []struct {
		kind    string
		version int64
		open    func(t *testing.T) (Store, *sql.DB, goose.Dialect)
	}{
		{"sqlite", sqliteVersion, func(t *testing.T) (Store, *sql.DB, goose.Dialect) {
			st, err := Open(context.Background(), Options{DataDir: t.TempDir()})
			if err != nil {
				t.Fatal(err)
			}
			return st, st.(*sqliteStore).db, goose.DialectSQLite3
		}},
		{"postgres", postgresVersion, func(t *testing.T) (Store, *sql.DB, goose.Dialect) {
			st, err := Open(context.Background(), Options{DatabaseURL: pgtest.URL(t)})
			if err != nil {
				t.Fatal(err)
			}
			db := stdlib.OpenDBFromPool(st.(*postgresStore).pool)
			t.Cleanup(func() { db.Close() })
			return st, db, goose.DialectPostgres
		}},
	} {
		t.Run(c.kind, func(t *testing.T) {
			s, db, dialect := c.open(t)
			t.Cleanup(func() { s.Close() })
			p, err := newGoose(db, dialect, c.kind)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := p.UpTo(context.Background(), c.version); err != nil {
				t.Fatal(err)
			}
			f(t, s, db, c.kind, c.version)
		})
	}
}

func openMigrated(t *testing.T, opts Options) Store {
	t.Helper()
	ctx := context.Background()
	s, err := Open(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if _, err := s.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	return s
}

var t0 = time.Date(2026, 11, 20, 9, 30, 0, 0, time.UTC)

func rec(id, user, provider, model string, prompt, completion int64, at time.Time) record.Record {
	return record.Record{RequestID: id, UserID: user, Provider: provider, Model: model, PromptTokens: prompt,
		CompletionTokens: completion, TotalTokens: prompt + completion, Status: record.StatusSuccess, Timestamp: at}
}

func TestMigrateIdempotent(t *testing.T) {
	forEachStore(t, func(t *testing.T, s Store, _ func(string)) {
		ctx := context.Background()
		applied, err := s.Migrate(ctx)
		if err != nil || len(applied) != 0 {
			t.Fatalf("second migrate applied %v, %v; want nothing", applied, err)
		}
		st, err := s.MigrationStatus(ctx)
		if err != nil || len(st) == 0 {
			t.Fatalf("status %v, %v", st, err)
		}
		for _, m := range st {
			if !m.Applied {
				t.Fatalf("migration %d %s not applied", m.Version, m.Name)
			}
		}
	})
}

func TestInsertExactlyOnce(t *testing.T) {
	forEachStore(t, func(t *testing.T, s Store, _ func(string)) {
		ctx := context.Background()
		a := rec("a", "alice", "openai", "gpt-4", 10, 5, t0)
		a.Metadata = json.RawMessage(`{"provider":"openai","route":"/chat"}`)
		a.Latency, a.HasLatency, a.CachedTokens, a.ReasoningTokens = 1500*time.Millisecond, true, 4, 2
		b := rec("b", "bob", "anthropic", "claude-3-opus", 7, 3, t0.Add(time.Second))
		b.Status, b.ErrorType = record.StatusError, "overloaded"
		n, err := s.Insert(ctx, []record.Record{a, b, a})
		if err != nil || n != 2 {
			t.Fatalf("insert: %d, %v; want 2 new rows (a twice in one batch)", n, err)
		}
		n, err = s.Insert(ctx, []record.Record{b, rec("c", "alice", "groq", "llama-3.1-70b-versatile", 1, 1, t0.Add(2*time.Second))})
		if err != nil || n != 1 {
			t.Fatalf("redelivery: %d, %v; want 1 new row", n, err)
		}
		page, err := s.Logs(ctx, usage.LogQuery{Limit: 10})
		if err != nil {
			t.Fatal(err)
		}
		if len(page.Logs) != 3 || page.NextCursor != "" {
			t.Fatalf("logs %+v, want 3 rows and no next page", page)
		}
		got := page.Logs[2]
		if got.RequestID != "a" || got.UserID != "alice" || got.Provider != "openai" || got.Model != "gpt-4" ||
			got.TokensUsed != 15 || got.PromptTokens != 10 || got.CompletionTokens != 5 || got.CachedTokens != 4 || got.ReasoningTokens != 2 ||
			got.LatencyMs == nil || *got.LatencyMs != 1500 || got.Status != "success" || !got.CreatedAt.Equal(t0) {
			t.Fatalf("stored record %+v differs from what was inserted", got)
		}
		var meta map[string]string
		if err := json.Unmarshal(got.Metadata, &meta); err != nil || meta["route"] != "/chat" {
			t.Fatalf("metadata %s not kept", got.Metadata)
		}
		if e := page.Logs[1]; e.Status != "error" || e.ErrorType != "overloaded" || e.LatencyMs != nil {
			t.Fatalf("error record %+v", e)
		}
	})
}

func TestLogsPagination(t *testing.T) {
	forEachStore(t, func(t *testing.T, s Store, _ func(string)) {
		ctx := context.Background()
		var recs []record.Record
		for i := 0; i < 25; i++ {
			provider, model := "openai", "gpt-4"
			if i%5 == 0 {
				provider, model = "anthropic", "claude-3-opus"
			}
			// Pairs share a timestamp, so the id must break ties.
			recs = append(recs, rec(fmt.Sprint("r", i), []string{"alice", "bob"}[i%2], provider, model, int64(i), 1, t0.Add(time.Duration(i/2)*time.Second)))
		}
		if _, err := s.Insert(ctx, recs); err != nil {
			t.Fatal(err)
		}
		walk := func(q usage.LogQuery) []string {
			t.Helper()
			var ids []string
			for pages := 0; ; pages++ {
				page, err := s.Logs(ctx, q)
				if err != nil {
					t.Fatal(err)
				}
				if len(page.Logs) > q.Limit {
					t.Fatalf("page of %d rows, limit %d", len(page.Logs), q.Limit)
				}
				for i, e := range page.Logs {
					ids = append(ids, e.RequestID)
					if i > 0 && e.CreatedAt.After(page.Logs[i-1].CreatedAt) {
						t.Fatalf("not newest first: %v", page.Logs)
					}
				}
				if page.NextCursor == "" {
					return ids
				}
				q.Before = page.NextCursor
			}
		}
		all := walk(usage.LogQuery{Limit: 4})
		if len(all) != 25 || all[0] != "r24" {
			t.Fatalf("walked %v, want 25 ids starting with r24", all)
		}
		seen := map[string]bool{}
		for _, id := range all {
			if seen[id] {
				t.Fatalf("id %s on two pages: %v", id, all)
			}
			seen[id] = true
		}
		if got := walk(usage.LogQuery{Limit: 2, UserID: "bob", Provider: "openai"}); len(got) != 10 {
			// bob has the 12 odd records; r5 and r15 are anthropic.
			t.Fatalf("bob's openai records %v, want 10", got)
		}
		if got := walk(usage.LogQuery{Limit: 100, Model: "claude-3-opus"}); strings.Join(got, ",") != "r20,r15,r10,r5,r0" {
			t.Fatalf("claude records %v", got)
		}
		if _, err := s.Logs(ctx, usage.LogQuery{Limit: 5, Before: "not-a-cursor"}); err != usage.ErrBadCursor {
			t.Fatalf("bad cursor: %v, want usage.ErrBadCursor", err)
		}
	})
}

func TestUsage(t *testing.T) {
	forEachStore(t, func(t *testing.T, s Store, _ func(string)) {
		ctx := context.Background()
		failed := rec("e1", "alice", "openai", "gpt-4", 1, 0, t0.Add(24*time.Hour))
		failed.Status = record.StatusError
		_, err := s.Insert(ctx, []record.Record{
			rec("old", "alice", "openai", "gpt-4", 1000, 1000, t0.Add(-48*time.Hour)), // before Since
			rec("a1", "alice", "openai", "gpt-4", 100, 50, t0),
			rec("a2", "alice", "groq", "llama-3.1-70b-versatile", 10, 5, t0.Add(time.Hour)),
			rec("b1", "bob", "anthropic", "claude-3-opus", 7, 3, t0),
			failed,
		})
		if err != nil {
			t.Fatal(err)
		}
		u, err := s.Usage(ctx, usage.Query{UserID: "alice", Since: t0.Add(-time.Hour)})
		if err != nil {
			t.Fatal(err)
		}
		want := usage.Totals{Calls: 3, Errors: 1, Tokens: 166, PromptTokens: 111, CompletionTokens: 55, UnpricedCalls: 3}
		if u.Totals != want {
			t.Fatalf("totals %+v, want %+v", u.Totals, want)
		}
		if m := u.ByModel["gpt-4"]; m.Calls != 2 || m.Tokens != 151 || m.Provider != "openai" {
			t.Fatalf("gpt-4 %+v", m)
		}
		if p := u.ByProvider["groq"]; p.Calls != 1 || p.Tokens != 15 {
			t.Fatalf("groq %+v", p)
		}
		if len(u.ByDay) != 2 || u.ByDay[0].Day != "2026-11-20" || u.ByDay[0].Calls != 2 || u.ByDay[1].Day != "2026-11-21" || u.ByDay[1].Errors != 1 {
			t.Fatalf("by day %+v", u.ByDay)
		}
		all, err := s.Usage(ctx, usage.Query{Since: t0.Add(-time.Hour)})
		if err != nil || all.Calls != 4 || len(all.ByProvider) != 3 {
			t.Fatalf("all users: %+v, %v", all, err)
		}
		none, err := s.Usage(ctx, usage.Query{UserID: "nobody", Since: t0})
		if err != nil || none.Calls != 0 || none.ByModel == nil || none.ByDay == nil {
			t.Fatalf("unknown user: %+v, %v", none, err)
		}
	})
}

func TestRuleRows(t *testing.T) {
	forEachStore(t, func(t *testing.T, s Store, exec func(string)) {
		ctx := context.Background()
		inForce := func() []string {
			t.Helper()
			rows, err := s.RuleRows(ctx)
			if err != nil {
				t.Fatal(err)
			}
			set := rules.Merge(nil, rows)
			var out []string
			for _, r := range set.InForce {
				out = append(out, fmt.Sprintf("%s/%s/%s %s %s=%d", r.UserID, r.Provider, r.Model, r.Window, r.Unit, r.Limit))
			}
			for _, e := range set.Skipped {
				out = append(out, "skipped: "+e.Error())
			}
			sort.Strings(out)
			return out
		}
		check := func(want ...string) {
			t.Helper()
			sort.Strings(want)
			if got := inForce(); strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Fatalf("rules:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
		}
		seeded := func(want string) {
			t.Helper()
			rows, err := s.RuleRows(ctx)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, r := range rows {
				if r.Seeded {
					got = append(got, r.LimitType)
				}
			}
			if strings.Join(got, " ") != want {
				t.Fatalf("seeded rows: %v, want %s", got, want)
			}
		}
		// The seed's defaults, marked as seeded until someone changes them.
		check("// minute requests=30", "// day requests=14400")
		seeded("minute day")
		exec(`UPDATE llm_rate_limit_configs SET description = 'still the default' WHERE limit_type = 'minute'`)
		seeded("minute day")
		// Writing the same values again (an ORM saving the row) changes nothing.
		exec(`UPDATE llm_rate_limit_configs SET limit_value = 14400, unit = 'requests' WHERE limit_type = 'day'`)
		seeded("minute day")
		exec(`UPDATE llm_rate_limit_configs SET limit_value = 100 WHERE limit_type = 'minute'`)
		seeded("day")
		exec(`INSERT INTO llm_rate_limits (user_id, limit_type, limit_value) VALUES ('user-id', 'minute', 200)`)
		exec(`INSERT INTO llm_rate_limits (user_id, limit_type, limit_value, provider) VALUES ('user-id', 'minute', 30, 'groq'), ('user-id', 'minute', 60, 'openai')`)
		// A later row for the same scope wins; a bad row is skipped, not fatal.
		exec(`INSERT INTO llm_rate_limits (user_id, limit_type, limit_value) VALUES ('user-id', 'minute', 250)`)
		exec(`INSERT INTO llm_rate_limits (user_id, limit_type, limit_value) VALUES ('user-id', 'fortnight', 1)`)
		exec(`INSERT INTO llm_rate_limit_configs (limit_type, limit_value, unit, provider) VALUES ('minute', 6000, 'tokens', 'groq')`)
		// Providers are spelled as intake spells them.
		exec(`INSERT INTO llm_rate_limit_configs (limit_type, limit_value, provider) VALUES ('minute', 2, ' Azure ')`)
		check("// minute requests=100", "// day requests=14400", "/groq/ minute tokens=6000", "/azure.ai.openai/ minute requests=2",
			"user-id// minute requests=250", "user-id/groq/ minute requests=30", "user-id/openai/ minute requests=60",
			`skipped: cannot use llm_rate_limits id 5: unknown limit_type "fortnight"; valid: second, minute, hour, day, week, month`)
		seeded("day")
		// Among rows of one scope the highest id wins, also past id 9
		// (a text sort would put 10 before 9).
		for v := 1; v <= 12; v++ {
			exec(fmt.Sprintf(`INSERT INTO llm_rate_limit_configs (limit_type, limit_value) VALUES ('hour', %d)`, 100*v))
		}
		rows, err := s.RuleRows(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rules.Merge(nil, rows).InForce {
			if r.Window == limiter.Hour && r.Limit != 1200 {
				t.Fatalf("the hour rule in force is %d (%s), want the newest row's 1200", r.Limit, r.Source)
			}
		}
	})
}

func TestSeedSQLVerbatimOnPostgres(t *testing.T) {
	s := openMigrated(t, Options{DatabaseURL: pgtest.URL(t)}).(*postgresStore)
	ctx := context.Background()
	for _, q := range []string{
		// From the seed's "Configuration" section, as written there.
		"UPDATE llm_rate_limit_configs \nSET limit_value = 100 \nWHERE limit_type = 'minute';",
		"INSERT INTO llm_rate_limits (user_id, limit_type, limit_value, reset_at)\nVALUES ('user-id', 'minute', 200, NOW() + INTERVAL '1 minute');",
		"INSERT INTO llm_rate_limits (user_id, limit_type, limit_value, provider, reset_at)\nVALUES \n  ('user-id', 'minute', 30, 'groq', NOW() + INTERVAL '1 minute'),\n  ('user-id', 'minute', 60, 'openai', NOW() + INTERVAL '1 minute');",
		"SELECT refresh_llm_usage_summary();",
	} {
		if _, err := s.pool.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %s", q, err)
		}
	}
	rows, err := s.RuleRows(ctx)
	if set := rules.Merge(nil, rows); err != nil || len(set.InForce) != 5 || len(set.Skipped) != 0 {
		t.Fatalf("rules after the seed's SQL: %+v, %v", set, err)
	}
}

func TestWatchRules(t *testing.T) {
	forEachStore(t, func(t *testing.T, s Store, exec func(string)) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		var changes atomic.Int64
		done := make(chan struct{})
		go func() {
			defer close(done)
			_ = s.WatchRules(ctx, func() { changes.Add(1) })
		}()
		// Give the watcher time to LISTEN or take its first snapshot.
		deadline := time.Now().Add(10 * time.Second)
		for {
			exec(`INSERT INTO llm_rate_limits (user_id, limit_type, limit_value) VALUES ('watched', 'minute', 5)`)
			time.Sleep(1500 * time.Millisecond)
			if changes.Load() > 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("no change reported within 10 s of an INSERT INTO llm_rate_limits")
			}
		}
		cancel()
		<-done
	})
}

func TestSummaryView(t *testing.T) {
	forEachStore(t, func(t *testing.T, s Store, exec func(string)) {
		ctx := context.Background()
		if _, err := s.Insert(ctx, []record.Record{rec("a", "alice", "openai", "gpt-4", 10, 5, t0), rec("b", "alice", "openai", "gpt-4", 1, 1, t0)}); err != nil {
			t.Fatal(err)
		}
		var calls, tokens int64
		var q string
		switch st := s.(type) {
		case *postgresStore:
			exec(`SELECT refresh_llm_usage_summary()`)
			q = `SELECT calls, tokens_used FROM llm_usage_daily_summary WHERE day = '2026-11-20' AND user_id = 'alice' AND provider = 'openai' AND model = 'gpt-4'`
			if err := st.pool.QueryRow(ctx, q).Scan(&calls, &tokens); err != nil {
				t.Fatal(err)
			}
		case *sqliteStore:
			q = `SELECT calls, tokens_used FROM llm_usage_daily_summary WHERE day = '2026-11-20' AND user_id = 'alice' AND provider = 'openai' AND model = 'gpt-4'`
			if err := st.db.QueryRow(q).Scan(&calls, &tokens); err != nil {
				t.Fatal(err)
			}
		}
		if calls != 2 || tokens != 17 {
			t.Fatalf("summary: %d calls, %d tokens; want 2 and 17", calls, tokens)
		}
	})
}

func TestSQLiteFileLocation(t *testing.T) {
	f := func(opts Options, wantKind, wantTarget string) {
		t.Helper()
		kind, target := Kind(opts)
		if kind != wantKind || target != wantTarget {
			t.Fatalf("Kind(%+v) = %s %s, want %s %s", opts, kind, target, wantKind, wantTarget)
		}
	}
	f(Options{DataDir: "./llmusage-data"}, "sqlite", "llmusage-data/llmusage.db")
	f(Options{DatabaseURL: "sqlite:/var/lib/x.db"}, "sqlite", "/var/lib/x.db")
	f(Options{DatabaseURL: "postgres://u:p@h/db"}, "postgres", "postgres://u:p@h/db")
	f(Options{DatabaseURL: "postgresql://h/db"}, "postgres", "postgresql://h/db")
	f(Options{DatabaseURL: "mysql://u:pw@h/db"}, "unknown", "mysql://u:pw@h/db")
	if _, err := Open(context.Background(), Options{DatabaseURL: "mysql://u:pw@h/db"}); err == nil || strings.Contains(err.Error(), "pw@") {
		t.Fatalf("an unknown scheme: %v", err)
	}

	dir := t.TempDir()
	s := openMigrated(t, Options{DataDir: filepath.Join(dir, "nested", "data")})
	if _, err := s.Insert(context.Background(), []record.Record{rec("x", "u", "p", "m", 1, 1, t0)}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "nested", "data", "llmusage.db")); err != nil {
		t.Fatalf("default file not created: %s", err)
	}
}

func TestRedact(t *testing.T) {
	f := func(in, want string) {
		t.Helper()
		if got := Redact(in); got != want {
			t.Fatalf("Redact(%q) = %q, want %q", in, got, want)
		}
	}
	f("postgres://llmusage:s3cret@db:5432/llm?sslmode=require", "postgres://llmusage:xxxxx@db:5432/llm?sslmode=require")
	f("postgres://db/llm?user=u&password=s3cret", "postgres://db/llm?password=xxxxx&user=u")
	f("postgres://db/llm", "postgres://db/llm")
	_, err := Open(context.Background(), Options{DatabaseURL: "postgres://llmusage:s3cret@127.0.0.1:1/llm?connect_timeout=1"})
	if err == nil {
		err = fmt.Errorf("(connected)")
	}
	if strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("error leaks the password: %s", err)
	}
}

var _ = pgx.Identifier{}
var _ = limiter.Minute
