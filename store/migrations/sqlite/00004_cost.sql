-- USD cost and budgets (issue #13); see the Postgres migration of the
-- same name.
--
-- SQLite has no decimal type: a NUMERIC column keeps 0.1 as a float,
-- which neither reads back nor sums exactly. So a record's cost is
-- cost_nano_usd, an INTEGER of nano-dollars (usd.Amount itself: exact,
-- and sum() of integers is exact, failing rather than rounding past
-- int64). The operators' amounts (limit_usd, the prices) are TEXT, as
-- written: a number typed into SQL is turned into its text, and the CHECKs
-- admit only plain non-negative decimals ('2.5', not '-1' or '1.0e-06').

-- +goose Up
-- NULL is an unpriced call: unknown, never zero.
ALTER TABLE llm_usage_logs ADD COLUMN cost_nano_usd INTEGER;

-- Covers the budget spend query (Spent): one user's window, provider,
-- model and cost from the index alone. The key starts as the index it
-- replaces, so the usage API uses it as before.
DROP INDEX IF EXISTS idx_llm_usage_user_created;
CREATE INDEX idx_llm_usage_user_created ON llm_usage_logs (user_id, created_at DESC, id DESC, provider, model, cost_nano_usd);

-- Every column of 00001's view, plus the cost: cost_nano_usd sums the
-- priced calls (NULL when none of the group is priced), cost_usd is the
-- same in dollars as exact decimal text, unpriced_calls counts the others.
DROP VIEW IF EXISTS llm_usage_daily_summary;
CREATE VIEW llm_usage_daily_summary AS
SELECT day, user_id, provider, model, calls, errors, tokens_used, prompt_tokens, completion_tokens,
       cached_tokens, reasoning_tokens, cost_nano_usd,
       CASE WHEN cost_nano_usd IS NOT NULL
            THEN rtrim(rtrim(printf('%d.%09d', cost_nano_usd / 1000000000, cost_nano_usd % 1000000000), '0'), '.') END AS cost_usd,
       unpriced_calls
FROM (SELECT date(created_at / 1000000, 'unixepoch') AS day,
             user_id,
             provider,
             model,
             count(*)                                                 AS calls,
             sum(CASE WHEN status = 'error' THEN 1 ELSE 0 END)        AS errors,
             sum(tokens_used)                                         AS tokens_used,
             sum(prompt_tokens)                                       AS prompt_tokens,
             sum(completion_tokens)                                   AS completion_tokens,
             sum(cached_tokens)                                       AS cached_tokens,
             sum(reasoning_tokens)                                    AS reasoning_tokens,
             sum(cost_nano_usd)                                       AS cost_nano_usd,
             sum(CASE WHEN cost_nano_usd IS NULL THEN 1 ELSE 0 END)   AS unpriced_calls
      FROM llm_usage_logs
      GROUP BY 1, 2, 3, 4);

-- Budgets are rows of unit 'usd' (limit_type may be week or month too).
ALTER TABLE llm_rate_limit_configs ADD COLUMN limit_usd TEXT
    CHECK (limit_usd IS NULL OR (limit_usd GLOB '*[0-9]*' AND limit_usd NOT GLOB '*[^0-9.]*'));
ALTER TABLE llm_rate_limits ADD COLUMN limit_usd TEXT
    CHECK (limit_usd IS NULL OR (limit_usd GLOB '*[0-9]*' AND limit_usd NOT GLOB '*[^0-9.]*'));

-- A seeded default changed to a budget is an operator's row (00003).
DROP TRIGGER IF EXISTS llm_rate_limit_configs_unseed;
-- +goose StatementBegin
CREATE TRIGGER llm_rate_limit_configs_unseed AFTER UPDATE OF limit_type, limit_value, unit, provider, model, limit_usd ON llm_rate_limit_configs
WHEN OLD.limit_type IS NOT NEW.limit_type OR OLD.limit_value IS NOT NEW.limit_value
  OR OLD.unit IS NOT NEW.unit OR OLD.provider IS NOT NEW.provider OR OLD.model IS NOT NEW.model
  OR OLD.limit_usd IS NOT NEW.limit_usd
BEGIN
    UPDATE llm_rate_limit_configs SET seeded = 0 WHERE id = NEW.id;
END;
-- +goose StatementEnd

-- The operators' model prices, USD per million tokens as decimal text.
-- effective_from is a time SQLite's date functions read ('2026-01-01',
-- '2026-01-01T00:00:00Z'); the timestamps are Unix seconds, as in the
-- rule tables. The polling of the rule tables watches this table too.
CREATE TABLE IF NOT EXISTS llm_model_prices (
    id                        INTEGER PRIMARY KEY,
    provider                  TEXT,
    model                     TEXT NOT NULL,
    input_usd_per_mtok        TEXT NOT NULL CHECK (input_usd_per_mtok GLOB '*[0-9]*' AND input_usd_per_mtok NOT GLOB '*[^0-9.]*'),
    output_usd_per_mtok       TEXT NOT NULL CHECK (output_usd_per_mtok GLOB '*[0-9]*' AND output_usd_per_mtok NOT GLOB '*[^0-9.]*'),
    cached_input_usd_per_mtok TEXT CHECK (cached_input_usd_per_mtok IS NULL OR (cached_input_usd_per_mtok GLOB '*[0-9]*' AND cached_input_usd_per_mtok NOT GLOB '*[^0-9.]*')),
    cache_write_usd_per_mtok  TEXT CHECK (cache_write_usd_per_mtok IS NULL OR (cache_write_usd_per_mtok GLOB '*[0-9]*' AND cache_write_usd_per_mtok NOT GLOB '*[^0-9.]*')),
    effective_from            TEXT CHECK (effective_from IS NULL OR julianday(effective_from) IS NOT NULL),
    description               TEXT,
    created_at                INTEGER NOT NULL DEFAULT (unixepoch()),
    updated_at                INTEGER NOT NULL DEFAULT (unixepoch())
);
-- +goose StatementBegin
CREATE TRIGGER IF NOT EXISTS llm_model_prices_touch AFTER UPDATE ON llm_model_prices
WHEN OLD.updated_at IS NEW.updated_at
BEGIN
    UPDATE llm_model_prices SET updated_at = unixepoch() WHERE id = NEW.id;
END;
-- +goose StatementEnd

-- +goose Down
SELECT 1;
