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

	"github.com/llmusage/llmusage/limiter"
	"github.com/llmusage/llmusage/record"
)

// Store is what the rest of llmusage needs from a database.
type Store interface {
	// Insert persists records in one transaction; a record whose
	// request_id is already stored is skipped, so redelivery is harmless.
	// It returns how many rows were new.
	Insert(ctx context.Context, recs []record.Record) (int, error)
	// Rules reads the limit rules from llm_rate_limit_configs (for every
	// user) and llm_rate_limits (per user). Rows that are not valid rules
	// are returned in skipped rather than failing the whole read.
	Rules(ctx context.Context) (rules []limiter.Rule, skipped []error, err error)
	// WatchRules calls changed, soon after the rule tables change, until
	// ctx ends.
	WatchRules(ctx context.Context, changed func()) error
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

// ruleRow is a row of llm_rate_limit_configs or llm_rate_limits.
type ruleRow struct {
	table                   string
	id                      string
	userID, limitType, unit string
	provider, model         string
	limitValue              int64
}

// toRule validates a row as a limit rule.
func (r ruleRow) toRule() (limiter.Rule, error) {
	at := fmt.Sprintf("%s id %s", r.table, r.id)
	w, err := limiter.ParseWindow(r.limitType)
	if err != nil {
		return limiter.Rule{}, fmt.Errorf("cannot use %s: %w", at, err)
	}
	var unit limiter.Unit
	switch r.unit {
	case "requests", "":
		unit = limiter.Requests
	case "tokens":
		unit = limiter.Tokens
	default:
		return limiter.Rule{}, fmt.Errorf("cannot use %s: unit %q is neither requests nor tokens", at, r.unit)
	}
	rule := limiter.Rule{UserID: r.userID, Provider: strings.ToLower(strings.TrimSpace(r.provider)), Model: r.model,
		Window: w, Unit: unit, Limit: r.limitValue, Source: at}
	if err := rule.Validate(); err != nil {
		return limiter.Rule{}, fmt.Errorf("cannot use %s: %w", at, err)
	}
	return rule, nil
}

// rulesFromRows turns rows into rules. Rows read in id order, so when
// several rows share a scope (the seed inserted a new llm_rate_limits row
// for each change) the newest wins.
func rulesFromRows(rows []ruleRow) (rules []limiter.Rule, skipped []error) {
	type scope struct {
		user, provider, model string
		w                     limiter.Window
		u                     limiter.Unit
	}
	index := map[scope]int{}
	for _, row := range rows {
		r, err := row.toRule()
		if err != nil {
			skipped = append(skipped, err)
			continue
		}
		k := scope{r.UserID, r.Provider, r.Model, r.Window, r.Unit}
		if i, dup := index[k]; dup {
			rules[i] = r
			continue
		}
		index[k] = len(rules)
		rules = append(rules, r)
	}
	return rules, skipped
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
