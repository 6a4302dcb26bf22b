-- cache_write_tokens in the logs and the daily summary; see the Postgres
-- migration of the same name. Rows from before are 0. SQLite's ADD COLUMN
-- with a constant default rewrites no row either: it changes the schema
-- text, and rows stored before read the default.

-- +goose Up
ALTER TABLE llm_usage_logs ADD COLUMN cache_write_tokens INTEGER NOT NULL DEFAULT 0;
-- The last column, which store.sqliteStore.Insert's upsert fills in order.
ALTER TABLE llmusage_daily_totals ADD COLUMN cache_write_tokens INTEGER NOT NULL DEFAULT 0;

-- 00005's view, with cache_write_tokens.
DROP VIEW IF EXISTS llm_usage_daily_summary;
CREATE VIEW llm_usage_daily_summary AS
SELECT day, user_id, provider, model, calls, errors, tokens_used, prompt_tokens, completion_tokens,
       cached_tokens, reasoning_tokens, cost_nano_usd,
       CASE WHEN cost_nano_usd IS NOT NULL
            THEN rtrim(rtrim(printf('%d.%09d', cost_nano_usd / 1000000000, cost_nano_usd % 1000000000), '0'), '.') END AS cost_usd,
       unpriced_calls, cache_write_tokens
FROM llmusage_daily_totals;

-- +goose Down
SELECT 1;
