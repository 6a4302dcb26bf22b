-- The embedded store's schema: the same tables as on Postgres, with the
-- daily summary as a plain view (SQLite has no materialized views).

-- +goose Up
CREATE TABLE IF NOT EXISTS llm_usage_logs (
    id                INTEGER PRIMARY KEY,
    request_id        TEXT UNIQUE,
    user_id           TEXT NOT NULL,
    provider          TEXT NOT NULL DEFAULT 'unknown',
    model             TEXT NOT NULL,
    tokens_used       INTEGER NOT NULL DEFAULT 0,
    prompt_tokens     INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    cached_tokens     INTEGER NOT NULL DEFAULT 0,
    reasoning_tokens  INTEGER NOT NULL DEFAULT 0,
    latency_ms        REAL,
    status            TEXT NOT NULL DEFAULT 'success',
    error_type        TEXT,
    metadata          TEXT,
    -- Unix microseconds: sortable, and exact for keyset pagination.
    created_at        INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_llm_usage_user_id ON llm_usage_logs (user_id);
CREATE INDEX IF NOT EXISTS idx_llm_usage_model ON llm_usage_logs (model);
CREATE INDEX IF NOT EXISTS idx_llm_usage_user_created ON llm_usage_logs (user_id, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS idx_llm_usage_created_id ON llm_usage_logs (created_at DESC, id DESC);

CREATE TABLE IF NOT EXISTS llm_rate_limit_configs (
    id          INTEGER PRIMARY KEY,
    limit_type  TEXT NOT NULL,
    limit_value INTEGER NOT NULL,
    unit        TEXT NOT NULL DEFAULT 'requests',
    provider    TEXT,
    model       TEXT,
    description TEXT,
    created_at  INTEGER NOT NULL DEFAULT (unixepoch())
);
INSERT INTO llm_rate_limit_configs (limit_type, limit_value, unit, description)
SELECT 'minute', 30, 'requests', 'Default' WHERE NOT EXISTS (SELECT 1 FROM llm_rate_limit_configs)
UNION ALL
SELECT 'day', 14400, 'requests', 'Default' WHERE NOT EXISTS (SELECT 1 FROM llm_rate_limit_configs);

CREATE TABLE IF NOT EXISTS llm_rate_limits (
    id          INTEGER PRIMARY KEY,
    user_id     TEXT NOT NULL,
    limit_type  TEXT NOT NULL,
    limit_value INTEGER NOT NULL,
    unit        TEXT NOT NULL DEFAULT 'requests',
    provider    TEXT,
    model       TEXT,
    reset_at    INTEGER,
    created_at  INTEGER NOT NULL DEFAULT (unixepoch())
);
CREATE INDEX IF NOT EXISTS idx_llm_rate_limits_user_id ON llm_rate_limits (user_id);

CREATE VIEW IF NOT EXISTS llm_usage_daily_summary AS
SELECT date(created_at / 1000000, 'unixepoch') AS day,
       user_id,
       provider,
       model,
       count(*)                                          AS calls,
       sum(CASE WHEN status = 'error' THEN 1 ELSE 0 END) AS errors,
       sum(tokens_used)                                  AS tokens_used,
       sum(prompt_tokens)                                AS prompt_tokens,
       sum(completion_tokens)                            AS completion_tokens,
       sum(cached_tokens)                                AS cached_tokens,
       sum(reasoning_tokens)                             AS reasoning_tokens
FROM llm_usage_logs
GROUP BY 1, 2, 3, 4;

-- +goose Down
SELECT 1;
