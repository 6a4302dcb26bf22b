// Package store persists call records and reads limit rules and usage
// back, in Postgres (production) or an embedded SQLite file (the default,
// so that llmusage runs with no database server at all). Both keep the
// seed's tables: llm_usage_logs, llm_rate_limit_configs, llm_rate_limits
// and llm_usage_daily_summary.
package store

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"strings"

	"github.com/llmusage/llmusage/record"
	"github.com/llmusage/llmusage/rules"
	"github.com/llmusage/llmusage/usage"
)

// Store is what the rest of llmusage needs from a database.
type Store interface {
	// Insert persists records in one transaction; a record whose
	// request_id is already stored is skipped, so redelivery is harmless.
	// It returns how many rows were new.
	Insert(ctx context.Context, recs []record.Record) (int, error)
	// Source reads the rows of llm_rate_limit_configs (rules for every
	// user) and llm_rate_limits (per user), and watches them for changes.
	rules.Source
	// Usage answers the usage API.
	Usage(ctx context.Context, q usage.Query) (usage.Breakdown, error)
	// Logs returns a page of records, newest first.
	Logs(ctx context.Context, q usage.LogQuery) (usage.LogPage, error)
	// Migrator applies the embedded schema migrations.
	Migrator
	// Ping checks that the database answers.
	Ping(ctx context.Context) error
	// Close releases the connections.
	Close() error
}

// ErrRejected marks an Insert error caused by the records rather than by
// the database: a value it refuses. Retrying the same batch cannot
// succeed; the Writer isolates the records at fault instead.
var ErrRejected = errors.New("the database rejects the records")

// Options select and configure a store.
type Options struct {
	// DatabaseURL is postgres://... or postgresql://... for Postgres,
	// sqlite:/path/file.db for an explicit SQLite file, or empty for
	// <DataDir>/llmusage.db.
	DatabaseURL string
	// DataDir holds the default SQLite file.
	DataDir string
}

// Open connects to the store that opts select. It does not migrate.
func Open(ctx context.Context, opts Options) (Store, error) {
	switch kind, target := Kind(opts); kind {
	case "postgres":
		return openPostgres(ctx, target)
	case "sqlite":
		return openSQLite(ctx, target)
	default:
		return nil, fmt.Errorf("cannot use --database-url %s: want postgres://, postgresql:// or sqlite:", Redact(opts.DatabaseURL))
	}
}

// Kind tells which implementation opts select ("postgres" or "sqlite")
// and its connection string or file.
func Kind(opts Options) (kind, target string) {
	u := opts.DatabaseURL
	switch {
	case strings.HasPrefix(u, "postgres://"), strings.HasPrefix(u, "postgresql://"):
		return "postgres", u
	case strings.HasPrefix(u, "sqlite:"):
		return "sqlite", strings.TrimPrefix(strings.TrimPrefix(u, "sqlite:"), "//")
	case u == "":
		return "sqlite", filepath.Join(opts.DataDir, "llmusage.db")
	case strings.Contains(u, "://"):
		return "unknown", u
	}
	return "sqlite", u
}

// Redact returns a URL (a database's, Redis's) fit for logs and error messages: the
// password is replaced, whatever the URL's shape.
func Redact(databaseURL string) string {
	u, err := url.Parse(databaseURL)
	if err != nil {
		return "(an unparsable URL)"
	}
	if _, has := u.User.Password(); has {
		u.User = url.UserPassword(u.User.Username(), "xxxxx")
	}
	q := u.Query()
	if q.Has("password") {
		q.Set("password", "xxxxx")
		u.RawQuery = q.Encode()
	}
	return u.String()
}

// ruleTable is how a store reads one rule table.
type ruleTable struct {
	// name is rules.ConfigsTable or rules.UserLimitsTable.
	name string
	// sql selects the rows in id order, as the columns scanRuleRows reads.
	sql string
}

// ruleTables returns the queries of both rule tables; text casts id and
// user_id to text where the database needs it (a legacy table may key
// them by uuid). The sort names the table's column: a bare "id" would be
// the text output column, and id 10 would sort before id 9.
func ruleTables(text string) []ruleTable {
	const cols = `limit_type, coalesce(unit, 'requests'), coalesce(provider, ''), coalesce(model, ''), limit_value`
	return []ruleTable{
		{rules.ConfigsTable, `SELECT id` + text + `, '', ` + cols + `, seeded FROM ` + rules.ConfigsTable + ` ORDER BY ` + rules.ConfigsTable + `.id`},
		{rules.UserLimitsTable, `SELECT id` + text + `, user_id` + text + `, ` + cols + `, false FROM ` + rules.UserLimitsTable + ` ORDER BY ` + rules.UserLimitsTable + `.id`},
	}
}

// readRuleRows reads both rule tables with query (text as in ruleTables);
// fail names what failed.
func readRuleRows(ctx context.Context, query func(ctx context.Context, sql string, args ...any) (rowScanner, func(), error),
	fail func(what string, err error) error, text string) ([]rules.Row, error) {
	var out []rules.Row
	for _, t := range ruleTables(text) {
		rows, done, err := query(ctx, t.sql)
		if err == nil {
			out, err = scanRuleRows(out, t.name, rows)
			done()
		}
		if err != nil {
			return nil, fail("read "+t.name, err)
		}
	}
	return out, nil
}

// scanRuleRows appends the rows of one rule table's query to out.
func scanRuleRows(out []rules.Row, table string, rows rowScanner) ([]rules.Row, error) {
	for rows.Next() {
		r := rules.Row{Table: table}
		if err := rows.Scan(&r.ID, &r.UserID, &r.LimitType, &r.Unit, &r.Provider, &r.Model, &r.LimitValue, &r.Seeded); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// rowScanner is what pgx.Rows and *sql.Rows share, so that both stores
// read query results with the same code.
type rowScanner interface {
	Next() bool
	Scan(dest ...any) error
	Err() error
}

// breakdownSQL is how one database writes the usage breakdown's queries.
type breakdownSQL struct {
	// sums select a usage.Totals, in the order readModelGroups scans.
	sums string
	// day is created_at's UTC day as YYYY-MM-DD.
	day string
}

// readBreakdown sums the records matching where (with args) by model
// and provider, then by day; query runs a query and fail names what
// could not be done.
func readBreakdown(ctx context.Context, query func(ctx context.Context, sql string, args ...any) (rowScanner, func(), error),
	fail func(what string, err error) error, d breakdownSQL, where string, args []any) (usage.Breakdown, error) {
	u := usage.NewBreakdown()
	rows, done, err := query(ctx, `SELECT model, provider, `+d.sums+` FROM llm_usage_logs WHERE `+where+` GROUP BY model, provider`, args...)
	if err == nil {
		err = readModelGroups(rows, &u)
		done()
	}
	if err != nil {
		return usage.Breakdown{}, fail("sum usage", err)
	}
	rows, done, err = query(ctx, `SELECT `+d.day+` AS day, `+d.sums+`
		FROM llm_usage_logs WHERE `+where+` GROUP BY day ORDER BY day`, args...)
	if err == nil {
		err = readDays(rows, &u)
		done()
	}
	if err != nil {
		return usage.Breakdown{}, fail("sum usage by day", err)
	}
	return u, nil
}

// readModelGroups folds rows of (model, provider, totals...) into u.
func readModelGroups(rows rowScanner, u *usage.Breakdown) error {
	for rows.Next() {
		var model, provider string
		var t usage.Totals
		if err := rows.Scan(&model, &provider, &t.Calls, &t.Errors, &t.Tokens, &t.PromptTokens, &t.CompletionTokens); err != nil {
			return err
		}
		u.Add(model, provider, t)
	}
	return rows.Err()
}

// readDays appends rows of (day, totals...) to u.ByDay.
func readDays(rows rowScanner, u *usage.Breakdown) error {
	for rows.Next() {
		var d usage.DayTotals
		if err := rows.Scan(&d.Day, &d.Calls, &d.Errors, &d.Tokens, &d.PromptTokens, &d.CompletionTokens); err != nil {
			return err
		}
		u.ByDay = append(u.ByDay, d)
	}
	return rows.Err()
}
