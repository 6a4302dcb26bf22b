package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/llmusage/llmusage/internal/pgtest"
	"github.com/llmusage/llmusage/record"
	"github.com/llmusage/llmusage/usage"
	"github.com/llmusage/llmusage/usd"
)

// priced returns r costing cost dollars (decimal text).
func priced(t *testing.T, r record.Record, cost string) record.Record {
	t.Helper()
	a, err := usd.Parse(cost)
	if err != nil {
		t.Fatal(err)
	}
	r.Cost, r.HasCost = a, true
	return r
}

// queryOne returns the first column of the first row of q, as text.
func queryOne(t *testing.T, s Store, q string) string {
	t.Helper()
	var v sql.NullString
	var err error
	switch st := s.(type) {
	case *postgresStore:
		err = st.pool.QueryRow(context.Background(), q).Scan(&v)
	case *sqliteStore:
		err = st.db.QueryRow(q).Scan(&v)
	}
	if err != nil {
		t.Fatalf("%s: %s", q, err)
	}
	if !v.Valid {
		return "NULL"
	}
	return v.String
}

// costColumn is how each store names a record's cost.
func costColumn(s Store) string {
	if _, ok := s.(*postgresStore); ok {
		return "cost_usd::text"
	}
	return "cost_nano_usd"
}

func TestCostRoundTrip(t *testing.T) {
	forEachStore(t, func(t *testing.T, s Store, _ func(string)) {
		ctx := context.Background()
		tiny := priced(t, rec("tiny", "alice", "openai", "gpt-4o", 1, 1, t0), "0.000000001")
		big := priced(t, rec("big", "alice", "openai", "gpt-4o", 1, 1, t0.Add(time.Second)), "123.456789012")
		free := priced(t, rec("free", "alice", "groq", "llama-3.1-8b-instant", 1, 1, t0.Add(2*time.Second)), "0")
		unpriced := rec("unpriced", "alice", "groq", "llama-3.1-8b-instant", 1, 1, t0.Add(3*time.Second))
		if n, err := s.Insert(ctx, []record.Record{tiny, big}); err != nil || n != 2 {
			t.Fatalf("insert: %d, %v", n, err)
		}
		// A batch holding a stored request_id takes Postgres' other path
		// (a temporary table and ON CONFLICT), which must keep costs too.
		if n, err := s.Insert(ctx, []record.Record{big, free, unpriced}); err != nil || n != 2 {
			t.Fatalf("insert with a duplicate: %d, %v", n, err)
		}

		want := map[string]string{"tiny": "0.000000001", "big": "123.456789012", "free": "0", "unpriced": "NULL"}
		wantRaw := map[string]string{"tiny": "1", "big": "123456789012", "free": "0", "unpriced": "NULL"}
		if _, ok := s.(*postgresStore); ok {
			wantRaw = map[string]string{"tiny": "0.000000001", "big": "123.456789012", "free": "0.000000000", "unpriced": "NULL"}
		}
		for id, w := range wantRaw {
			if got := queryOne(t, s, `SELECT `+costColumn(s)+` FROM llm_usage_logs WHERE request_id = '`+id+`'`); got != w {
				t.Fatalf("stored cost of %s: %s, want %s", id, got, w)
			}
		}
		page, err := s.Logs(ctx, usage.LogQuery{Limit: 10})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range page.Logs {
			got := "NULL"
			if e.CostUSD != nil {
				got = e.CostUSD.String()
			}
			if got != want[e.RequestID] {
				t.Fatalf("logs: cost of %s %s, want %s", e.RequestID, got, want[e.RequestID])
			}
			b, _ := json.Marshal(e)
			wantJSON := `"cost_usd":` + strings.Replace(want[e.RequestID], "NULL", "null", 1) + `,`
			if !strings.Contains(string(b), wantJSON) {
				t.Fatalf("logs JSON %s, want %s", b, wantJSON)
			}
		}

		u, err := s.Usage(ctx, usage.Query{UserID: "alice", Since: t0})
		if err != nil {
			t.Fatal(err)
		}
		if u.CostUSD.String() != "123.456789013" || u.UnpricedCalls != 1 || u.Calls != 4 {
			t.Fatalf("totals: cost %s, %d unpriced of %d; want 123.456789013, 1 of 4", u.CostUSD, u.UnpricedCalls, u.Calls)
		}
		if m := u.ByModel["gpt-4o"]; m.CostUSD.String() != "123.456789013" || m.UnpricedCalls != 0 {
			t.Fatalf("by model: %+v", m)
		}
		if p := u.ByProvider["groq"]; p.CostUSD != 0 || p.UnpricedCalls != 1 || p.Calls != 2 {
			t.Fatalf("by provider: %+v", p)
		}
		if len(u.ByDay) != 1 || u.ByDay[0].CostUSD.String() != "123.456789013" || u.ByDay[0].UnpricedCalls != 1 {
			t.Fatalf("by day: %+v", u.ByDay)
		}
		b, _ := json.Marshal(u)
		if !strings.Contains(string(b), `"cost_usd":123.456789013,"unpriced_calls":1`) {
			t.Fatalf("breakdown JSON %s", b)
		}
	})
}

func TestSummaryViewCost(t *testing.T) {
	forEachStore(t, func(t *testing.T, s Store, exec func(string)) {
		ctx := context.Background()
		_, err := s.Insert(ctx, []record.Record{
			priced(t, rec("a", "alice", "openai", "gpt-4", 10, 5, t0), "0.000000001"),
			priced(t, rec("b", "alice", "openai", "gpt-4", 1, 1, t0), "123.456789012"),
			rec("c", "alice", "openai", "gpt-4", 1, 1, t0),
			rec("d", "alice", "groq", "llama-3.1-8b-instant", 1, 1, t0),
		})
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := s.(*postgresStore); ok {
			exec(`SELECT refresh_llm_usage_summary()`)
		}
		// Every column the summary had before costs, and the new ones.
		row := func(model string) string {
			return queryOne(t, s, `SELECT day || ' ' || calls || ' ' || errors || ' ' || tokens_used || ' ' || prompt_tokens || ' ' || completion_tokens
				|| ' ' || cached_tokens || ' ' || reasoning_tokens || ' ' || coalesce(cost_usd || '', 'NULL') || ' ' || unpriced_calls
				FROM llm_usage_daily_summary WHERE user_id = 'alice' AND model = '`+model+`'`)
		}
		if got := row("gpt-4"); got != "2026-11-20 3 0 19 12 7 0 0 123.456789013 1" {
			t.Fatalf("summary of gpt-4: %s", got)
		}
		if got := row("llama-3.1-8b-instant"); got != "2026-11-20 1 0 2 1 1 0 0 NULL 1" {
			t.Fatalf("summary of an unpriced model: %s", got)
		}
	})
}

func TestPriceRows(t *testing.T) {
	forEachStore(t, func(t *testing.T, s Store, exec func(string)) {
		ctx := context.Background()
		rows, err := s.PriceRows(ctx)
		if err != nil || rows == nil || len(rows) != 0 {
			t.Fatalf("fresh table: %v, %v; want no rows", rows, err)
		}
		exec(`INSERT INTO llm_model_prices (provider, model, input_usd_per_mtok, output_usd_per_mtok, cached_input_usd_per_mtok, cache_write_usd_per_mtok, effective_from, description)
			VALUES ('openai', 'gpt-4o*', '2.50', '10', '1.25', NULL, '2026-01-01T01:00:00+01:00', 'list price')`)
		exec(`INSERT INTO llm_model_prices (model, input_usd_per_mtok, output_usd_per_mtok, cache_write_usd_per_mtok)
			VALUES ('claude-*', '0.000000001', '123.456789012345', '3.75')`)
		rows, err = s.PriceRows(ctx)
		if err != nil {
			t.Fatal(err)
		}
		str := func(p *string) string {
			if p == nil {
				return "nil"
			}
			return *p
		}
		var got []string
		for _, r := range rows {
			eff := "nil"
			if r.EffectiveFrom != nil {
				eff = r.EffectiveFrom.Format(time.RFC3339Nano)
			}
			got = append(got, fmt.Sprintf("%s %q %s in=%s out=%s cached=%s write=%s from=%s", r.ID, r.Provider, r.Model, r.Input, r.Output, str(r.CachedInput), str(r.CacheWrite), eff))
		}
		want := []string{
			`1 "openai" gpt-4o* in=2.5 out=10 cached=1.25 write=nil from=2026-01-01T00:00:00Z`,
			`2 "" claude-* in=0.000000001 out=123.456789012345 cached=nil write=3.75 from=nil`,
		}
		if strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Fatalf("price rows:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		for _, bad := range []string{
			`INSERT INTO llm_model_prices (model, input_usd_per_mtok, output_usd_per_mtok) VALUES ('m', '-1', '1')`,
			`INSERT INTO llm_model_prices (model, input_usd_per_mtok, output_usd_per_mtok, cached_input_usd_per_mtok) VALUES ('m', '1', '1', '-0.5')`,
			`INSERT INTO llm_model_prices (model, input_usd_per_mtok, output_usd_per_mtok) VALUES ('m', '1', NULL)`,
			`INSERT INTO llm_model_prices (input_usd_per_mtok, output_usd_per_mtok) VALUES ('1', '1')`,
		} {
			if err := execErr(s, bad); err == nil {
				t.Fatalf("%s: accepted", bad)
			}
		}
	})
}

// execErr runs q and returns its error.
func execErr(s Store, q string) error {
	switch st := s.(type) {
	case *postgresStore:
		_, err := st.pool.Exec(context.Background(), q)
		return err
	case *sqliteStore:
		_, err := st.db.Exec(q)
		return err
	}
	return nil
}

func TestRuleRowsLimitUSD(t *testing.T) {
	forEachStore(t, func(t *testing.T, s Store, exec func(string)) {
		ctx := context.Background()
		exec(`INSERT INTO llm_rate_limit_configs (limit_type, limit_value, unit, limit_usd) VALUES ('month', 0, 'usd', '12.50')`)
		exec(`INSERT INTO llm_rate_limits (user_id, limit_type, limit_value, unit, model, limit_usd) VALUES ('alice', 'week', 0, 'usd', 'gpt-4*', '0.000000001')`)
		exec(`INSERT INTO llm_rate_limits (user_id, limit_type, limit_value, unit) VALUES ('alice', 'month', 20, 'usd')`)
		rows, err := s.RuleRows(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, r := range rows {
			amount := "nil"
			if r.LimitUSD != nil {
				amount = *r.LimitUSD
			}
			got = append(got, fmt.Sprintf("%s %s %s %s %d %s", r.Table, r.UserID, r.LimitType, r.Unit, r.LimitValue, amount))
		}
		want := []string{
			"llm_rate_limit_configs  minute requests 30 nil",
			"llm_rate_limit_configs  day requests 14400 nil",
			"llm_rate_limit_configs  month usd 0 12.5",
			"llm_rate_limits alice week usd 0 0.000000001",
			"llm_rate_limits alice month usd 20 nil",
		}
		if strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Fatalf("rule rows:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		if err := execErr(s, `INSERT INTO llm_rate_limits (user_id, limit_type, limit_value, unit, limit_usd) VALUES ('bob', 'day', 0, 'usd', '-1')`); err == nil {
			t.Fatal("a negative limit_usd accepted")
		}
		// Setting a budget amount on a seeded default is changing it.
		exec(`UPDATE llm_rate_limit_configs SET limit_usd = '5' WHERE limit_type = 'day'`)
		rows, err = s.RuleRows(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rows {
			if r.Seeded != (r.LimitType == "minute" && r.Table == "llm_rate_limit_configs") {
				t.Fatalf("after setting limit_usd of the day default: %+v", r)
			}
		}
	})
}

func TestWatchPrices(t *testing.T) {
	forEachStore(t, func(t *testing.T, s Store, exec func(string)) {
		// Rows with pointer fields (limit_usd, optional prices) must not
		// look changed at every poll.
		exec(`INSERT INTO llm_rate_limits (user_id, limit_type, limit_value, unit, limit_usd) VALUES ('alice', 'month', 0, 'usd', '12.5')`)
		exec(`INSERT INTO llm_model_prices (model, input_usd_per_mtok, output_usd_per_mtok, cached_input_usd_per_mtok, effective_from) VALUES ('m', '1', '2', '0.5', '2026-01-01')`)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		var changes atomic.Int64
		done := make(chan struct{})
		go func() {
			defer close(done)
			_ = s.WatchRules(ctx, func() { changes.Add(1) })
		}()
		time.Sleep(2500 * time.Millisecond)
		if n := changes.Load(); n != 0 {
			t.Fatalf("%d changes reported while nothing changed", n)
		}
		for i, q := range []string{
			`INSERT INTO llm_model_prices (model, input_usd_per_mtok, output_usd_per_mtok) VALUES ('gpt-4o', '2.5', '10')`,
			`UPDATE llm_model_prices SET output_usd_per_mtok = '12' WHERE model = 'gpt-4o'`,
			`DELETE FROM llm_model_prices WHERE model = 'gpt-4o'`,
		} {
			before := changes.Load()
			exec(q)
			deadline := time.Now().Add(5 * time.Second)
			for changes.Load() == before {
				if time.Now().After(deadline) {
					t.Fatalf("change %d (%s): not reported within 5 s", i, q)
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
		cancel()
		<-done
	})
}

func TestSpent(t *testing.T) {
	forEachStore(t, func(t *testing.T, s Store, _ func(string)) {
		ctx := context.Background()
		at := func(d time.Duration) time.Time { return t0.Add(d) }
		_, err := s.Insert(ctx, []record.Record{
			priced(t, rec("s1", "alice", "openai", "gpt-4o", 1, 1, at(0)), "1"),
			priced(t, rec("s2", "alice", "openai", "gpt-4o_mini%", 1, 1, at(time.Minute)), "0.000000001"),
			// What gpt-4o_mini% would match were _ and % not escaped.
			priced(t, rec("s3", "alice", "openai", "gpt-4oXminiYZ", 1, 1, at(2*time.Minute)), "10"),
			priced(t, rec("s4", "alice", "openai", "GPT-4O", 1, 1, at(3*time.Minute)), "100"),
			priced(t, rec("s5", "alice", "anthropic", "claude-3-opus", 1, 1, at(4*time.Minute)), "1000"),
			rec("s6", "alice", "openai", "gpt-4o", 1000, 1000, at(5*time.Minute)), // unpriced
			priced(t, rec("s7", "alice", "other", `x\y`, 1, 1, at(6*time.Minute)), "0.25"),
			priced(t, rec("s8", "alice", "other", "É-model", 1, 1, at(7*time.Minute)), "0.125"),
			priced(t, rec("end", "alice", "openai", "gpt-4o", 1, 1, at(time.Hour)), "5000"),
			priced(t, rec("before", "alice", "openai", "gpt-4o", 1, 1, at(-time.Microsecond)), "20000"),
			priced(t, rec("bob", "bob", "openai", "gpt-4o", 1, 1, at(0)), "50000"),
		})
		if err != nil {
			t.Fatal(err)
		}
		hour := usage.SpendQuery{UserID: "alice", From: t0, To: at(time.Hour)}
		for _, c := range []struct {
			name string
			edit func(q *usage.SpendQuery)
			want string
		}{
			{"every priced record of the window", func(q *usage.SpendQuery) {}, "1111.375000001"},
			{"provider", func(q *usage.SpendQuery) { q.Provider = "openai" }, "111.000000001"},
			{"provider and model", func(q *usage.SpendQuery) { q.Provider, q.Model = "anthropic", "claude-*" }, "1000"},
			{"another provider's model", func(q *usage.SpendQuery) { q.Provider, q.Model = "openai", "claude-*" }, "0"},
			{"model, ASCII case ignored", func(q *usage.SpendQuery) { q.Model = "gpt-4o" }, "101"},
			{"model glob in capitals", func(q *usage.SpendQuery) { q.Model = "GPT-4o" }, "101"},
			{"_ and % are literal", func(q *usage.SpendQuery) { q.Model = "gpt-4o_mini%" }, "0.000000001"},
			{"? and *", func(q *usage.SpendQuery) { q.Model = "gpt-4o?mini*" }, "10.000000001"},
			{"prefix", func(q *usage.SpendQuery) { q.Model = "gpt-4o*" }, "111.000000001"},
			{"star", func(q *usage.SpendQuery) { q.Model = "*" }, "1111.375000001"},
			{"backslash is literal", func(q *usage.SpendQuery) { q.Model = `x\y` }, "0.25"},
			{"backslash then ?", func(q *usage.SpendQuery) { q.Model = `x\?` }, "0.25"},
			{"non-ASCII case is not folded", func(q *usage.SpendQuery) { q.Model = "é-model" }, "0"},
			{"non-ASCII literal", func(q *usage.SpendQuery) { q.Model = "É-*" }, "0.125"},
			{"end is exclusive, to the nanosecond", func(q *usage.SpendQuery) { q.To = q.To.Add(time.Nanosecond) }, "6111.375000001"},
			{"start is inclusive", func(q *usage.SpendQuery) { q.From = q.From.Add(-time.Microsecond) }, "21111.375000001"},
			{"start after a record, to the nanosecond", func(q *usage.SpendQuery) { q.From = q.From.Add(-500 * time.Nanosecond) }, "1111.375000001"},
			{"empty window", func(q *usage.SpendQuery) { q.To = q.From }, "0"},
			{"another user", func(q *usage.SpendQuery) { q.UserID = "bob" }, "50000"},
			{"unknown user", func(q *usage.SpendQuery) { q.UserID = "nobody" }, "0"},
			{"unpriced only", func(q *usage.SpendQuery) { q.From, q.To = at(5*time.Minute), at(6*time.Minute) }, "0"},
		} {
			q := hour
			c.edit(&q)
			got, err := s.Spent(ctx, q)
			if err != nil {
				t.Fatalf("%s: %v", c.name, err)
			}
			if got.String() != c.want {
				t.Errorf("%s: %+v spent %s, want %s", c.name, q, got, c.want)
			}
			// By model: the same sum, split by (provider, model), each once.
			groups, err := s.SpentByModel(ctx, q)
			if err != nil {
				t.Fatalf("%s: by model: %v", c.name, err)
			}
			var sum usd.Amount
			seen := map[[2]string]bool{}
			for _, g := range groups {
				k := [2]string{g.Provider, g.Model}
				if seen[k] || g.Spent == 0 {
					t.Errorf("%s: by model: %+v repeated or empty", c.name, groups)
				}
				seen[k] = true
				sum += g.Spent
			}
			if sum != got {
				t.Errorf("%s: by model sums to %s, want %s: %+v", c.name, sum, got, groups)
			}
		}
	})
}

// TestSpentUsesIndex checks with EXPLAIN that Spent's query is a range
// scan of idx_llm_usage_user_created that never reads the table.
func TestSpentUsesIndex(t *testing.T) {
	q := usage.SpendQuery{UserID: "u7", Provider: "openai", Model: "gpt-4*", From: time.Now().Add(-24 * time.Hour), To: time.Now()}
	t.Run("postgres", func(t *testing.T) {
		s := openMigrated(t, Options{DatabaseURL: pgtest.URL(t)}).(*postgresStore)
		ctx := context.Background()
		execAll(t, pgURL(s), `INSERT INTO llm_usage_logs (request_id, user_id, provider, model, created_at, cost_usd)
			SELECT 'r' || i, 'u' || (i % 500), 'openai', 'gpt-' || (i % 7), now() - i * interval '1 minute', i * 0.000001
			FROM generate_series(1, 50000) i`)
		// VACUUM sets the visibility map, without which an index-only
		// scan would still visit the heap.
		execAll(t, pgURL(s), `VACUUM ANALYZE llm_usage_logs`)
		sql, args := postgresSpent(q)
		rows, err := s.pool.Query(ctx, "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) "+sql, args...)
		if err != nil {
			t.Fatal(err)
		}
		plan := strings.Join(must(pgx.CollectRows(rows, pgx.RowTo[string])), "\n")
		t.Logf("%s\n%s", sql, plan)
		if !strings.Contains(plan, "Index Only Scan using idx_llm_usage_user_created") || !strings.Contains(plan, "Heap Fetches: 0") {
			t.Fatalf("Spent is not an index-only scan of idx_llm_usage_user_created:\n%s", plan)
		}
	})
	t.Run("sqlite", func(t *testing.T) {
		s := openMigrated(t, Options{DataDir: t.TempDir()}).(*sqliteStore)
		query, args := sqliteSpent(q)
		rows, err := s.db.Query("EXPLAIN QUERY PLAN "+query, args...)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		var plan []string
		for rows.Next() {
			var id, parent, unused int
			var detail string
			if err := rows.Scan(&id, &parent, &unused, &detail); err != nil {
				t.Fatal(err)
			}
			plan = append(plan, detail)
		}
		t.Logf("%s\n%s", query, strings.Join(plan, "\n"))
		if p := strings.Join(plan, "\n"); !strings.Contains(p, "USING COVERING INDEX idx_llm_usage_user_created (user_id=? AND created_at>? AND created_at<?)") {
			t.Fatalf("Spent does not range-scan the covering index:\n%s", p)
		}
	})
}

// TestUpgradeToCosts migrates a database that llmusage wrote before
// costs (every migration but the last), with records and rules in it.
func TestUpgradeToCosts(t *testing.T) {
	forEachStoreAt(t, 3, 4, func(t *testing.T, s Store, db *sql.DB, kind string, version int64) {
		ctx := context.Background()
		createdAt := "'2026-11-20T09:30:00Z'"
		if kind == "sqlite" {
			createdAt = fmt.Sprint(t0.UnixMicro())
		}
		for _, q := range []string{
			`INSERT INTO llm_usage_logs (request_id, user_id, provider, model, tokens_used, created_at) VALUES ('old', 'alice', 'openai', 'gpt-4o', 10, ` + createdAt + `)`,
			`INSERT INTO llm_rate_limits (user_id, limit_type, limit_value) VALUES ('alice', 'minute', 5)`,
		} {
			if _, err := db.ExecContext(ctx, q); err != nil {
				t.Fatalf("%s: %s", q, err)
			}
		}
		if applied, err := s.Migrate(ctx); err != nil || len(applied) == 0 || applied[0] != version+1 {
			t.Fatalf("migrate: %v, %v; want the cost migration first", applied, err)
		}
		if _, err := s.Insert(ctx, []record.Record{priced(t, rec("new", "alice", "openai", "gpt-4o", 1, 1, t0), "0.5")}); err != nil {
			t.Fatal(err)
		}
		u, err := s.Usage(ctx, usage.Query{UserID: "alice", Since: t0})
		if err != nil || u.Calls != 2 || u.UnpricedCalls != 1 || u.CostUSD.String() != "0.5" {
			t.Fatalf("usage after the upgrade: %+v, %v", u.Totals, err)
		}
		if spent, err := s.Spent(ctx, usage.SpendQuery{UserID: "alice", From: t0, To: t0.Add(time.Hour)}); err != nil || spent.String() != "0.5" {
			t.Fatalf("spend after the upgrade: %s, %v", spent, err)
		}
		rows, err := s.RuleRows(ctx)
		if err != nil || len(rows) != 3 || !rows[0].Seeded || !rows[1].Seeded || rows[2].LimitUSD != nil {
			t.Fatalf("rule rows after the upgrade: %+v, %v", rows, err)
		}
		if kind == "postgres" {
			if _, err := db.ExecContext(ctx, `SELECT refresh_llm_usage_summary()`); err != nil {
				t.Fatal(err)
			}
		}
		if got := queryOne(t, s, `SELECT calls || ' ' || cost_usd || ' ' || unpriced_calls FROM llm_usage_daily_summary`); got != "2 0.5 1" && got != "2 0.500000000 1" {
			t.Fatalf("summary after the upgrade: %s", got)
		}
	})
}
