package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/llmusage/llmusage/internal/pgtest"
	"github.com/llmusage/llmusage/internal/sidecartest"
	"github.com/llmusage/llmusage/limiter"
	"github.com/llmusage/llmusage/rules"
	"github.com/llmusage/llmusage/store"
)

// TestRetentionKeepsSummary is issue #16's new user: a database holding
// ten days of rows, a sidecar started with --retention 1d. The old rows
// go while records keep being accepted and stored, and the usage API and
// llm_usage_daily_summary still show the older days.
func TestRetentionKeepsSummary(t *testing.T) {
	dbURL := pgtest.URL(t)
	if out, err := sidecartest.Run(t, "migrate", "--database-url", dbURL); err != nil {
		t.Fatalf("llmusage migrate: %s\n%s", err, out)
	}
	ctx := context.Background()
	db, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(ctx)
	// 20,000 rows over the ten days before yesterday: 2,000 a day, as the
	// seed's application would have written them, before llmusage.
	const oldRows = 20_000
	if _, err := db.Exec(ctx, `INSERT INTO llm_usage_logs (user_id, model, provider, tokens_used, prompt_tokens, completion_tokens, created_at, request_id)
		SELECT 'user-' || (i % 7), 'gpt-4o', 'openai', 3, 2, 1,
		       date_trunc('day', now()) - interval '2 days' - (i / 2000) * interval '1 day' + (i % 2000) * interval '1 second',
		       'old-' || i
		FROM generate_series(0, $1 - 1) i`, oldRows); err != nil {
		t.Fatal(err)
	}
	var oldDays int
	if err := db.QueryRow(ctx, `SELECT count(DISTINCT day) FROM llm_usage_summary_pending`).Scan(&oldDays); err != nil || oldDays != 10 {
		t.Fatalf("pending days after the seed's inserts: %d, %v", oldDays, err)
	}
	stats := func(p *sidecartest.Sidecar) (calls, tokens float64, days int) {
		_, s := p.Get(t, "/api/llm/usage/stats?days=30")
		return s["total_calls"].(float64), s["total_tokens"].(float64), len(s["by_day"].([]any))
	}

	p := startSidecar(t, "# no rules\n", "LLMUSAGE_DATABASE_URL="+dbURL, "LLMUSAGE_RETENTION=1d", "LLMUSAGE_SUMMARY_INTERVAL=200ms",
		"LLMUSAGE_MIGRATE=false")
	posted := 0
	post := func() {
		var body strings.Builder
		for range 50 {
			fmt.Fprintf(&body, `{"user_id":"user-%d","model":"gpt-4o","prompt_tokens":2,"completion_tokens":1,"request_id":"new-%d"}`+"\n", posted%7, posted)
			posted++
		}
		if code, _, out := p.Post(t, "/v1/calls", "application/x-ndjson", body.String()); code != http.StatusAccepted {
			t.Fatalf("a post during retention: %d %v", code, out)
		}
	}
	count := func(where string) int {
		var n int
		if err := db.QueryRow(ctx, `SELECT count(*) FROM llm_usage_logs WHERE `+where).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	sidecartest.WaitFor(t, 60*time.Second, func() bool {
		post()
		return count("request_id LIKE 'old-%'") == 0
	}, "retention did not delete the rows older than a day")
	sidecartest.WaitFor(t, 30*time.Second, func() bool {
		return count("request_id LIKE 'new-%'") == posted
	}, "the records posted during retention are not all stored")
	if got := p.Scrape(t); !strings.Contains(got, fmt.Sprintf("llmusage_store_rows_deleted_total %d\n", oldRows)) {
		t.Fatalf("/metrics lacks llmusage_store_rows_deleted_total %d:\n%s", oldRows, samples(got, "llmusage_store_rows_deleted_total"))
	}

	calls, tokens, days := stats(p)
	if calls != float64(oldRows+posted) || tokens != float64(3*(oldRows+posted)) || days != 11 {
		t.Fatalf("stats after retention: %v calls, %v tokens, %d days; want %d, %d, 11", calls, tokens, days, oldRows+posted, 3*(oldRows+posted))
	}
	sidecartest.WaitFor(t, 10*time.Second, func() bool {
		var n int
		err := db.QueryRow(ctx, `SELECT count(*) FROM llm_usage_summary_pending`).Scan(&n)
		return err == nil && n == 0
	}, "the sidecar's summary steps leave rows pending")
	var summaryCalls, summaryDays int
	if err := db.QueryRow(ctx, `SELECT sum(calls), count(DISTINCT day) FROM llm_usage_daily_summary WHERE day < current_date - 1`).Scan(&summaryCalls, &summaryDays); err != nil ||
		summaryCalls != oldRows || summaryDays != 10 {
		t.Fatalf("llm_usage_daily_summary of the deleted days: %d calls over %d days (%v); want %d over 10", summaryCalls, summaryDays, err, oldRows)
	}
	if !strings.Contains(p.Scrape(t), `llmusage_store_rollup_steps_total{result="ok"}`) {
		t.Fatal("/metrics counts no summary step")
	}
}

// TestRetentionFlags: bad values end serve with an error naming the flag.
func TestRetentionFlags(t *testing.T) {
	f := func(flag, value, want string) {
		t.Helper()
		out, err := sidecartest.Run(t, "serve", "--"+flag, value, "--data-dir", t.TempDir())
		if err == nil || !strings.Contains(out, want) {
			t.Fatalf("--%s %s: %v\n%s", flag, value, err, out)
		}
	}
	f("retention", "90 days", `cannot use --retention "90 days"`)
	f("retention", "0d", `cannot use --retention "0d"`)
	f("summary-interval", "-1s", "cannot use --summary-interval -1s")
}

// TestBudgetPeriodsStart: retention keeps the rows of the longest budget
// period in force, in the budgets' time zone.
func TestBudgetPeriodsStart(t *testing.T) {
	paris, err := time.LoadLocation("Europe/Paris")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 12, 17, 10, 0, 0, 0, time.UTC) // a Thursday
	f := func(want time.Time, rs ...limiter.Rule) {
		t.Helper()
		if got := budgetPeriodsStart(rs, now, paris); !got.Equal(want) {
			t.Fatalf("%v: %s, want %s", rs, got, want)
		}
	}
	usd := func(w limiter.Window) limiter.Rule { return limiter.Rule{Window: w, Unit: limiter.USD, Limit: 1} }
	f(now)
	f(now, limiter.Rule{Window: limiter.Month, Unit: limiter.Requests, Limit: 5})
	f(time.Date(2026, 12, 16, 23, 0, 0, 0, time.UTC), usd(limiter.Day))
	f(time.Date(2026, 12, 13, 23, 0, 0, 0, time.UTC), usd(limiter.Day), usd(limiter.Week))
	f(time.Date(2026, 11, 30, 23, 0, 0, 0, time.UTC), usd(limiter.Month), usd(limiter.Week))
}

// unreadableRules is a database whose rule tables cannot be read.
type unreadableRules struct{}

func (unreadableRules) RuleRows(context.Context) ([]rules.Row, error) {
	return nil, errors.New("cannot read the rule tables: connection refused")
}
func (unreadableRules) WatchRules(ctx context.Context, _ func()) error { <-ctx.Done(); return nil }

// TestRetentionKeepsAllWhileRulesUnread: a sidecar that could not read
// the rule tables does not know the database's budgets, so its retention
// deletes nothing a monthly budget's spend may be rebuilt from.
func TestRetentionKeepsAllWhileRulesUnread(t *testing.T) {
	m, err := rules.New(context.Background(), rules.Options{DB: unreadableRules{}})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 12, 17, 10, 0, 0, 0, time.UTC)
	o := store.MaintenanceOptions{Retention: 24 * time.Hour, KeepSince: retentionKeepSince(m, time.UTC)}
	if cutoff := o.RetentionCutoff(now); !cutoff.IsZero() {
		t.Fatalf("retention cutoff %s with the database's rules unread, want none (keep every row)", cutoff)
	}
}
