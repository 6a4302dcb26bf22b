-- A daily summary whose upkeep grows with what is new, not with the
-- table, and which outlives the retention of raw rows (issue #16).
--
-- llm_usage_daily_summary was a materialized view: every refresh read
-- every row ever stored, and deleting old rows would have erased the
-- days it summarised. It becomes a table with the same name and columns.
-- A statement trigger on llm_usage_logs adds each insert's totals, one
-- row per group, to llm_usage_summary_pending, in the inserting
-- transaction: an append with no row another writer waits for.
-- refresh_llm_usage_summary() moves what is pending into the summary; it
-- reads only the pending rows. The usage API adds the pending rows to the
-- summary, so its answers are exact between steps.
--
-- Rows deleted or updated by hand in llm_usage_logs are not subtracted:
-- the summary counts what was inserted. A row without a created_at (an
-- adopted table's column may be nullable) belongs to no day, and the
-- usage API never counted it: it is left out, rather than failing the
-- migration or the insert.

-- +goose Up
-- No row may be inserted between the fill below and the trigger: the
-- lock waits for running inserts and holds new ones (the sidecars spool
-- them) until this migration commits.
LOCK TABLE llm_usage_logs IN SHARE ROW EXCLUSIVE MODE;

CREATE TABLE IF NOT EXISTS llm_usage_summary_pending (
    day               DATE NOT NULL,
    user_id           TEXT NOT NULL,
    provider          TEXT NOT NULL,
    model             TEXT NOT NULL,
    calls             BIGINT NOT NULL,
    errors            BIGINT NOT NULL,
    tokens_used       BIGINT NOT NULL,
    prompt_tokens     BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    cached_tokens     BIGINT NOT NULL,
    reasoning_tokens  BIGINT NOT NULL,
    cost_usd          NUMERIC,
    unpriced_calls    BIGINT NOT NULL
);
-- The usage API reads one user's pending days.
CREATE INDEX IF NOT EXISTS idx_llm_usage_summary_pending_user ON llm_usage_summary_pending (user_id, day);

-- +goose StatementBegin
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
           count(*) FILTER (WHERE cost_usd IS NULL)
    FROM llmusage_inserted
    WHERE created_at IS NOT NULL
    GROUP BY 1, 2, 3, 4;
    RETURN NULL;
END
$$;
-- +goose StatementEnd
DROP TRIGGER IF EXISTS llm_usage_logs_summary ON llm_usage_logs;
CREATE TRIGGER llm_usage_logs_summary AFTER INSERT ON llm_usage_logs
    REFERENCING NEW TABLE AS llmusage_inserted
    FOR EACH STATEMENT EXECUTE FUNCTION llmusage_summary_collect();

-- The last full computation: from here on only inserts add to it.
-- Sidecars started together with --migrate (serve's default) may each
-- run this migration: the LOCK above holds the others until the first
-- commits, and they then find the summary a table already.
-- +goose StatementBegin
DO $$
BEGIN
    IF (SELECT relkind FROM pg_class WHERE oid = to_regclass('llm_usage_daily_summary')) = 'r' THEN
        RETURN;
    END IF;
    DROP FUNCTION IF EXISTS refresh_llm_usage_summary();
    DROP MATERIALIZED VIEW IF EXISTS llm_usage_daily_summary;
    CREATE TABLE llm_usage_daily_summary (
        day               DATE NOT NULL,
        user_id           TEXT NOT NULL,
        provider          TEXT NOT NULL,
        model             TEXT NOT NULL,
        calls             BIGINT NOT NULL,
        errors            BIGINT NOT NULL,
        tokens_used       BIGINT NOT NULL,
        prompt_tokens     BIGINT NOT NULL,
        completion_tokens BIGINT NOT NULL,
        cached_tokens     BIGINT NOT NULL,
        reasoning_tokens  BIGINT NOT NULL,
        -- NULL when none of the group's calls is priced, as sum() gives.
        cost_usd          NUMERIC,
        unpriced_calls    BIGINT NOT NULL
    );
    INSERT INTO llm_usage_daily_summary
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
           count(*) FILTER (WHERE cost_usd IS NULL)
    FROM llm_usage_logs
    WHERE created_at IS NOT NULL
    GROUP BY 1, 2, 3, 4;
    -- The key the refresh upserts on, under the index name the view had.
    CREATE UNIQUE INDEX idx_llm_usage_daily_summary_key ON llm_usage_daily_summary (day, user_id, provider, model);
    -- One user's days, for the usage API.
    CREATE INDEX idx_llm_usage_daily_summary_user ON llm_usage_daily_summary (user_id, day);
END
$$;
-- +goose StatementEnd

-- The incremental step. It returns how many summary rows it wrote. The
-- advisory lock (the key is store.summaryLockKey) runs one step at a time
-- across the fleet and against a call from cron; the DELETE takes only
-- what is committed, so rows inserted meanwhile wait for the next step.
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
               sum(unpriced_calls)::bigint AS unpriced_calls
        FROM moved
        GROUP BY day, user_id, provider, model
    )
    INSERT INTO llm_usage_daily_summary AS s
    SELECT * FROM grouped ORDER BY day, user_id, provider, model
    ON CONFLICT (day, user_id, provider, model) DO UPDATE SET
        calls             = s.calls + excluded.calls,
        errors            = s.errors + excluded.errors,
        tokens_used       = s.tokens_used + excluded.tokens_used,
        prompt_tokens     = s.prompt_tokens + excluded.prompt_tokens,
        completion_tokens = s.completion_tokens + excluded.completion_tokens,
        cached_tokens     = s.cached_tokens + excluded.cached_tokens,
        reasoning_tokens  = s.reasoning_tokens + excluded.reasoning_tokens,
        cost_usd          = CASE WHEN s.cost_usd IS NULL AND excluded.cost_usd IS NULL THEN NULL
                                 ELSE coalesce(s.cost_usd, 0) + coalesce(excluded.cost_usd, 0) END,
        unpriced_calls    = s.unpriced_calls + excluded.unpriced_calls;
    GET DIAGNOSTICS written = ROW_COUNT;
    RETURN written;
END
$$;
-- +goose StatementEnd

-- +goose Down
SELECT 1;
