// Package store persists call records and reads limit rules and usage
// back, in Postgres (production) or an embedded SQLite file (the default,
// so that llmusage runs with no database server at all). Both keep the
// seed's tables: llm_usage_logs, llm_rate_limit_configs, llm_rate_limits
// and llm_usage_daily_summary.
package store

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"strings"
	"time"

	"github.com/llmusage/llmusage/record"
	"github.com/llmusage/llmusage/rules"
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
	Usage(ctx context.Context, q UsageQuery) (Usage, error)
	// Logs returns a page of records, newest first.
	Logs(ctx context.Context, q LogQuery) (LogPage, error)
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

// Redact returns a database URL fit for logs and error messages: the
// password is replaced, whatever the URL's shape.
func Redact(databaseURL string) string {
	u, err := url.Parse(databaseURL)
	if err != nil {
		return "(unparsable database URL)"
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

// UsageQuery selects the records the usage API sums up.
type UsageQuery struct {
	// UserID restricts to one user; empty means every user.
	UserID string
	// Since is the first instant counted.
	Since time.Time
}

// Totals sums a set of records.
type Totals struct {
	Calls            int64 `json:"calls"`
	Errors           int64 `json:"errors"`
	Tokens           int64 `json:"tokens"`
	PromptTokens     int64 `json:"prompt_tokens"`
	CompletionTokens int64 `json:"completion_tokens"`
}

// ModelTotals are the totals of one model, with its provider.
type ModelTotals struct {
	Totals
	// Provider is the model's provider (the most frequent, should a model
	// have been recorded under several).
	Provider string `json:"provider"`
	// providerCalls counts Provider's calls, to pick the most frequent.
	providerCalls int64
}

// DayTotals are the totals of one UTC day.
type DayTotals struct {
	// Day is YYYY-MM-DD, UTC.
	Day string `json:"day"`
	Totals
}

// Usage is the breakdown the usage API reports.
type Usage struct {
	Totals
	ByModel    map[string]ModelTotals `json:"by_model"`
	ByProvider map[string]Totals      `json:"by_provider"`
	// ByDay is oldest first, days without calls omitted.
	ByDay []DayTotals `json:"by_day"`
}

// LogQuery selects a page of records.
type LogQuery struct {
	// UserID, Model and Provider filter when not empty.
	UserID, Model, Provider string
	// Limit is the page size.
	Limit int
	// Before is the NextCursor of the previous page, or empty for the newest.
	Before string
}

// LogEntry is one stored record.
type LogEntry struct {
	ID               string          `json:"id"`
	RequestID        string          `json:"request_id"`
	UserID           string          `json:"user_id"`
	Provider         string          `json:"provider"`
	Model            string          `json:"model"`
	TokensUsed       int64           `json:"tokens_used"`
	PromptTokens     int64           `json:"prompt_tokens"`
	CompletionTokens int64           `json:"completion_tokens"`
	CachedTokens     int64           `json:"cached_tokens"`
	ReasoningTokens  int64           `json:"reasoning_tokens"`
	LatencyMs        *float64        `json:"latency_ms"`
	Status           string          `json:"status"`
	ErrorType        string          `json:"error_type,omitempty"`
	Metadata         json.RawMessage `json:"metadata,omitempty"`
	CreatedAt        time.Time       `json:"created_at"`
}

// LogPage is one page of records.
type LogPage struct {
	Logs []LogEntry `json:"logs"`
	// NextCursor fetches the next (older) page; empty on the last page.
	NextCursor string `json:"next_cursor"`
}

// ErrBadCursor is returned for a cursor that no page handed out.
var ErrBadCursor = errors.New("cannot use the cursor: it was not returned by /api/llm/usage/logs")

// ruleTable is how a store reads one rule table.
type ruleTable struct {
	// name is rules.ConfigsTable or rules.UserLimitsTable.
	name string
	// sql selects the rows in id order, as the columns scanRuleRows reads.
	sql string
}

// ruleTables returns the queries of both rule tables; text casts id and
// user_id to text where the database needs it (a legacy table may key
// them by uuid).
func ruleTables(text string) []ruleTable {
	const cols = `limit_type, coalesce(unit, 'requests'), coalesce(provider, ''), coalesce(model, ''), limit_value`
	return []ruleTable{
		{rules.ConfigsTable, `SELECT id` + text + `, '', ` + cols + `, seeded FROM ` + rules.ConfigsTable + ` ORDER BY id`},
		{rules.UserLimitsTable, `SELECT id` + text + `, user_id` + text + `, ` + cols + `, false FROM ` + rules.UserLimitsTable + ` ORDER BY id`},
	}
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

// readModelGroups folds rows of (model, provider, totals...) into u.
func readModelGroups(rows rowScanner, u *Usage) error {
	for rows.Next() {
		var model, provider string
		var t Totals
		if err := rows.Scan(&model, &provider, &t.Calls, &t.Errors, &t.Tokens, &t.PromptTokens, &t.CompletionTokens); err != nil {
			return err
		}
		u.add(model, provider, t)
	}
	return rows.Err()
}

// readDays appends rows of (day, totals...) to u.ByDay.
func readDays(rows rowScanner, u *Usage) error {
	for rows.Next() {
		var d DayTotals
		if err := rows.Scan(&d.Day, &d.Calls, &d.Errors, &d.Tokens, &d.PromptTokens, &d.CompletionTokens); err != nil {
			return err
		}
		u.ByDay = append(u.ByDay, d)
	}
	return rows.Err()
}

// encodeCursor and decodeCursor carry a page boundary: the last row's
// created_at and id.
func encodeCursor(at time.Time, id string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(at.UTC().Format(time.RFC3339Nano) + "|" + id))
}

func decodeCursor(c string) (time.Time, string, error) {
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil {
		return time.Time{}, "", ErrBadCursor
	}
	ts, id, ok := strings.Cut(string(b), "|")
	at, err := time.Parse(time.RFC3339Nano, ts)
	if !ok || err != nil || id == "" {
		return time.Time{}, "", ErrBadCursor
	}
	return at, id, nil
}

// trim cuts a page fetched with one row too many and sets NextCursor when
// that extra row shows there is more.
func (p LogPage) trim(limit int) LogPage {
	if len(p.Logs) > limit {
		p.Logs = p.Logs[:limit]
		last := p.Logs[limit-1]
		p.NextCursor = encodeCursor(last.CreatedAt, last.ID)
	}
	return p
}

func newUsage() Usage {
	return Usage{ByModel: map[string]ModelTotals{}, ByProvider: map[string]Totals{}, ByDay: []DayTotals{}}
}

// add folds one (model, provider) group into the breakdowns.
func (u *Usage) add(model, provider string, t Totals) {
	u.Totals.add(t)
	m := u.ByModel[model]
	// The provider with the most calls names the model.
	if m.Provider == "" || t.Calls > m.providerCalls {
		m.Provider, m.providerCalls = provider, t.Calls
	}
	m.Totals.add(t)
	u.ByModel[model] = m
	p := u.ByProvider[provider]
	p.add(t)
	u.ByProvider[provider] = p
}

func (t *Totals) add(o Totals) {
	t.Calls += o.Calls
	t.Errors += o.Errors
	t.Tokens += o.Tokens
	t.PromptTokens += o.PromptTokens
	t.CompletionTokens += o.CompletionTokens
}
