-- +goose NO TRANSACTION
-- The part of prompt_tokens written to a prompt cache (cache_write_tokens,
-- Anthropic's cache_creation_input_tokens): intake prices it, and the
-- logs and the daily summary keep it beside cached_tokens, so that cache
-- writes can be read back rather than only inferred from the cost. Rows
-- stored before read 0: the database never had their cache writes.
--
-- On Postgres 11 and later, ADD COLUMN with a constant DEFAULT (0) and
-- NOT NULL is a change of the catalog only: existing rows are not
-- rewritten, and the default is read for them, so this is instant on a
-- large llm_usage_logs.
--
-- Each ADD COLUMN takes its table's ACCESS EXCLUSIVE lock, and no order
-- of taking the three is safe to hold one while waiting for the next: an
-- insert takes llm_usage_logs then (its statement trigger) the pending
-- table, a usage API read the summary, the pending table, then
-- llm_usage_logs; waiting with one held could deadlock with either, and
-- fail the migration. So the migration runs outside a transaction, each
-- statement in its own and holding one table's lock, in an order in which
-- the functions in force work after each step. Every statement may run
-- again (IF NOT EXISTS, CREATE OR REPLACE), so a migration cut short is
-- completed by the next run.

-- +goose Up
-- 00006's functions keep working with these columns: the trigger's INSERT
-- fills the columns it lists, the new last one takes its default, and the
-- step moves the columns it names. Pending totals and summary rows from
-- before summed no cache writes.
ALTER TABLE llm_usage_summary_pending ADD COLUMN IF NOT EXISTS cache_write_tokens BIGINT NOT NULL DEFAULT 0;
ALTER TABLE llm_usage_daily_summary ADD COLUMN IF NOT EXISTS cache_write_tokens BIGINT NOT NULL DEFAULT 0;

-- 00006's step, moving cache_write_tokens too: grouped gives the columns
-- in llm_usage_daily_summary's order, cache_write_tokens last.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION refresh_llm_usage_summary() RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    written bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(7812739804795332353);
    WITH moved AS (
        DELETE FROM llm_usage_summary_pending RETURNING *
    ), grouped AS (
        SELECT day, user_id, provider, model,
               sum(calls)::bigint AS calls, sum(errors)::bigint AS errors,
               sum(tokens_used)::bigint AS tokens_used, sum(prompt_tokens)::bigint AS prompt_tokens,
               sum(completion_tokens)::bigint AS completion_tokens, sum(cached_tokens)::bigint AS cached_tokens,
               sum(reasoning_tokens)::bigint AS reasoning_tokens, sum(cost_usd) AS cost_usd,
               sum(unpriced_calls)::bigint AS unpriced_calls, sum(cache_write_tokens)::bigint AS cache_write_tokens
        FROM moved
        GROUP BY day, user_id, provider, model
    )
    INSERT INTO llm_usage_daily_summary AS s
    SELECT * FROM grouped ORDER BY day, user_id, provider, model
    ON CONFLICT (day, user_id, provider, model) DO UPDATE SET
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
-- +goose StatementEnd

-- The column and the trigger function that sums it, in one statement and
-- so one transaction: no insert is stored with cache writes that the
-- summary then misses. It holds llm_usage_logs' lock alone; replacing a
-- function locks no table.
-- +goose StatementBegin
DO $do$
BEGIN
    ALTER TABLE llm_usage_logs ADD COLUMN IF NOT EXISTS cache_write_tokens BIGINT NOT NULL DEFAULT 0;
    -- 00006's trigger function, with cache_write_tokens (the last column
    -- of llm_usage_summary_pending, which the INSERT fills in order).
    CREATE OR REPLACE FUNCTION llmusage_summary_collect() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO llm_usage_summary_pending
        SELECT (created_at AT TIME ZONE 'UTC')::date,
               user_id::text,
               provider,
               model,
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
        GROUP BY 1, 2, 3, 4;
        RETURN NULL;
    END
    $$;
END
$do$;
-- +goose StatementEnd

-- +goose Down
SELECT 1;
