package store

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/llmusage/llmusage/record"
	"github.com/llmusage/llmusage/usage"
)

func teamed(r record.Record, team string) record.Record {
	r.TeamID = team
	return r
}

// TestTeams stores records with and without a team_id, and reads them
// back by team: the logs, the usage API's filter and by_team, the daily
// summary, and the spend of users and pools, whose whole past days come
// from the summary and the rest from the raw rows.
func TestTeams(t *testing.T) {
	forEachStore(t, func(t *testing.T, s Store, exec func(string)) {
		ctx := context.Background()
		today := time.Now().UTC().Truncate(24 * time.Hour)
		day := func(d int, h time.Duration) time.Time { return today.AddDate(0, 0, d).Add(h) }
		recs := []record.Record{
			// Before the period: not counted.
			teamed(priced(t, rec("t0", "alice", "openai", "gpt-4o", 1, 1, day(-3, 11*time.Hour)), "1000"), "red"),
			// The partial first day, from the raw rows.
			teamed(priced(t, rec("t1", "alice", "openai", "gpt-4o", 1, 1, day(-3, 13*time.Hour)), "1"), "red"),
			// Whole days, from the summary.
			teamed(priced(t, rec("t2", "bob", "openai", "gpt-4o", 1, 1, day(-2, time.Hour)), "2"), "red"),
			teamed(priced(t, rec("t3", "carol", "anthropic", "claude-3-opus", 1, 1, day(-2, 2*time.Hour)), "4"), "blue"),
			priced(t, rec("t4", "alice", "openai", "gpt-4o", 1, 1, day(-1, time.Hour)), "8"),
			// Today, from the raw rows.
			teamed(priced(t, rec("t5", "bob", "openai", "gpt-4o", 1, 1, day(0, time.Second)), "16"), "red"),
			priced(t, rec("t6", "carol", "openai", "gpt-4o", 1, 1, day(0, 2*time.Second)), "32"),
		}
		if _, err := s.Insert(ctx, recs[:4]); err != nil {
			t.Fatal(err)
		}
		// On Postgres, some totals in the summary and some pending.
		if _, _, err := s.StepSummary(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Insert(ctx, recs[4:]); err != nil {
			t.Fatal(err)
		}

		from, to := day(-3, 12*time.Hour), day(0, time.Hour)
		for _, c := range []struct {
			q    usage.SpendQuery
			want string
		}{
			{usage.SpendQuery{}, "63"},
			{usage.SpendQuery{TeamID: "red"}, "19"},
			{usage.SpendQuery{TeamID: "blue"}, "4"},
			{usage.SpendQuery{TeamID: "none"}, "0"},
			{usage.SpendQuery{Provider: "openai"}, "59"},
			{usage.SpendQuery{TeamID: "red", Model: "GPT-4*"}, "19"},
			{usage.SpendQuery{UserID: "alice"}, "9"},
			{usage.SpendQuery{UserID: "alice", TeamID: "red"}, "1"},
			{usage.SpendQuery{UserID: "bob", TeamID: "red"}, "18"},
		} {
			q := c.q
			q.From, q.To = from, to
			got, err := s.Spent(ctx, q)
			if err != nil || got.String() != c.want {
				t.Errorf("Spent(%+v) = %s, %v; want %s", c.q, got, err, c.want)
			}
		}
		// A period within today only reads raw rows.
		if got, err := s.Spent(ctx, usage.SpendQuery{From: today, To: to}); err != nil || got.String() != "48" {
			t.Errorf("today's pool spend: %s, %v; want 48", got, err)
		}

		by, err := s.SpentByModel(ctx, usage.SpendQuery{From: from, To: to})
		if err != nil {
			t.Fatal(err)
		}
		var lines []string
		for _, m := range by {
			lines = append(lines, fmt.Sprintf("%s/%s/%s=%s", m.Provider, m.Model, m.TeamID, m.Spent))
		}
		slices.Sort(lines)
		if got, want := strings.Join(lines, " "), "anthropic/claude-3-opus/blue=4 openai/gpt-4o/=40 openai/gpt-4o/red=19"; got != want {
			t.Errorf("pool spend by model and team: %s, want %s", got, want)
		}
		by, err = s.SpentByModel(ctx, usage.SpendQuery{UserID: "bob", From: from, To: to})
		if err != nil || len(by) != 1 || by[0].TeamID != "red" || by[0].Spent.String() != "18" {
			t.Errorf("bob's spend by model and team: %+v, %v", by, err)
		}

		u, err := s.Usage(ctx, usage.Query{Since: day(-3, 0)})
		if err != nil {
			t.Fatal(err)
		}
		if u.Calls != 7 || u.ByTeam["red"].Calls != 4 || u.ByTeam["blue"].Calls != 1 || u.ByTeam[""].Calls != 2 ||
			u.ByTeam["red"].CostUSD.String() != "1019" {
			t.Errorf("usage by team: %d calls, %+v", u.Calls, u.ByTeam)
		}
		u, err = s.Usage(ctx, usage.Query{TeamID: "red", Since: day(-2, 0)})
		if err != nil {
			t.Fatal(err)
		}
		if u.Calls != 2 || u.CostUSD.String() != "18" || len(u.ByTeam) != 1 || u.ByModel["gpt-4o"].Calls != 2 {
			t.Errorf("usage of team red: %+v", u)
		}
		u, err = s.Usage(ctx, usage.Query{UserID: "bob", TeamID: "red", Since: day(-3, 0)})
		if err != nil || u.Calls != 2 {
			t.Errorf("usage of bob in team red: %+v, %v", u.Totals, err)
		}

		page, err := s.Logs(ctx, usage.LogQuery{TeamID: "red", Limit: 2})
		if err != nil {
			t.Fatal(err)
		}
		if len(page.Logs) != 2 || page.Logs[0].RequestID != "t5" || page.Logs[0].TeamID != "red" || page.NextCursor == "" {
			t.Fatalf("team red's first page: %+v", page)
		}
		page, err = s.Logs(ctx, usage.LogQuery{TeamID: "red", Limit: 2, Before: page.NextCursor})
		if err != nil || len(page.Logs) != 2 || page.Logs[1].RequestID != "t0" {
			t.Fatalf("team red's second page: %+v, %v", page, err)
		}
		page, err = s.Logs(ctx, usage.LogQuery{UserID: "carol", Limit: 10})
		if err != nil || len(page.Logs) != 2 || page.Logs[0].TeamID != "" || page.Logs[1].TeamID != "blue" {
			t.Fatalf("carol's logs: %+v, %v", page, err)
		}

		if _, _, err := s.StepSummary(ctx); err != nil {
			t.Fatal(err)
		}
		var got string
		if _, pg := s.(*postgresStore); pg {
			got = queryOne(t, s, `SELECT string_agg(team_id || ':' || calls, ' ' ORDER BY team_id) FROM (SELECT team_id, sum(calls) AS calls FROM llm_usage_daily_summary GROUP BY team_id) y`)
		} else {
			got = queryOne(t, s, `SELECT group_concat(x, ' ') FROM (SELECT team_id || ':' || sum(calls) AS x FROM llm_usage_daily_summary GROUP BY team_id ORDER BY team_id) y`)
		}
		if got != ":2 blue:1 red:4" {
			t.Errorf("daily summary by team: %s", got)
		}
	})
}

// TestRuleRowsTeam reads the team_id and per columns of the rule tables.
func TestRuleRowsTeam(t *testing.T) {
	forEachStore(t, func(t *testing.T, s Store, exec func(string)) {
		exec(`DELETE FROM llm_rate_limit_configs`)
		exec(`INSERT INTO llm_rate_limit_configs (limit_type, limit_value, unit, team_id, per) VALUES ('minute', 100, 'requests', 'red', 'team')`)
		exec(`INSERT INTO llm_rate_limit_configs (limit_type, limit_value, unit) VALUES ('day', 1000, 'requests')`)
		exec(`INSERT INTO llm_rate_limits (user_id, limit_type, limit_value, unit, team_id) VALUES ('alice', 'hour', 10, 'requests', 'blue')`)
		rows, err := s.RuleRows(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, r := range rows {
			got = append(got, fmt.Sprintf("%s:%s:%s:%s:%s", r.Table, r.UserID, r.LimitType, r.TeamID, r.Per))
		}
		want := "llm_rate_limit_configs::minute:red:team llm_rate_limit_configs::day:: llm_rate_limits:alice:hour:blue:"
		if strings.Join(got, " ") != want {
			t.Fatalf("rule rows: %s, want %s", strings.Join(got, " "), want)
		}
	})
}
