package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"math/rand/v2"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"

	"github.com/llmusage/llmusage/record"
	"github.com/llmusage/llmusage/rules"
	"github.com/llmusage/llmusage/usage"
	"github.com/llmusage/llmusage/usd"
)

// notifyChannel is the channel the rule tables' trigger notifies.
const notifyChannel = "llmusage_limits"

type postgresStore struct {
	pool *pgxpool.Pool
	// redacted names the database in messages, without its password.
	redacted string
	// maxConns is the connection budget (Options.MaxConns): the pool's
	// size, the LISTEN connection included when it shares the pool.
	maxConns int
	// execMode is Options.ExecMode as pgx knows it; 0 for auto, which
	// detect settles.
	execMode pgx.QueryExecMode
	// listenURL is Options.ListenURL: a direct connection for LISTEN only.
	listenURL string
	// pollInterval is how often WatchRules reads the rule tables when it
	// cannot LISTEN.
	pollInterval time.Duration
	// connConfig is the pool's connection configuration, for detect's probe.
	connConfig *pgx.ConnConfig

	// detectMu serialises detect; pooled is its finding once detected.
	detectMu sync.Mutex
	detected bool
	pooled   bool

	// listening is 1 while a --database-listen-url connection is held.
	listening atomic.Int32

	idTypeOnce sync.Once
	// idType is llm_usage_logs.id's SQL type, for casting cursors: an
	// adopted legacy table may key rows by uuid rather than bigint.
	idType    string
	idTypeErr error
}

// incomingColumns are the columns of llm_usage_logs a record fills, in
// the order recordRows gives them: COPY straight into the table is the
// fastest path into Postgres, but aborts on the first duplicate
// request_id, so such a batch is copied into a temporary table and moved
// with INSERT ... ON CONFLICT DO NOTHING.
var incomingColumns = []string{
	"request_id", "user_id", "provider", "model", "tokens_used", "prompt_tokens", "completion_tokens",
	"cached_tokens", "reasoning_tokens", "latency_ms", "status", "error_type", "metadata", "created_at", "cost_usd",
	"cache_write_tokens", "team_id",
}

// createIncoming makes the temporary table of one transaction: dropped at
// its commit or rollback, so that nothing outlives the transaction and a
// transaction pooler (PgBouncer's pool_mode = transaction) may hand the
// server connection to another client right after.
const createIncoming = `CREATE TEMPORARY TABLE llmusage_incoming (
	request_id text, user_id text, provider text, model text, tokens_used bigint, prompt_tokens bigint,
	completion_tokens bigint, cached_tokens bigint, reasoning_tokens bigint, latency_ms double precision,
	status text, error_type text, metadata jsonb, created_at timestamptz, cost_usd numeric(20,9),
	cache_write_tokens bigint, team_id text) ON COMMIT DROP`

// Defaults of Options' Postgres settings.
const (
	// DefaultMaxConns is --database-max-conns: one connection for the
	// writer and the reads, one for LISTEN. A pod's sidecar writes a
	// batch a second at most, and 200 pods must fit a Postgres whose
	// max_connections is 100 or so, behind a pooler if need be.
	DefaultMaxConns = 2
	// DefaultPollInterval is how often the rule tables are read where
	// LISTEN is not available: changes arrive within about a second.
	DefaultPollInterval = time.Second
)

// execModes are the values of --database-exec-mode, pgx's names.
var execModes = map[string]pgx.QueryExecMode{
	"cache_statement": pgx.QueryExecModeCacheStatement,
	"cache_describe":  pgx.QueryExecModeCacheDescribe,
	"describe_exec":   pgx.QueryExecModeDescribeExec,
	"exec":            pgx.QueryExecModeExec,
	"simple_protocol": pgx.QueryExecModeSimpleProtocol,
}

// ParseExecMode checks a --database-exec-mode value: auto (or empty) or
// one of pgx's query exec modes.
func ParseExecMode(mode string) error {
	if _, ok := execModes[mode]; ok || mode == "" || mode == "auto" {
		return nil
	}
	return fmt.Errorf("cannot use --database-exec-mode %q: want auto, cache_statement, cache_describe, describe_exec, exec or simple_protocol", mode)
}

func openPostgres(ctx context.Context, opts Options) (*postgresStore, error) {
	dsn := opts.DatabaseURL
	redacted := Redact(dsn)
	if err := ParseExecMode(opts.ExecMode); err != nil {
		return nil, err
	}
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		// pgx's parse errors may quote the URL; never pass them on.
		return nil, fmt.Errorf("cannot parse --database-url %s: check its syntax", redacted)
	}
	if opts.ListenURL != "" {
		if _, err := pgx.ParseConfig(opts.ListenURL); err != nil {
			return nil, fmt.Errorf("cannot parse --database-listen-url %s: check its syntax", Redact(opts.ListenURL))
		}
	}
	s := &postgresStore{redacted: redacted, maxConns: opts.MaxConns, execMode: execModes[opts.ExecMode],
		listenURL: opts.ListenURL, pollInterval: opts.PollInterval}
	if s.maxConns <= 0 {
		s.maxConns = DefaultMaxConns
	}
	if s.pollInterval <= 0 {
		s.pollInterval = DefaultPollInterval
	}
	// pgx's own parameter in the URL says how to send statements, as for
	// any pgx program; auto respects it.
	if u, err := url.Parse(dsn); err == nil && s.execMode == 0 && u.Query().Has("default_query_exec_mode") {
		s.execMode = cfg.ConnConfig.DefaultQueryExecMode
	}
	cfg.MaxConns = int32(s.maxConns)
	// Idle connections are closed after a while (pgxpool's default is
	// 30 min); a sidecar writes at least every --flush-interval, so it
	// keeps the one it uses, and gives back what a burst of reads opened.
	cfg.MaxConnIdleTime = time.Minute
	s.connConfig = cfg.ConnConfig.Copy()
	cfg.BeforeConnect = func(ctx context.Context, cc *pgx.ConnConfig) error {
		mode := s.execMode
		if mode == 0 {
			pooled, err := s.detect(ctx)
			if err != nil {
				return err
			}
			mode = pgx.QueryExecModeCacheStatement
			if pooled {
				mode = pgx.QueryExecModeCacheDescribe
			}
		}
		cc.DefaultQueryExecMode = mode
		return nil
	}
	if s.pool, err = pgxpool.NewWithConfig(ctx, cfg); err != nil {
		return nil, fmt.Errorf("cannot connect to %s: %s", redacted, scrub(err, dsn))
	}
	return s, nil
}

// detect tells whether --database-url goes through a pooler, once: the
// process ID a server gives at connection (for cancel requests) is that
// of the backend serving it, which a pooler that shares backends between
// clients cannot give, so it makes up its own (PgBouncer, Supavisor,
// Odyssey, RDS Proxy). A pooler that does give the backend's pins the
// client to it, and server-side state works. The probe is a connection of
// its own, before any of the pool's: a moment, and within the budget.
func (s *postgresStore) detect(ctx context.Context) (pooled bool, err error) {
	s.detectMu.Lock()
	defer s.detectMu.Unlock()
	if s.detected {
		return s.pooled, nil
	}
	conn, err := pgconn.ConnectConfig(ctx, s.connConfig.Config.Copy())
	if err != nil {
		return false, err
	}
	defer conn.Close(context.Background())
	res, err := conn.Exec(ctx, "SELECT pg_backend_pid()").ReadAll()
	if err != nil {
		return false, err
	}
	if len(res) != 1 || len(res[0].Rows) != 1 {
		return false, errors.New("cannot read pg_backend_pid()")
	}
	pid, err := strconv.ParseUint(string(res[0].Rows[0][0]), 10, 32)
	if err != nil {
		return false, fmt.Errorf("cannot read pg_backend_pid(): %w", err)
	}
	s.detected, s.pooled = true, uint32(pid) != conn.PID()
	return s.pooled, nil
}

// ConnStats are a store's connections to its database, by state.
type ConnStats struct {
	// Idle connections wait in the pool, Acquired ones run a query or
	// hold the LISTEN, Constructing ones are being opened.
	Idle, Acquired, Constructing int
	// Listening is 1 while the --database-listen-url connection is held
	// (it is not in the pool).
	Listening int
	// Max is the pool's bound, --database-max-conns.
	Max int
}

// Connections reads the pool's state, for llmusage_store_connections.
func (s *postgresStore) Connections() ConnStats {
	st := s.pool.Stat()
	return ConnStats{Idle: int(st.IdleConns()), Acquired: int(st.AcquiredConns()), Constructing: int(st.ConstructingConns()),
		Listening: int(s.listening.Load()), Max: int(st.MaxConns())}
}

func (s *postgresStore) Insert(ctx context.Context, recs []record.Record) (int, error) {
	if len(recs) == 0 {
		return 0, nil
	}
	// The fast path, a COPY straight into the table, is what Postgres
	// does fastest; it fails whole on a request_id already stored (a
	// replay after a crash, a client's redelivery), and such a batch is
	// written again through the temporary table, skipping what is there.
	n, err := s.pool.CopyFrom(ctx, pgx.Identifier{"llm_usage_logs"}, incomingColumns, recordRows(recs))
	if err == nil {
		return int(n), nil
	}
	if pgErr := (*pgconn.PgError)(nil); !errors.As(err, &pgErr) || pgErr.Code != uniqueViolation {
		return 0, rejected(s.fail("copy records", err))
	}
	return s.insertSkippingStored(ctx, recs)
}

// rejected marks err with ErrRejected when Postgres refused a record's
// own values: a data exception (SQLSTATE class 22: a value a column's
// type cannot hold), a foreign key the record's user_id does not meet
// (23503, on adopted legacy tables) or a program limit (54, such as a row
// too large). Any other error may pass once the database or its schema is
// mended, so the batch is retried: a lost connection, a missing table, a
// read-only server, and the other integrity violations (a NOT NULL or
// CHECK constraint added by hand fails every record alike, and must not
// send them all to the dead letter).
func rejected(err error) error {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return err
	}
	switch class := pgErr.Code[:2]; {
	case class == "22", class == "54", pgErr.Code == foreignKeyViolation:
		return fmt.Errorf("%w: %w", ErrRejected, err)
	}
	return err
}

// insertSkippingStored copies recs into a temporary table of the
// transaction and moves them with ON CONFLICT (request_id) DO NOTHING.
func (s *postgresStore) insertSkippingStored(ctx context.Context, recs []record.Record) (int, error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return 0, s.fail("begin a transaction", err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // a no-op after Commit
	if _, err := tx.Exec(ctx, createIncoming); err != nil {
		return 0, s.fail("create a temporary table", err)
	}
	if _, err := tx.CopyFrom(ctx, pgx.Identifier{"llmusage_incoming"}, incomingColumns, recordRows(recs)); err != nil {
		return 0, rejected(s.fail("copy records", err))
	}
	cols := strings.Join(incomingColumns, ", ")
	tag, err := tx.Exec(ctx, "INSERT INTO llm_usage_logs ("+cols+") SELECT "+cols+" FROM llmusage_incoming ON CONFLICT (request_id) DO NOTHING")
	if err != nil {
		return 0, rejected(s.fail("insert records", err))
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, s.fail("commit records", err)
	}
	return int(tag.RowsAffected()), nil
}

// recordRows feeds recs to COPY in the order of incomingColumns.
func recordRows(recs []record.Record) pgx.CopyFromSource {
	return pgx.CopyFromSlice(len(recs), func(i int) ([]any, error) {
		r := &recs[i]
		var latency any
		if r.HasLatency {
			latency = float64(r.Latency) / float64(time.Millisecond)
		}
		var metadata any
		if r.Metadata != nil {
			metadata = r.Metadata
		}
		return []any{r.RequestID, r.UserID, r.Provider, r.Model, r.TotalTokens, r.PromptTokens, r.CompletionTokens,
			r.CachedTokens, r.ReasoningTokens, latency, r.Status, nullString(r.ErrorType), metadata, r.Timestamp, costNumeric(r),
			r.CacheWriteTokens, nullString(r.TeamID)}, nil
	})
}

// postgresSpent writes Spent's query (see spendDialect.spendQuery).
// user_id is compared as text, as by the logs: an adopted table may still
// key users by uuid, and on a text column the cast costs nothing.
func postgresSpent(q usage.SpendQuery) (string, []any) {
	return postgresSpend.spendQuery(q, false, time.Now())
}

// costNumeric is a record's cost_usd: its nano-dollars as a numeric of
// scale 9, exact (a float would not be), or NULL when unpriced.
func costNumeric(r *record.Record) any {
	if !r.HasCost {
		return nil
	}
	return pgtype.Numeric{Int: big.NewInt(int64(r.Cost)), Exp: -usd.Scale, Valid: true}
}

// nanoUSD reads a numeric of dollars (cost_usd, or a sum of it) as
// nano-dollars, for usd.Amount: exact, and a sum beyond int64 is an
// error ("bigint out of range") rather than a wrong number.
func nanoUSD(expr string) string {
	return `(` + expr + ` * 1000000000)::bigint`
}

func (s *postgresStore) RuleRows(ctx context.Context) ([]rules.Row, error) {
	return readRuleRows(ctx, s.query, s.fail, "::text")
}

func (s *postgresStore) PriceRows(ctx context.Context) ([]rules.PriceRow, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+priceColumns("::text")+`, effective_from FROM `+rules.PricesTable+` ORDER BY `+rules.PricesTable+`.id`)
	if err != nil {
		return nil, s.fail("read "+rules.PricesTable, err)
	}
	defer rows.Close()
	out, err := scanPriceRows(rows, func(at *time.Time) (*time.Time, error) {
		if at != nil {
			u := at.UTC()
			at = &u
		}
		return at, nil
	})
	if err != nil {
		return nil, s.fail("read "+rules.PricesTable, err)
	}
	return out, nil
}

// Spent answers a user's spend from idx_llm_usage_user_created alone (an
// index-only scan: provider, model, cost_usd and team_id are INCLUDEd),
// and a pool's from the daily summary and idx_llm_usage_created_at.
func (s *postgresStore) Spent(ctx context.Context, q usage.SpendQuery) (usd.Amount, error) {
	sql, args := postgresSpent(q)
	var spent usd.Amount
	if err := s.pool.QueryRow(ctx, sql, args...).Scan(&spent); err != nil {
		return 0, s.fail("sum the spend of "+spender(q), err)
	}
	return spent, nil
}

// SpentByModel implements Store, from the same indexes.
func (s *postgresStore) SpentByModel(ctx context.Context, q usage.SpendQuery) ([]usage.ModelSpend, error) {
	sql, args := postgresSpend.spendQuery(q, true, time.Now())
	return readModelSpend(ctx, s.query, s.fail, spender(q), sql, args)
}

// DeleteBefore deletes by ctid, found through idx_llm_usage_created_at
// (covering since 00008): it works whatever the type of an adopted
// table's id. A lock timeout
// keeps a row locked by hand from holding the batch.
func (s *postgresStore) DeleteBefore(ctx context.Context, cutoff time.Time, batch int) (deleted int, held bool, err error) {
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, `SELECT pg_try_advisory_xact_lock($1)`, retentionLockKey).Scan(&held); err != nil || !held {
			return err
		}
		if _, err := tx.Exec(ctx, `SET LOCAL lock_timeout = '1s'`); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `DELETE FROM llm_usage_logs WHERE ctid = ANY (ARRAY(
			SELECT ctid FROM llm_usage_logs WHERE created_at < $1 ORDER BY created_at LIMIT $2))`, cutoff, batch)
		deleted = int(tag.RowsAffected())
		return err
	})
	if err != nil {
		return 0, false, s.fail("delete rows past the retention", err)
	}
	return deleted, held, nil
}

// StepSummary calls refresh_llm_usage_summary() under a lock it only
// tries: a sidecar finding it taken leaves the step to the holder.
func (s *postgresStore) StepSummary(ctx context.Context) (written int, held bool, err error) {
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, `SELECT pg_try_advisory_xact_lock($1)`, summaryLockKey).Scan(&held); err != nil || !held {
			return err
		}
		var n int64
		err := tx.QueryRow(ctx, `SELECT refresh_llm_usage_summary()`).Scan(&n)
		written = int(n)
		return err
	})
	if err != nil {
		return 0, false, s.fail("step llm_usage_daily_summary", err)
	}
	return written, held, nil
}

// WatchRules calls changed when the rule tables or llm_model_prices
// change: their triggers NOTIFY, and WatchRules LISTENs on a connection of
// the pool's (one of the budget's), or of --database-listen-url when it is
// set. Where LISTEN cannot work, through a transaction pooler (which hands
// the server connection to other clients between transactions) or with a
// budget of one connection (the writer's), it reads the tables every
// pollInterval instead and compares.
func (s *postgresStore) WatchRules(ctx context.Context, changed func()) error {
	if s.listenURL == "" {
		pooled, err := s.detectRetrying(ctx)
		if err != nil {
			return nil // ctx ended
		}
		if pooled || s.maxConns < 2 {
			return s.poll(ctx, changed)
		}
	}
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := s.listen(ctx, changed)
		if ctx.Err() != nil {
			break
		}
		_ = err // the caller learns of outages through Ping
		select {
		case <-ctx.Done():
		case <-time.After(jittered(backoff)):
		}
		backoff = min(2*backoff, 5*time.Second)
		// Notifications sent while disconnected are lost.
		changed()
	}
	return nil
}

// detectRetrying waits for detect to succeed (the database may be down
// at start), or ctx to end.
func (s *postgresStore) detectRetrying(ctx context.Context) (bool, error) {
	backoff := 100 * time.Millisecond
	for {
		pooled, err := s.detect(ctx)
		if err == nil {
			return pooled, nil
		}
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-time.After(jittered(backoff)):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// jittered is a reconnection's wait: between half of backoff and all of
// it, at random, so that the sidecars of a fleet, which lost Postgres at
// the same instant, do not come back at the same instant too.
func jittered(backoff time.Duration) time.Duration {
	return RetryWait(backoff, 0, rand.Float64())
}

// poll reads the rule and price rows every pollInterval and calls
// changed when they differ from the last read: three small queries.
func (s *postgresStore) poll(ctx context.Context, changed func()) error {
	return pollRules(ctx, s.pollInterval, s, nil, changed)
}

// listen LISTENs until the connection fails or ctx ends.
func (s *postgresStore) listen(ctx context.Context, changed func()) error {
	var c *pgx.Conn
	if s.listenURL != "" {
		cfg, err := pgx.ParseConfig(s.listenURL)
		if err != nil {
			return err
		}
		if c, err = pgx.ConnectConfig(ctx, cfg); err != nil {
			return err
		}
		defer c.Close(context.Background())
		s.listening.Store(1)
		defer s.listening.Store(0)
	} else {
		// Held, it stays one of the pool's connections, so that the
		// budget bounds it; it never goes back to the pool with its
		// LISTEN: on the way out it is closed, which frees its place.
		conn, err := s.pool.Acquire(ctx)
		if err != nil {
			return err
		}
		defer func() { conn.Hijack().Close(context.Background()) }()
		c = conn.Conn()
	}
	if _, err := c.Exec(ctx, "LISTEN "+notifyChannel); err != nil {
		return err
	}
	for {
		if _, err := c.WaitForNotification(ctx); err != nil {
			return err
		}
		changed()
	}
}

// Usage adds up the whole days before today from the summary and the
// totals still pending for it, and today (and anything later) from the
// raw rows: the cost grows with the days and groups asked for, not with
// the rows, and days whose rows retention deleted are still counted.
func (s *postgresStore) Usage(ctx context.Context, q usage.Query) (usage.Breakdown, error) {
	span := wholeDays(q.Since, time.Now())
	args := []any{span.first.Format(time.DateOnly), span.today.Format(time.DateOnly), q.Since, span.first, span.today}
	users, logUser := "", ""
	if q.UserID != "" {
		// Two parameters: an adopted table may key llm_usage_logs by uuid,
		// the summary by text, and one parameter has one type.
		args = append(args, q.UserID, q.UserID)
		users, logUser = fmt.Sprintf(" AND user_id = $%d", len(args)-1), fmt.Sprintf(" AND user_id = $%d", len(args))
	}
	if q.TeamID != "" {
		args = append(args, q.TeamID)
		team := fmt.Sprintf(" AND team_id = $%d", len(args))
		users, logUser = users+team, logUser+team
	}
	sql := `SELECT to_char(day, 'YYYY-MM-DD'), model, provider, team_id, sum(calls)::bigint, sum(errors)::bigint,
		sum(tokens_used)::bigint, sum(prompt_tokens)::bigint, sum(completion_tokens)::bigint,
		` + nanoUSD(`coalesce(sum(cost_usd), 0)`) + `, sum(unpriced_calls)::bigint
	FROM (
		SELECT day, model, provider, team_id, calls, errors, tokens_used, prompt_tokens, completion_tokens, cost_usd, unpriced_calls
		FROM llm_usage_daily_summary WHERE day >= $1::date AND day < $2::date` + users + `
		UNION ALL
		SELECT day, model, provider, team_id, calls, errors, tokens_used, prompt_tokens, completion_tokens, cost_usd, unpriced_calls
		FROM llm_usage_summary_pending WHERE day >= $1::date AND day < $2::date` + users + `
		UNION ALL
		SELECT (created_at AT TIME ZONE 'UTC')::date, model, provider, coalesce(team_id, ''), count(*), count(*) FILTER (WHERE status = 'error'),
			coalesce(sum(tokens_used), 0), coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0),
			sum(cost_usd), count(*) FILTER (WHERE cost_usd IS NULL)
		FROM llm_usage_logs WHERE created_at >= $3 AND (created_at < $4 OR created_at >= $5)` + logUser + `
		GROUP BY 1, 2, 3, 4
	) parts
	GROUP BY day, model, provider, team_id
	ORDER BY day, model, provider, team_id`
	return readBreakdown(ctx, s.query, s.fail, sql, args)
}

// query runs sql for readBreakdown; done releases the rows.
func (s *postgresStore) query(ctx context.Context, sql string, args ...any) (rows rowScanner, done func(), err error) {
	r, err := s.pool.Query(ctx, sql, args...)
	if err != nil {
		return nil, nil, err
	}
	return r, r.Close, nil
}

func (s *postgresStore) Logs(ctx context.Context, q usage.LogQuery) (usage.LogPage, error) {
	s.idTypeOnce.Do(func() {
		s.idTypeErr = s.pool.QueryRow(ctx, `SELECT format_type(atttypid, atttypmod) FROM pg_attribute
			WHERE attrelid = 'llm_usage_logs'::regclass AND attname = 'id'`).Scan(&s.idType)
	})
	if s.idTypeErr != nil {
		return usage.LogPage{}, s.fail("read the type of llm_usage_logs.id", s.idTypeErr)
	}
	var args []any
	arg := func(v any) string {
		args = append(args, v)
		return fmt.Sprintf("$%d", len(args))
	}
	conds := logFilters(q, "::text", arg)
	if q.Before != "" {
		at, id, err := usage.DecodeCursor(q.Before)
		if err != nil {
			return usage.LogPage{}, err
		}
		conds = append(conds, fmt.Sprintf("(created_at, id) < (%s, %s::text::%s)", arg(at), arg(id), s.idType))
	}
	sql := `SELECT ` + logColumns("::text", nanoUSD("cost_usd")) + ` FROM llm_usage_logs`
	if len(conds) > 0 {
		sql += " WHERE " + strings.Join(conds, " AND ")
	}
	// Qualified: a bare "id" would name the id::text output column and sort as text.
	sql += " ORDER BY llm_usage_logs.created_at DESC, llm_usage_logs.id DESC LIMIT " + arg(q.Limit+1)
	rows, err := s.pool.Query(ctx, sql, args...)
	if err != nil {
		return usage.LogPage{}, s.fail("read logs", err)
	}
	defer rows.Close()
	page, err := scanLogPage(rows, q.Limit, func(e *usage.LogEntry, id string, at time.Time, metadata []byte) {
		e.ID, e.CreatedAt = id, at.UTC()
		if metadata != nil {
			e.Metadata = json.RawMessage(metadata)
		}
	})
	if err != nil {
		return usage.LogPage{}, s.fail("read logs", err)
	}
	return page, nil
}

func (s *postgresStore) Ping(ctx context.Context) error {
	if err := s.pool.Ping(ctx); err != nil {
		return s.fail("reach the database", err)
	}
	return nil
}

func (s *postgresStore) Close() error {
	s.pool.Close()
	return nil
}

// Migrate applies the embedded Postgres migrations. Sidecars of a fleet
// start together, each migrating by default: with migrations pending,
// they take turns under goose's lock (a row of goose_lock, not a session
// lock, so that it holds through a transaction pooler too), and each
// applies what the one before left. With none pending, as at every start
// but the first of a release, none waits.
func (s *postgresStore) Migrate(ctx context.Context) ([]int64, error) {
	p, closeDB, err := s.goose()
	if err != nil {
		return nil, err
	}
	defer closeDB()
	if pending, err := p.HasPending(ctx); err == nil && !pending {
		return nil, nil
	}
	locker, err := lock.NewPostgresTableLocker(
		// A lease outlives a migration that starves the heartbeat of a
		// connection (--database-max-conns 1), and turns come quickly.
		lock.WithTableLeaseDuration(2*time.Minute), lock.WithTableLockTimeout(250*time.Millisecond, 2400))
	if err != nil {
		return nil, fmt.Errorf("cannot lock the migrations: %w", err)
	}
	db := stdlib.OpenDBFromPool(s.pool)
	defer db.Close()
	locked, err := newGoose(db, goose.DialectPostgres, "postgres", goose.WithLocker(locker))
	if err != nil {
		return nil, err
	}
	applied, err := migrateUp(ctx, locked)
	if err != nil {
		return applied, fmt.Errorf("%s: %w", s.redacted, err)
	}
	return applied, nil
}

// MigrationStatus lists the embedded Postgres migrations.
func (s *postgresStore) MigrationStatus(ctx context.Context) ([]MigrationStatus, error) {
	p, closeDB, err := s.goose()
	if err != nil {
		return nil, err
	}
	defer closeDB()
	return migrationStatus(ctx, p)
}

func (s *postgresStore) goose() (*goose.Provider, func(), error) {
	db := stdlib.OpenDBFromPool(s.pool)
	p, err := newGoose(db, goose.DialectPostgres, "postgres")
	if err != nil {
		db.Close()
		return nil, nil, err
	}
	return p, func() { db.Close() }, nil
}

// fail wraps a database error as "cannot <what> in <database>: ...".
func (s *postgresStore) fail(what string, err error) error {
	return fmt.Errorf("cannot %s in %s: %w", what, s.redacted, err)
}

// scrub removes the connection string from an error message, should a
// driver have quoted it.
func scrub(err error, dsn string) string {
	msg := err.Error()
	if dsn != "" {
		msg = strings.ReplaceAll(msg, dsn, Redact(dsn))
	}
	return msg
}

func nullString(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// Postgres' SQLSTATEs for a duplicate key and a missing referenced row.
const (
	uniqueViolation     = "23505"
	foreignKeyViolation = "23503"
)
