package store

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/llmusage/llmusage/usage"
)

// spendDialect is how one database writes a spend query.
type spendDialect struct {
	// placeholder returns the placeholder of the n-th argument (from 1).
	placeholder func(n int) string
	// user is the user_id column as compared (Postgres casts a legacy uuid).
	user string
	// cost is llm_usage_logs' cost column, summaries' the summaries'.
	cost, summaryCost string
	// capped sums a cost column expression, capped at 2^53 nano-dollars,
	// as an integer of nano-dollars.
	capped func(col string) string
	// model is the condition of a model LIKE pattern (placeholder p).
	model func(p string) string
	// summaries are the tables of whole days' totals, and day the
	// placeholder of a date compared with their day column.
	summaries []string
	day       func(p string) string
	// at is a time argument as created_at compares with it; date a date
	// argument as day compares with it.
	at, date func(t time.Time) any
}

var postgresSpend = spendDialect{
	placeholder: func(n int) string { return fmt.Sprintf("$%d", n) },
	user:        "user_id::text",
	cost:        "cost_usd",
	summaryCost: "cost_usd",
	// Capped at 2^53 nano-dollars, the most a budget counts: records may
	// claim up to a billion dollars each, and a sum past int64 would fail
	// the budget's every check until its period ends.
	capped: func(col string) string { return nanoUSD(`least(coalesce(sum(` + col + `), 0), 9007199.254740992)`) },
	// The model lower-cased by translate, which folds ASCII letters only,
	// as the glob does; ILIKE would fold others too under most locales.
	model: func(p string) string {
		return `translate(model, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz') LIKE ` + p + ` ESCAPE '\'`
	},
	summaries: []string{"llm_usage_daily_summary", "llm_usage_summary_pending"},
	day:       func(p string) string { return p + "::date" },
	at:        func(t time.Time) any { return ceilMicro(t) },
	date:      func(t time.Time) any { return t.Format(time.DateOnly) },
}

var sqliteSpend = spendDialect{
	placeholder: func(int) string { return "?" },
	user:        "user_id",
	cost:        "cost_nano_usd",
	summaryCost: "cost_nano_usd",
	// total() does not fail past int64, and is exact below 2^53.
	capped:    func(col string) string { return `CAST(min(total(` + col + `), 9007199254740992) AS INTEGER)` },
	model:     func(p string) string { return `model LIKE ` + p + ` ESCAPE '\'` },
	summaries: []string{"llmusage_daily_totals"},
	day:       func(p string) string { return p },
	at:        func(t time.Time) any { return ceilMicro(t).UnixMicro() },
	date:      func(t time.Time) any { return t.Format(time.DateOnly) },
}

// spendQuery writes the query of Spent (one sum) or, byModel, of
// SpentByModel (rows of provider, model, team_id and sum), for q at now.
//
// One user's spend is a range of idx_llm_usage_user_created, read from
// the index alone. A pool's (no UserID: every user's calls, or with
// TeamID one team's) would read every row of its period: it sums the
// whole UTC days before today from the daily summary (and on Postgres the
// totals still pending for it), and only the rest of the period, today
// and a partial first day, from the raw rows, two ranges of created_at.
func (d spendDialect) spendQuery(q usage.SpendQuery, byModel bool, now time.Time) (string, []any) {
	var args []any
	arg := func(v any) string {
		args = append(args, v)
		return d.placeholder(len(args))
	}
	// filters are the scope's conditions; the placeholders are numbered
	// anew for every part on Postgres, so they are written per part.
	filters := func(team string) string {
		var b strings.Builder
		if q.TeamID != "" {
			b.WriteString(" AND " + team + " = " + arg(q.TeamID))
		}
		if q.Provider != "" {
			b.WriteString(" AND provider = " + arg(q.Provider))
		}
		if q.Model != "" {
			b.WriteString(" AND " + d.model(arg(likePattern(q.Model))))
		}
		return b.String()
	}
	cols, group := "", ""
	if byModel {
		cols, group = "provider, model, coalesce(team_id, ''), ", " GROUP BY provider, model, team_id"
	}
	if q.UserID != "" {
		where := d.user + " = " + arg(q.UserID) + " AND created_at >= " + arg(d.at(q.From)) + " AND created_at < " + arg(d.at(q.To))
		return `SELECT ` + cols + d.capped(d.cost) + ` FROM llm_usage_logs WHERE ` + where + filters("team_id") + group, args
	}
	first := q.From.UTC().Truncate(24 * time.Hour)
	if first.Before(q.From) {
		first = first.Add(24 * time.Hour)
	}
	end := q.To.UTC().Truncate(24 * time.Hour)
	if today := now.UTC().Truncate(24 * time.Hour); today.Before(end) {
		end = today
	}
	// By model, each part sums its own groups first: the planner cannot
	// tell how few groups a union has, and would sort all its rows.
	cost, partGroup := "cost", ""
	if byModel {
		cost, partGroup = "sum(cost)", " GROUP BY 1, 2, 3"
	}
	var parts []string
	part := func(teamCol, costCol, table, where string) {
		parts = append(parts, `SELECT provider, model, `+teamCol+` AS team_id, `+strings.Replace(cost, "cost", costCol, 1)+` AS cost
			FROM `+table+` WHERE `+where+filters("team_id")+partGroup)
	}
	raw := func(from, to time.Time) {
		part("coalesce(team_id, '')", d.cost, "llm_usage_logs", "created_at >= "+arg(d.at(from))+" AND created_at < "+arg(d.at(to)))
	}
	if first.Before(end) {
		for _, table := range d.summaries {
			part("team_id", d.summaryCost, table, "day >= "+d.day(arg(d.date(first)))+" AND day < "+d.day(arg(d.date(end))))
		}
		if q.From.Before(first) {
			raw(q.From, first)
		}
		if end.Before(q.To) {
			raw(end, q.To)
		}
	} else {
		raw(q.From, q.To)
	}
	return `SELECT ` + cols + d.capped("cost") + ` FROM (` + strings.Join(parts, "\n\t\tUNION ALL ") + `) parts` + group, args
}

// spender names whose spend a query sums, for errors.
func spender(q usage.SpendQuery) string {
	switch {
	case q.UserID != "":
		return q.UserID
	case q.TeamID != "":
		return "team " + q.TeamID
	}
	return "every user"
}

// readModelSpend runs a store's SpentByModel query (spendQuery's, by
// model).
func readModelSpend(ctx context.Context, query func(ctx context.Context, sql string, args ...any) (rowScanner, func(), error),
	fail func(what string, err error) error, who, sql string, args []any) ([]usage.ModelSpend, error) {
	rows, done, err := query(ctx, sql, args...)
	var out []usage.ModelSpend
	if err == nil {
		for rows.Next() {
			var m usage.ModelSpend
			if err = rows.Scan(&m.Provider, &m.Model, &m.TeamID, &m.Spent); err != nil {
				break
			}
			if m.Spent != 0 {
				out = append(out, m)
			}
		}
		if err == nil {
			err = rows.Err()
		}
		done()
	}
	if err != nil {
		return nil, fail("sum the spend of "+who, err)
	}
	return out, nil
}
