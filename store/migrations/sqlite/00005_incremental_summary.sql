-- The daily summary as a table, so that it outlives the retention of raw
-- rows and the usage API reads whole days from it rather than from every
-- row; see the Postgres migration of the same name. SQLite has one
-- writer, llmusage, whose inserts add their totals to it in the same
-- transaction (store.sqliteStore.Insert): there is nothing pending and no
-- step to run. Rows inserted by hand are not summarised.
-- llm_usage_daily_summary stays a view, with the columns of 00004, over
-- the table.

-- +goose Up
CREATE TABLE IF NOT EXISTS llmusage_daily_totals (
    day               TEXT NOT NULL,
    user_id           TEXT NOT NULL,
    provider          TEXT NOT NULL,
    model             TEXT NOT NULL,
    calls             INTEGER NOT NULL,
    errors            INTEGER NOT NULL,
    tokens_used       INTEGER NOT NULL,
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cached_tokens     INTEGER NOT NULL,
    reasoning_tokens  INTEGER NOT NULL,
    -- NULL when none of the group's calls is priced.
    cost_nano_usd     INTEGER,
    unpriced_calls    INTEGER NOT NULL,
    PRIMARY KEY (day, user_id, provider, model)
) WITHOUT ROWID;
-- One user's days, for the usage API.
CREATE INDEX IF NOT EXISTS idx_llmusage_daily_totals_user ON llmusage_daily_totals (user_id, day);

-- goose runs this in one transaction, which holds SQLite's write lock:
-- no row is inserted meanwhile.
DELETE FROM llmusage_daily_totals;
INSERT INTO llmusage_daily_totals
SELECT date(created_at / 1000000, 'unixepoch'), user_id, provider, model, count(*),
       sum(CASE WHEN status = 'error' THEN 1 ELSE 0 END), sum(tokens_used), sum(prompt_tokens),
       sum(completion_tokens), sum(cached_tokens), sum(reasoning_tokens), sum(cost_nano_usd),
       sum(CASE WHEN cost_nano_usd IS NULL THEN 1 ELSE 0 END)
FROM llm_usage_logs
GROUP BY 1, 2, 3, 4;

DROP VIEW IF EXISTS llm_usage_daily_summary;
CREATE VIEW llm_usage_daily_summary AS
SELECT day, user_id, provider, model, calls, errors, tokens_used, prompt_tokens, completion_tokens,
       cached_tokens, reasoning_tokens, cost_nano_usd,
       CASE WHEN cost_nano_usd IS NOT NULL
            THEN rtrim(rtrim(printf('%d.%09d', cost_nano_usd / 1000000000, cost_nano_usd % 1000000000), '0'), '.') END AS cost_usd,
       unpriced_calls
FROM llmusage_daily_totals;

-- +goose Down
SELECT 1;
