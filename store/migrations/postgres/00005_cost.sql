-- USD cost and budgets (issue #13): each record's cost, the index that
-- rebuilds a budget's spend, the summary's cost, budget amounts on the
-- rule tables, and the operators' model prices. Like 00002, it also
-- completes a database adopted from the seed or the Groq era (00001):
-- columns are added IF NOT EXISTS.

-- +goose Up
-- Rebuilt below with the cost; it depends on the columns changed here.
DROP MATERIALIZED VIEW IF EXISTS llm_usage_daily_summary;

-- NULL is an unpriced call (a model without a price): unknown, never
-- zero. Nine decimal places are usd.Amount's nano-dollars, so what is
-- written reads back exactly and sums are exact.
ALTER TABLE llm_usage_logs ADD COLUMN IF NOT EXISTS cost_usd NUMERIC(20,9);
-- A cost_usd added by hand before llmusage had one may be a float.
ALTER TABLE llm_usage_logs ALTER COLUMN cost_usd TYPE NUMERIC(20,9);

-- A budget's spend after a restart sums one user's costs over a window,
-- scoped by provider and model glob (Spent). Covering it with INCLUDE
-- makes that an index-only range scan. It replaces the (user_id,
-- created_at, id) index of 00002 rather than joining it: the key is the
-- same, so the usage API's per-user pages and sums use it as before, and
-- a write updates one index fewer than with two. Intake bounds provider
-- and model to 256 bytes, far below a btree entry's limit.
DROP INDEX IF EXISTS idx_llm_usage_user_created;
CREATE INDEX idx_llm_usage_user_created ON llm_usage_logs (user_id, created_at DESC, id DESC) INCLUDE (provider, model, cost_usd);

-- Every column of 00002's summary, plus the cost: cost_usd sums the
-- priced calls (NULL when none of the group is priced), unpriced_calls
-- counts the others.
CREATE MATERIALIZED VIEW llm_usage_daily_summary AS
SELECT (created_at AT TIME ZONE 'UTC')::date AS day,
       user_id,
       provider,
       model,
       count(*)                                  AS calls,
       count(*) FILTER (WHERE status = 'error')  AS errors,
       sum(tokens_used)::bigint                  AS tokens_used,
       sum(prompt_tokens)::bigint                AS prompt_tokens,
       sum(completion_tokens)::bigint            AS completion_tokens,
       sum(cached_tokens)::bigint                AS cached_tokens,
       sum(reasoning_tokens)::bigint             AS reasoning_tokens,
       sum(cost_usd)                             AS cost_usd,
       count(*) FILTER (WHERE cost_usd IS NULL)  AS unpriced_calls
FROM llm_usage_logs
GROUP BY 1, 2, 3, 4;
-- REFRESH ... CONCURRENTLY (refresh_llm_usage_summary(), unchanged) needs a unique index.
CREATE UNIQUE INDEX idx_llm_usage_daily_summary_key ON llm_usage_daily_summary (day, user_id, provider, model);

-- Budgets are rows of unit 'usd' (limit_type may be week or month too;
-- no constraint names the limit types). Their amount is limit_usd, exact
-- to the nano-dollar, where limit_value's whole dollars would not do.
-- The bound keeps out NaN, which numeric accepts and sorts above every
-- number, and what usd.Amount cannot hold.
ALTER TABLE llm_rate_limit_configs ADD COLUMN IF NOT EXISTS limit_usd NUMERIC(20,9)
    CONSTRAINT llm_rate_limit_configs_limit_usd_check CHECK (limit_usd BETWEEN 0 AND 1000000000);
ALTER TABLE llm_rate_limits ADD COLUMN IF NOT EXISTS limit_usd NUMERIC(20,9)
    CONSTRAINT llm_rate_limits_limit_usd_check CHECK (limit_usd BETWEEN 0 AND 1000000000);

-- A seeded default changed to a budget is an operator's row (00004).
DROP TRIGGER IF EXISTS llm_rate_limit_configs_unseed ON llm_rate_limit_configs;
CREATE TRIGGER llm_rate_limit_configs_unseed BEFORE UPDATE OF limit_type, limit_value, unit, provider, model, limit_usd ON llm_rate_limit_configs
    FOR EACH ROW
    WHEN (OLD.limit_type IS DISTINCT FROM NEW.limit_type OR OLD.limit_value IS DISTINCT FROM NEW.limit_value
          OR OLD.unit IS DISTINCT FROM NEW.unit OR OLD.provider IS DISTINCT FROM NEW.provider OR OLD.model IS DISTINCT FROM NEW.model
          OR OLD.limit_usd IS DISTINCT FROM NEW.limit_usd)
    EXECUTE FUNCTION llmusage_unseed();

-- The operators' model prices, in USD per million tokens (unconstrained
-- numeric: a price per token may need more than nine places). They
-- override the embedded price table. NULL cached and cache-write prices
-- cost what input costs; effective_from, when set, is the first record
-- time a row prices. Bounds as for limit_usd.
CREATE TABLE IF NOT EXISTS llm_model_prices (
    id                        BIGSERIAL PRIMARY KEY,
    provider                  TEXT,
    model                     TEXT NOT NULL,
    input_usd_per_mtok        NUMERIC NOT NULL CONSTRAINT llm_model_prices_input_check CHECK (input_usd_per_mtok BETWEEN 0 AND 1000000000),
    output_usd_per_mtok       NUMERIC NOT NULL CONSTRAINT llm_model_prices_output_check CHECK (output_usd_per_mtok BETWEEN 0 AND 1000000000),
    cached_input_usd_per_mtok NUMERIC CONSTRAINT llm_model_prices_cached_input_check CHECK (cached_input_usd_per_mtok BETWEEN 0 AND 1000000000),
    cache_write_usd_per_mtok  NUMERIC CONSTRAINT llm_model_prices_cache_write_check CHECK (cache_write_usd_per_mtok BETWEEN 0 AND 1000000000),
    effective_from            TIMESTAMPTZ,
    description               TEXT,
    created_at                TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at                TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION llmusage_touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;
-- +goose StatementEnd
DROP TRIGGER IF EXISTS llm_model_prices_touch ON llm_model_prices;
CREATE TRIGGER llm_model_prices_touch BEFORE UPDATE ON llm_model_prices
    FOR EACH ROW EXECUTE FUNCTION llmusage_touch_updated_at();

-- Prices changed in SQL reach running sidecars as rule changes do (00002).
DROP TRIGGER IF EXISTS llm_model_prices_notify ON llm_model_prices;
CREATE TRIGGER llm_model_prices_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON llm_model_prices
    FOR EACH STATEMENT EXECUTE FUNCTION llmusage_notify_limits();

-- +goose Down
SELECT 1;
