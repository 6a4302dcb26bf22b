-- +goose NO TRANSACTION
-- Teams (issue #22): each record's optional team_id, the daily summary
-- keyed by team too, the indexes that sum a pool's spend (every user's,
-- or one team's) without reading every row, and the team_id and per
-- columns of the rule tables. Like 00002 and 00005 it completes a
-- database adopted from the Groq era (00001) as well: every statement is
-- IF NOT EXISTS or CREATE OR REPLACE.
--
-- As in 00007, the migration runs outside a transaction, each statement
-- holding one table's lock, in an order in which the functions in force
-- work after each step; the indexes of llm_usage_logs are built
-- CONCURRENTLY, so that inserts go on while a large table is indexed.
-- Every statement may run again, so a migration cut short is completed by
-- the next run. (A CONCURRENTLY build that failed leaves an INVALID
-- index; drop it and run migrate again.)
--
-- In the summary tables a call without a team has team_id '' (NOT NULL):
-- the key must compare equal for ON CONFLICT, which NULLs do not; the raw
-- rows keep NULL.

-- +goose Up
-- The functions in force keep working with these columns: the trigger's
-- INSERT fills the columns it lists, the new last one takes its default,
-- and the step moves the columns it names into the summary, whose new
-- last column takes its default too.
ALTER TABLE llm_usage_summary_pending ADD COLUMN IF NOT EXISTS team_id TEXT NOT NULL DEFAULT '';
ALTER TABLE llm_usage_daily_summary ADD COLUMN IF NOT EXISTS team_id TEXT NOT NULL DEFAULT '';

-- The summary's key gains team_id, and the step its grouping, in one
-- statement holding the summary's lock alone (replacing a function locks
-- no table): no step runs with a key its ON CONFLICT does not name.
-- +goose StatementBegin
DO $do$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_index WHERE indexrelid = to_regclass('idx_llm_usage_daily_summary_key') AND indnatts = 5) THEN
        DROP INDEX IF EXISTS idx_llm_usage_daily_summary_key;
        CREATE UNIQUE INDEX idx_llm_usage_daily_summary_key ON llm_usage_daily_summary (day, user_id, provider, model, team_id);
    END IF;
    -- One team's days, for the usage API's ?team_id=.
    CREATE INDEX IF NOT EXISTS idx_llm_usage_daily_summary_team ON llm_usage_daily_summary (team_id, day);

    -- 00007's step, grouping and keying by team_id too; the column lists
    -- are named, whatever order the columns were added in.
    CREATE OR REPLACE FUNCTION refresh_llm_usage_summary() RETURNS bigint
    LANGUAGE plpgsql AS $$
    DECLARE
        written bigint;
    BEGIN
        PERFORM pg_advisory_xact_lock(7812739804795332353);
        WITH moved AS (
            DELETE FROM llm_usage_summary_pending RETURNING *
        ), grouped AS (
            SELECT day, user_id, provider, model, team_id,
                   sum(calls)::bigint AS calls, sum(errors)::bigint AS errors,
                   sum(tokens_used)::bigint AS tokens_used, sum(prompt_tokens)::bigint AS prompt_tokens,
                   sum(completion_tokens)::bigint AS completion_tokens, sum(cached_tokens)::bigint AS cached_tokens,
                   sum(reasoning_tokens)::bigint AS reasoning_tokens, sum(cost_usd) AS cost_usd,
                   sum(unpriced_calls)::bigint AS unpriced_calls, sum(cache_write_tokens)::bigint AS cache_write_tokens
            FROM moved
            GROUP BY day, user_id, provider, model, team_id
        )
        INSERT INTO llm_usage_daily_summary AS s (day, user_id, provider, model, team_id, calls, errors, tokens_used,
            prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens, cost_usd, unpriced_calls, cache_write_tokens)
        SELECT * FROM grouped ORDER BY day, user_id, provider, model, team_id
        ON CONFLICT (day, user_id, provider, model, team_id) DO UPDATE SET
            calls              = s.calls + excluded.calls,
            errors             = s.errors + excluded.errors,
            tokens_used        = s.tokens_used + excluded.tokens_used,
            prompt_tokens      = s.prompt_tokens + excluded.prompt_tokens,
            completion_tokens  = s.completion_tokens + excluded.completion_tokens,
            cached_tokens      = s.cached_tokens + excluded.cached_tokens,
            reasoning_tokens   = s.reasoning_tokens + excluded.reasoning_tokens,
            cost_usd           = CASE WHEN s.cost_usd IS NULL AND excluded.cost_usd IS NULL THEN NULL
                                      ELSE coalesce(s.cost_usd, 0) + coalesce(excluded.cost_usd, 0) END,
            unpriced_calls     = s.unpriced_calls + excluded.unpriced_calls,
            cache_write_tokens = s.cache_write_tokens + excluded.cache_write_tokens;
        GET DIAGNOSTICS written = ROW_COUNT;
        RETURN written;
    END
    $$;
END
$do$;
-- +goose StatementEnd

-- The column and the trigger function that sums it by team, in one
-- statement, as in 00007.
-- +goose StatementBegin
DO $do$
BEGIN
    ALTER TABLE llm_usage_logs ADD COLUMN IF NOT EXISTS team_id TEXT;
    CREATE OR REPLACE FUNCTION llmusage_summary_collect() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO llm_usage_summary_pending (day, user_id, provider, model, team_id, calls, errors, tokens_used,
            prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens, cost_usd, unpriced_calls, cache_write_tokens)
        SELECT (created_at AT TIME ZONE 'UTC')::date,
               user_id::text,
               provider,
               model,
               coalesce(team_id, ''),
               count(*),
               count(*) FILTER (WHERE status = 'error'),
               coalesce(sum(tokens_used), 0),
               coalesce(sum(prompt_tokens), 0),
               coalesce(sum(completion_tokens), 0),
               coalesce(sum(cached_tokens), 0),
               coalesce(sum(reasoning_tokens), 0),
               sum(cost_usd),
               count(*) FILTER (WHERE cost_usd IS NULL),
               coalesce(sum(cache_write_tokens), 0)
        FROM llmusage_inserted
        WHERE created_at IS NOT NULL
        GROUP BY 1, 2, 3, 4, 5;
        RETURN NULL;
    END
    $$;
END
$do$;
-- +goose StatementEnd

-- A budget's spend after a restart groups by team now (a team-scoped
-- rule counts its team's calls): team_id joins the INCLUDEd columns of the
-- per-user index, so that Spent stays an index-only scan. The new index
-- is built beside the old one and takes its name.
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_llm_usage_user_created_team ON llm_usage_logs (user_id, created_at DESC, id DESC)
    INCLUDE (provider, model, cost_usd, team_id);
DROP INDEX CONCURRENTLY IF EXISTS idx_llm_usage_user_created;
ALTER INDEX IF EXISTS idx_llm_usage_user_created_team RENAME TO idx_llm_usage_user_created;

-- A pool's spend (every user's calls, or a team's) sums whole days from
-- the summary and the rest of its period, today, from the raw rows: a
-- range of created_at, read from the index alone. It replaces the plain
-- created_at index (retention deletes through it just as well).
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_llm_usage_created_cover ON llm_usage_logs (created_at)
    INCLUDE (team_id, provider, model, cost_usd);
DROP INDEX CONCURRENTLY IF EXISTS idx_llm_usage_created_at;
ALTER INDEX IF EXISTS idx_llm_usage_created_cover RENAME TO idx_llm_usage_created_at;

-- One team's calls: its logs pages newest first, and today's part of its
-- stats and of its pool's spend. Rows without a team are not in it.
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_llm_usage_team_created ON llm_usage_logs (team_id, created_at DESC, id DESC)
    INCLUDE (provider, model, cost_usd) WHERE team_id IS NOT NULL;

-- Rule rows scoped to a team, and shared per user (NULL), team or all.
ALTER TABLE llm_rate_limit_configs ADD COLUMN IF NOT EXISTS team_id TEXT;
ALTER TABLE llm_rate_limit_configs ADD COLUMN IF NOT EXISTS per TEXT;
ALTER TABLE llm_rate_limits ADD COLUMN IF NOT EXISTS team_id TEXT;
ALTER TABLE llm_rate_limits ADD COLUMN IF NOT EXISTS per TEXT;

-- A seeded default given a team or a sharing is an operator's row (00004).
-- +goose StatementBegin
DO $do$
BEGIN
    DROP TRIGGER IF EXISTS llm_rate_limit_configs_unseed ON llm_rate_limit_configs;
    CREATE TRIGGER llm_rate_limit_configs_unseed BEFORE UPDATE OF limit_type, limit_value, unit, provider, model, limit_usd, team_id, per
        ON llm_rate_limit_configs
        FOR EACH ROW
        WHEN (OLD.limit_type IS DISTINCT FROM NEW.limit_type OR OLD.limit_value IS DISTINCT FROM NEW.limit_value
              OR OLD.unit IS DISTINCT FROM NEW.unit OR OLD.provider IS DISTINCT FROM NEW.provider OR OLD.model IS DISTINCT FROM NEW.model
              OR OLD.limit_usd IS DISTINCT FROM NEW.limit_usd OR OLD.team_id IS DISTINCT FROM NEW.team_id
              OR OLD.per IS DISTINCT FROM NEW.per)
        EXECUTE FUNCTION llmusage_unseed();
END
$do$;
-- +goose StatementEnd

-- +goose Down
SELECT 1;
