package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/pressly/goose/v3"
	_ "modernc.org/sqlite" // pure Go, so the binary needs no cgo

	"github.com/llmusage/llmusage/record"
	"github.com/llmusage/llmusage/rules"
	"github.com/llmusage/llmusage/usage"
	"github.com/llmusage/llmusage/usd"
)

// sqlitePollInterval is how often the embedded store looks for changed
// rule rows; SQLite has no LISTEN.
const sqlitePollInterval = time.Second

type sqliteStore struct {
	db   *sql.DB
	path string
}

func openSQLite(ctx context.Context, path string) (*sqliteStore, error) {
	if dir := filepath.Dir(path); dir != "" {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return nil, fmt.Errorf("cannot create the data directory %s: %w", dir, err)
		}
	}
	// WAL lets the usage API read while records are written; synchronous
	// FULL makes a commit survive a power cut, since the spool is
	// truncated once a record is committed.
	dsn := "file:" + path + "?_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)&_pragma=busy_timeout(10000)&_txlock=immediate"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("cannot open %s: %w", path, err)
	}
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("cannot open %s: %w", path, err)
	}
	return &sqliteStore{db: db, path: path}, nil
}

const sqliteInsert = `INSERT OR IGNORE INTO llm_usage_logs (request_id, user_id, provider, model, tokens_used, prompt_tokens,
	completion_tokens, cached_tokens, reasoning_tokens, latency_ms, status, error_type, metadata, created_at, cost_nano_usd,
	cache_write_tokens, team_id)
	VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`

func (s *sqliteStore) Insert(ctx context.Context, recs []record.Record) (int, error) {
	if len(recs) == 0 {
		return 0, nil
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, s.fail("begin a transaction", err)
	}
	defer tx.Rollback() //nolint:errcheck // a no-op after Commit
	stmt, err := tx.PrepareContext(ctx, sqliteInsert)
	if err != nil {
		return 0, s.fail("prepare the insert", err)
	}
	defer stmt.Close()
	inserted := 0
	days := dayTotals{}
	for i := range recs {
		r := &recs[i]
		var latency, metadata, cost any
		if r.HasCost {
			cost = int64(r.Cost)
		}
		if r.HasLatency {
			latency = float64(r.Latency) / float64(time.Millisecond)
		}
		if r.Metadata != nil {
			metadata = string(r.Metadata)
		}
		res, err := stmt.ExecContext(ctx, r.RequestID, r.UserID, r.Provider, r.Model, r.TotalTokens, r.PromptTokens,
			r.CompletionTokens, r.CachedTokens, r.ReasoningTokens, latency, r.Status, nullString(r.ErrorType), metadata, r.Timestamp.UnixMicro(), cost,
			r.CacheWriteTokens, nullString(r.TeamID))
		if err != nil {
			return 0, s.fail("insert a record", err)
		}
		if n, _ := res.RowsAffected(); n > 0 {
			inserted++
			days.add(r)
		}
	}
	if err := days.upsert(ctx, tx); err != nil {
		return 0, s.fail("add records to llmusage_daily_totals", err)
	}
	if err := tx.Commit(); err != nil {
		return 0, s.fail("commit records", err)
	}
	return inserted, nil
}

// dayTotals sums a transaction's new rows by day, user, provider, model
// and team, for llmusage_daily_totals: SQLite has one writer, llmusage, so
// the summary is kept in the writing transaction, one upsert per group
// (a row trigger would make one per row).
type dayTotals map[dayKey]*dayTotal

type dayKey struct{ day, user, provider, model, team string }

type dayTotal struct {
	// The group's calls, errors and unpriced calls, and its token sums
	// (tokens is tokens_used, cacheWrite cache_write_tokens).
	calls, errors, tokens, prompt, completion, cached, reasoning, unpriced, cacheWrite int64
	// cost sums the priced calls; priced tells whether there was one.
	cost   int64
	priced bool
}

func (d dayTotals) add(r *record.Record) {
	k := dayKey{r.Timestamp.UTC().Format(time.DateOnly), r.UserID, r.Provider, r.Model, r.TeamID}
	t := d[k]
	if t == nil {
		t = &dayTotal{}
		d[k] = t
	}
	t.calls++
	if r.Status == record.StatusError {
		t.errors++
	}
	t.tokens += r.TotalTokens
	t.prompt += r.PromptTokens
	t.completion += r.CompletionTokens
	t.cached += r.CachedTokens
	t.reasoning += r.ReasoningTokens
	t.cacheWrite += r.CacheWriteTokens
	if r.HasCost {
		t.cost += int64(r.Cost)
		t.priced = true
	} else {
		t.unpriced++
	}
}

// sqliteDayUpsert gives llmusage_daily_totals' columns in their order,
// cache_write_tokens (added by migration 00006) and team_id (00007) last.
const sqliteDayUpsert = `INSERT INTO llmusage_daily_totals VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
	ON CONFLICT (day, user_id, provider, model, team_id) DO UPDATE SET
		calls = calls + excluded.calls, errors = errors + excluded.errors, tokens_used = tokens_used + excluded.tokens_used,
		prompt_tokens = prompt_tokens + excluded.prompt_tokens, completion_tokens = completion_tokens + excluded.completion_tokens,
		cached_tokens = cached_tokens + excluded.cached_tokens, reasoning_tokens = reasoning_tokens + excluded.reasoning_tokens,
		cost_nano_usd = CASE WHEN cost_nano_usd IS NULL AND excluded.cost_nano_usd IS NULL THEN NULL
		                     ELSE coalesce(cost_nano_usd, 0) + coalesce(excluded.cost_nano_usd, 0) END,
		unpriced_calls = unpriced_calls + excluded.unpriced_calls,
		cache_write_tokens = cache_write_tokens + excluded.cache_write_tokens`

func (d dayTotals) upsert(ctx context.Context, tx *sql.Tx) error {
	if len(d) == 0 {
		return nil
	}
	stmt, err := tx.PrepareContext(ctx, sqliteDayUpsert)
	if err != nil {
		return err
	}
	defer stmt.Close()
	for k, t := range d {
		var cost any
		if t.priced {
			cost = t.cost
		}
		if _, err := stmt.ExecContext(ctx, k.day, k.user, k.provider, k.model, t.calls, t.errors, t.tokens, t.prompt,
			t.completion, t.cached, t.reasoning, cost, t.unpriced, t.cacheWrite, k.team); err != nil {
			return err
		}
	}
	return nil
}

func (s *sqliteStore) RuleRows(ctx context.Context) ([]rules.Row, error) {
	return readRuleRows(ctx, s.query, s.fail, "")
}

func (s *sqliteStore) PriceRows(ctx context.Context) ([]rules.PriceRow, error) {
	// SQLite normalises any time its date functions read to UTC, with
	// milliseconds: far finer than a price change needs.
	rows, err := s.db.QueryContext(ctx, `SELECT `+priceColumns("")+`, strftime('%Y-%m-%dT%H:%M:%fZ', effective_from)
		FROM `+rules.PricesTable+` ORDER BY id`)
	if err != nil {
		return nil, s.fail("read "+rules.PricesTable, err)
	}
	defer rows.Close()
	out, err := scanPriceRows(rows, func(at sql.NullString) (*time.Time, error) {
		if !at.Valid {
			return nil, nil
		}
		t, err := time.Parse(time.RFC3339, at.String)
		if err != nil {
			return nil, err
		}
		return &t, nil
	})
	if err != nil {
		return nil, s.fail("read "+rules.PricesTable, err)
	}
	return out, nil
}

// Spent answers a user's spend from idx_llm_usage_user_created alone (a
// covering index), and a pool's from llmusage_daily_totals and
// idx_llm_usage_created_cover.
func (s *sqliteStore) Spent(ctx context.Context, q usage.SpendQuery) (usd.Amount, error) {
	query, args := sqliteSpent(q)
	var spent usd.Amount
	if err := s.db.QueryRowContext(ctx, query, args...).Scan(&spent); err != nil {
		return 0, s.fail("sum the spend of "+spender(q), err)
	}
	return spent, nil
}

// SpentByModel implements Store, from the same indexes.
func (s *sqliteStore) SpentByModel(ctx context.Context, q usage.SpendQuery) ([]usage.ModelSpend, error) {
	query, args := sqliteSpend.spendQuery(q, true, time.Now())
	return readModelSpend(ctx, s.query, s.fail, spender(q), query, args)
}

// sqliteSpent writes Spent's query. SQLite's LIKE ignores the case of
// ASCII letters only, as the glob does.
func sqliteSpent(q usage.SpendQuery) (string, []any) {
	return sqliteSpend.spendQuery(q, false, time.Now())
}

// WatchRules polls the rule tables and llm_model_prices and calls changed
// when their content differs from the last poll. The rows are read only
// when the database's files have changed since: an idle sidecar then runs
// no SQLite code every second (docs/benchmarks.md, Footprint).
func (s *sqliteStore) WatchRules(ctx context.Context, changed func()) error {
	return pollRules(ctx, sqlitePollInterval, s, s.stamp, changed)
}

// stampSettle is longer than the timestamp granularity of the file
// systems a data directory is on (2 s on FAT; ext4, XFS and overlayfs
// are finer).
const stampSettle = 3 * time.Second

// stamp describes the database file and its WAL (size and modification
// time): any commit, by this process or another, changes one of
// them. settled tells whether both were last modified long enough before
// now that a write in the same timestamp tick as the stamp would have
// changed it. An empty key (a file that cannot be read) means: read.
func (s *sqliteStore) stamp(now time.Time) (string, bool) {
	var key strings.Builder
	settled := true
	for _, name := range []string{s.path, s.path + "-wal"} {
		fi, err := os.Stat(name)
		if errors.Is(err, fs.ErrNotExist) && name != s.path {
			key.WriteString("absent;")
			continue
		}
		if err != nil {
			return "", false
		}
		fmt.Fprintf(&key, "%d:%d;", fi.Size(), fi.ModTime().UnixNano())
		if now.Sub(fi.ModTime()) < stampSettle {
			settled = false
		}
	}
	return key.String(), settled
}

// Usage adds up whole days from llmusage_daily_totals (the summary's
// table, kept by Insert) and the rest from the raw rows, as on
// Postgres.
func (s *sqliteStore) Usage(ctx context.Context, q usage.Query) (usage.Breakdown, error) {
	span := wholeDays(q.Since, time.Now())
	args := []any{span.first.Format(time.DateOnly), span.today.Format(time.DateOnly)}
	users := ""
	var filters []any
	if q.UserID != "" {
		users += " AND user_id = ?"
		filters = append(filters, q.UserID)
	}
	if q.TeamID != "" {
		users += " AND team_id = ?"
		filters = append(filters, q.TeamID)
	}
	args = append(args, filters...)
	args = append(args, q.Since.UnixMicro(), span.first.UnixMicro(), span.today.UnixMicro())
	args = append(args, filters...)
	sql := `SELECT day, model, provider, team_id, sum(calls), sum(errors), sum(tokens_used), sum(prompt_tokens),
		sum(completion_tokens), coalesce(sum(cost_nano_usd), 0), sum(unpriced_calls)
	FROM (
		SELECT day, model, provider, team_id, calls, errors, tokens_used, prompt_tokens, completion_tokens, cost_nano_usd, unpriced_calls
		FROM llmusage_daily_totals WHERE day >= ? AND day < ?` + users + `
		UNION ALL
		SELECT date(created_at / 1000000, 'unixepoch'), model, provider, coalesce(team_id, ''), count(*), sum(CASE WHEN status = 'error' THEN 1 ELSE 0 END),
			coalesce(sum(tokens_used), 0), coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0),
			sum(cost_nano_usd), sum(CASE WHEN cost_nano_usd IS NULL THEN 1 ELSE 0 END)
		FROM llm_usage_logs WHERE created_at >= ? AND (created_at < ? OR created_at >= ?)` + users + `
		GROUP BY 1, 2, 3, 4
	)
	GROUP BY day, model, provider, team_id
	ORDER BY day, model, provider, team_id`
	return readBreakdown(ctx, s.query, s.fail, sql, args)
}

// DeleteBefore deletes through idx_llm_usage_created_id. SQLite has one
// process, so the lock is always held.
func (s *sqliteStore) DeleteBefore(ctx context.Context, cutoff time.Time, batch int) (deleted int, held bool, err error) {
	res, err := s.db.ExecContext(ctx, `DELETE FROM llm_usage_logs WHERE rowid IN (
		SELECT rowid FROM llm_usage_logs WHERE created_at < ? ORDER BY created_at LIMIT ?)`, cutoff.UnixMicro(), batch)
	if err != nil {
		return 0, false, s.fail("delete rows past the retention", err)
	}
	n, _ := res.RowsAffected()
	return int(n), true, nil
}

// StepSummary has nothing to do: SQLite's trigger keeps the summary
// current.
func (s *sqliteStore) StepSummary(context.Context) (int, bool, error) { return 0, true, nil }

// query runs sql for readBreakdown; done releases the rows.
func (s *sqliteStore) query(ctx context.Context, sql string, args ...any) (rows rowScanner, done func(), err error) {
	r, err := s.db.QueryContext(ctx, sql, args...)
	if err != nil {
		return nil, nil, err
	}
	return r, func() { r.Close() }, nil
}

func (s *sqliteStore) Logs(ctx context.Context, q usage.LogQuery) (usage.LogPage, error) {
	var args []any
	arg := func(v any) string {
		args = append(args, v)
		return "?"
	}
	conds := logFilters(q, "", arg)
	if q.Before != "" {
		at, id, err := usage.DecodeCursor(q.Before)
		if err != nil {
			return usage.LogPage{}, err
		}
		n, err := strconv.ParseInt(id, 10, 64)
		if err != nil {
			return usage.LogPage{}, usage.ErrBadCursor
		}
		conds = append(conds, "(created_at, id) < (?, ?)")
		args = append(args, at.UnixMicro(), n)
	}
	query := `SELECT ` + logColumns("", "cost_nano_usd") + ` FROM llm_usage_logs`
	if len(conds) > 0 {
		query += " WHERE " + strings.Join(conds, " AND ")
	}
	query += " ORDER BY created_at DESC, id DESC LIMIT ?"
	args = append(args, q.Limit+1)
	rows, err := s.db.QueryContext(ctx, query, args...)
	if err != nil {
		return usage.LogPage{}, s.fail("read logs", err)
	}
	defer rows.Close()
	page, err := scanLogPage(rows, q.Limit, func(e *usage.LogEntry, id, createdAt int64, metadata sql.NullString) {
		e.ID, e.CreatedAt = strconv.FormatInt(id, 10), time.UnixMicro(createdAt).UTC()
		if metadata.Valid {
			e.Metadata = json.RawMessage(metadata.String)
		}
	})
	if err != nil {
		return usage.LogPage{}, s.fail("read logs", err)
	}
	return page, nil
}

func (s *sqliteStore) Ping(ctx context.Context) error {
	if err := s.db.PingContext(ctx); err != nil {
		return s.fail("reach the database", err)
	}
	return nil
}

func (s *sqliteStore) Close() error { return s.db.Close() }

// Migrate applies the embedded SQLite migrations.
func (s *sqliteStore) Migrate(ctx context.Context) ([]int64, error) {
	p, err := newGoose(s.db, goose.DialectSQLite3, "sqlite")
	if err != nil {
		return nil, err
	}
	return migrateUp(ctx, p)
}

// MigrationStatus lists the embedded SQLite migrations.
func (s *sqliteStore) MigrationStatus(ctx context.Context) ([]MigrationStatus, error) {
	p, err := newGoose(s.db, goose.DialectSQLite3, "sqlite")
	if err != nil {
		return nil, err
	}
	return migrationStatus(ctx, p)
}

func (s *sqliteStore) fail(what string, err error) error {
	return fmt.Errorf("cannot %s in %s: %w", what, s.path, err)
}
