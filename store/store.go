// Package store persists call records and reads limit rules and usage
// back, in Postgres (production) or an embedded SQLite file (the default,
// so that llmusage runs with no database server at all). Both keep the
// seed's tables: llm_usage_logs, llm_rate_limit_configs, llm_rate_limits
// and llm_usage_daily_summary; and llm_model_prices.
package store

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"strings"
	"time"

	"github.com/llmusage/llmusage/record"
	"github.com/llmusage/llmusage/rules"
	"github.com/llmusage/llmusage/usage"
	"github.com/llmusage/llmusage/usd"
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
	// PriceSource reads the rows of llm_model_prices; WatchRules reports
	// their changes too.
	rules.PriceSource
	// Usage answers the usage API.
	Usage(ctx context.Context, q usage.Query) (usage.Breakdown, error)
	// Logs returns a page of records, newest first.
	Logs(ctx context.Context, q usage.LogQuery) (usage.LogPage, error)
	// Spent sums cost_usd of the records of one user in [From, To) within
	// a scope, to rebuild a budget's spend after a restart; unpriced
	// records add nothing.
	Spent(ctx context.Context, q usage.SpendQuery) (usd.Amount, error)
	// SpentByModel is Spent by provider and model: a budget's spend
	// counts only the calls its rule is the most specific budget of.
	SpentByModel(ctx context.Context, q usage.SpendQuery) ([]usage.ModelSpend, error)
	// StoredIDs returns which of user's request_ids are stored, for a
	// budget's recovery: a copy of a record another replica stored is
	// not this one's part.
	StoredIDs(ctx context.Context, user string, ids []string) ([]string, error)
	// Maintainer deletes rows past the retention and steps the summary.
	Maintainer
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
	// MaxConns bounds the connections to a Postgres DatabaseURL
	// (DefaultMaxConns when zero): the writer, the reads and the LISTEN
	// for rule changes share them.
	MaxConns int
	// ExecMode is how statements reach Postgres: auto (or empty), or one
	// of pgx's query exec modes (cache_statement, cache_describe,
	// describe_exec, exec, simple_protocol). Auto takes the URL's
	// default_query_exec_mode when it has one, else cache_statement
	// (server-side prepared statements) on a direct connection and
	// cache_describe (nothing kept on the server) through a pooler.
	ExecMode string
	// ListenURL is a direct connection to the same database for LISTEN
	// only, where DatabaseURL goes through a transaction pooler; empty:
	// LISTEN on DatabaseURL, or poll where that cannot work.
	ListenURL string
	// PollInterval is how often the rule tables are read when LISTEN is
	// not available (DefaultPollInterval when zero).
	PollInterval time.Duration
}

// Open connects to the store that opts select. It does not migrate.
func Open(ctx context.Context, opts Options) (Store, error) {
	switch kind, target := Kind(opts); kind {
	case "postgres":
		opts.DatabaseURL = target
		return openPostgres(ctx, opts)
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
	cols := `coalesce(team_id, ''), coalesce(per, ''), limit_type, coalesce(unit, 'requests'), coalesce(provider, ''), coalesce(model, ''), limit_value, limit_usd` + text
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
		if err := rows.Scan(&r.ID, &r.UserID, &r.TeamID, &r.Per, &r.LimitType, &r.Unit, &r.Provider, &r.Model, &r.LimitValue, &r.LimitUSD, &r.Seeded); err != nil {
			return nil, err
		}
		r.LimitUSD = trimDecimal(r.LimitUSD)
		out = append(out, r)
	}
	return out, rows.Err()
}

// priceColumns lists what PriceRows selects from llm_model_prices, in the
// order scanPriceRows reads, with effective_from last; text casts the
// numeric columns and id to text where the database needs it.
func priceColumns(text string) string {
	return `id` + text + `, coalesce(provider, ''), model, input_usd_per_mtok` + text + `, output_usd_per_mtok` + text + `,
		cached_input_usd_per_mtok` + text + `, cache_write_usd_per_mtok` + text
}

// scanPriceRows reads rows of priceColumns and effective_from; At is what
// the driver scans effective_from into, and effective converts it.
func scanPriceRows[At any](rows rowScanner, effective func(at At) (*time.Time, error)) ([]rules.PriceRow, error) {
	out := []rules.PriceRow{}
	for rows.Next() {
		var p rules.PriceRow
		var at At
		if err := rows.Scan(&p.ID, &p.Provider, &p.Model, &p.Input, &p.Output, &p.CachedInput, &p.CacheWrite, &at); err != nil {
			return nil, err
		}
		var err error
		if p.EffectiveFrom, err = effective(at); err != nil {
			return nil, fmt.Errorf("cannot read effective_from of %s id %s: %w", rules.PricesTable, p.ID, err)
		}
		p.Input, p.Output = *trimDecimal(&p.Input), *trimDecimal(&p.Output)
		p.CachedInput, p.CacheWrite = trimDecimal(p.CachedInput), trimDecimal(p.CacheWrite)
		out = append(out, p)
	}
	return out, rows.Err()
}

// trimDecimal drops the trailing zeros of a decimal's fraction, so that
// one amount reads the same from either store: Postgres writes a
// numeric(20,9) with all nine places ("12.500000000"), SQLite's text
// keeps what was typed ("12.50"). Nil stays nil; the value is unchanged.
func trimDecimal(s *string) *string {
	if s == nil || !strings.Contains(*s, ".") {
		return s
	}
	t := strings.TrimRight(strings.TrimRight(*s, "0"), ".")
	if t == "" {
		t = "0"
	}
	return &t
}

// pollRules reads src's rule and price rows every interval until ctx
// ends and calls changed when they differ from the last read. stamp, if
// not nil, describes the database's files (see sqliteStore.stamp): while
// it stays the same, the rows are not read again.
func pollRules(ctx context.Context, interval time.Duration, src interface {
	rules.Source
	rules.PriceSource
}, stamp func(now time.Time) (key string, settled bool), changed func()) error {
	last := ""
	lastKey, lastSettled := "", false
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		key, settled := "", false
		if stamp != nil {
			key, settled = stamp(time.Now())
		}
		// The stamp is taken before the read, so that a write after it
		// changes the next one; a write within the file system's timestamp
		// granularity of it may not, which is why an unsettled stamp is
		// read again.
		if stamp == nil || key == "" || key != lastKey || !lastSettled || last == "" {
			if sum, err := readFingerprint(ctx, src); err == nil {
				if last != "" && sum != last {
					changed()
				}
				last = sum
				lastKey, lastSettled = key, settled
			} else {
				lastKey, lastSettled = "", false
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// readFingerprint digests the rows WatchRules watches.
func readFingerprint(ctx context.Context, src interface {
	rules.Source
	rules.PriceSource
}) (string, error) {
	ruleRows, err := src.RuleRows(ctx)
	if err != nil {
		return "", err
	}
	prices, err := src.PriceRows(ctx)
	if err != nil {
		return "", err
	}
	return rulesFingerprint(ruleRows, prices)
}

// rulesFingerprint digests the rule and price rows, for stores that poll
// for changes. JSON, unlike fmt, writes what the pointer fields point to
// (limit_usd, the optional prices) rather than their addresses.
func rulesFingerprint(ruleRows []rules.Row, prices []rules.PriceRow) (string, error) {
	b, err := json.Marshal(struct {
		Rules  []rules.Row
		Prices []rules.PriceRow
	}{ruleRows, prices})
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%x", sha256.Sum256(b)), nil
}

// likePattern turns a model glob into a LIKE pattern with backslash as
// the escape: "*" is "%", "?" is "_", and a literal "%", "_" or "\" is
// escaped. ASCII letters are lower-cased: the caller compares it with the
// model lower-cased the same way, or with SQLite's LIKE, which ignores
// ASCII case only, as the glob does.
func likePattern(glob string) string {
	var b strings.Builder
	for i := 0; i < len(glob); i++ {
		switch c := glob[i]; c {
		case '*':
			b.WriteByte('%')
		case '?':
			b.WriteByte('_')
		case '%', '_', '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		default:
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			b.WriteByte(c)
		}
	}
	return b.String()
}

// ceilMicro rounds t up to a whole microsecond, the precision of stored
// times: a record stored at r (whole microseconds) is at or after t
// exactly when r >= ceilMicro(t), and before t when r < ceilMicro(t).
func ceilMicro(t time.Time) time.Time {
	if u := t.Truncate(time.Microsecond); !u.Equal(t) {
		return u.Add(time.Microsecond)
	}
	return t
}

// rowScanner is what pgx.Rows and *sql.Rows share, so that both stores
// read query results with the same code.
type rowScanner interface {
	Next() bool
	Scan(dest ...any) error
	Err() error
}

// daySpan splits a usage query's time range: the whole UTC days in
// [first, today) are read from the summary, and the rest of the range,
// from the query's Since to first and from today on, from the raw rows.
type daySpan struct {
	first, today time.Time
}

// wholeDays is the daySpan of a query counting from since at time now.
// A since within a day leaves that day to the raw rows.
func wholeDays(since, now time.Time) daySpan {
	first := since.UTC().Truncate(24 * time.Hour)
	if first.Before(since) {
		first = first.Add(24 * time.Hour)
	}
	today := now.UTC().Truncate(24 * time.Hour)
	if today.Before(first) {
		today = first
	}
	return daySpan{first: first, today: today}
}

// readBreakdown folds the rows of sql (with args) into a Breakdown. The
// query yields one row per day, model, provider and team, as (day
// YYYY-MM-DD, model, provider, team_id (empty for none), calls, errors, tokens_used, prompt_tokens,
// completion_tokens, cost in nano-dollars, unpriced_calls): every
// database adds up whole days from its summary and today from the raw
// rows, and the folding is the same.
func readBreakdown(ctx context.Context, query func(ctx context.Context, sql string, args ...any) (rowScanner, func(), error),
	fail func(what string, err error) error, sql string, args []any) (usage.Breakdown, error) {
	u := usage.NewBreakdown()
	rows, done, err := query(ctx, sql, args...)
	if err == nil {
		err = foldBreakdown(rows, &u)
		done()
	}
	if err != nil {
		return usage.Breakdown{}, fail("sum usage", err)
	}
	return u, nil
}

// foldBreakdown adds rows of (day, model, provider, team, totals...),
// ordered by day, to u. A model's provider is the one with the most calls over
// all the days, so each model and provider is added once, summed.
func foldBreakdown(rows rowScanner, u *usage.Breakdown) error {
	type group struct{ model, provider string }
	var order []group
	sums := map[group]usage.Totals{}
	for rows.Next() {
		var day, team string
		var g group
		var t usage.Totals
		if err := rows.Scan(&day, &g.model, &g.provider, &team, &t.Calls, &t.Errors, &t.Tokens, &t.PromptTokens, &t.CompletionTokens, &t.CostUSD, &t.UnpricedCalls); err != nil {
			return err
		}
		u.AddDay(day, t)
		u.AddTeam(team, t)
		sum, seen := sums[g]
		if !seen {
			order = append(order, g)
		}
		sums[g] = sum.Plus(t)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	for _, g := range order {
		u.Add(g.model, g.provider, sums[g])
	}
	return nil
}
