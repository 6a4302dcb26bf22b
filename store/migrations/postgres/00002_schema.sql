-- The seed's schema (backend/database_migrations/005_api_usage_tracking.sql,
-- renamed to llm_*), written so that it also completes a table adopted from
-- the Groq era or created by the seed itself: every statement is
-- IF NOT EXISTS, and missing columns are added.

-- +goose Up
-- The summary is rebuilt below with the columns of this migration; an
-- adopted Groq-era view lacks provider and the newer token kinds, and
-- would block the column type changes.
DROP MATERIALIZED VIEW IF EXISTS llm_usage_daily_summary;

CREATE TABLE IF NOT EXISTS llm_usage_logs (
    id                BIGSERIAL PRIMARY KEY,
    user_id           TEXT NOT NULL,
    model             TEXT NOT NULL,
    tokens_used       BIGINT NOT NULL DEFAULT 0,
    prompt_tokens     BIGINT NOT NULL DEFAULT 0,
    completion_tokens BIGINT NOT NULL DEFAULT 0,
    metadata          JSONB,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);
ALTER TABLE llm_usage_logs ADD COLUMN IF NOT EXISTS request_id TEXT;
ALTER TABLE llm_usage_logs ADD COLUMN IF NOT EXISTS provider TEXT;
ALTER TABLE llm_usage_logs ADD COLUMN IF NOT EXISTS cached_tokens BIGINT NOT NULL DEFAULT 0;
ALTER TABLE llm_usage_logs ADD COLUMN IF NOT EXISTS reasoning_tokens BIGINT NOT NULL DEFAULT 0;
ALTER TABLE llm_usage_logs ADD COLUMN IF NOT EXISTS latency_ms DOUBLE PRECISION;
ALTER TABLE llm_usage_logs ADD COLUMN IF NOT EXISTS status TEXT NOT NULL DEFAULT 'success';
ALTER TABLE llm_usage_logs ADD COLUMN IF NOT EXISTS error_type TEXT;
ALTER TABLE llm_usage_logs ADD COLUMN IF NOT EXISTS metadata JSONB;
ALTER TABLE llm_usage_logs ADD COLUMN IF NOT EXISTS created_at TIMESTAMPTZ NOT NULL DEFAULT now();
-- Rows from before providers were tracked were Groq calls unless their
-- metadata says otherwise.
UPDATE llm_usage_logs SET provider = coalesce(nullif(lower(metadata->>'provider'), ''), 'groq') WHERE provider IS NULL;
ALTER TABLE llm_usage_logs ALTER COLUMN provider SET DEFAULT 'unknown', ALTER COLUMN provider SET NOT NULL;
-- Counts may exceed 2^31 (the intake accepts up to 10^12).
ALTER TABLE llm_usage_logs
    ALTER COLUMN tokens_used TYPE BIGINT,
    ALTER COLUMN prompt_tokens TYPE BIGINT,
    ALTER COLUMN completion_tokens TYPE BIGINT;

-- The seed may have keyed users by uuid; llmusage accepts any user_id.
-- A foreign key to a users table makes the change impossible, in which
-- case the column stays as it is.
-- +goose StatementBegin
DO $$
BEGIN
    ALTER TABLE llm_usage_logs ALTER COLUMN user_id TYPE TEXT;
EXCEPTION WHEN others THEN
    RAISE NOTICE 'llm_usage_logs.user_id keeps its type: %', SQLERRM;
END
$$;
-- +goose StatementEnd

CREATE UNIQUE INDEX IF NOT EXISTS idx_llm_usage_request_id ON llm_usage_logs (request_id);
CREATE INDEX IF NOT EXISTS idx_llm_usage_user_id ON llm_usage_logs (user_id);
CREATE INDEX IF NOT EXISTS idx_llm_usage_model ON llm_usage_logs (model);
CREATE INDEX IF NOT EXISTS idx_llm_usage_created_at ON llm_usage_logs (created_at);
-- Per-user stats and logs pages, newest first, with id as the tie-breaker.
CREATE INDEX IF NOT EXISTS idx_llm_usage_user_created ON llm_usage_logs (user_id, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS idx_llm_usage_created_id ON llm_usage_logs (created_at DESC, id DESC);

CREATE TABLE IF NOT EXISTS llm_rate_limit_configs (
    id          BIGSERIAL PRIMARY KEY,
    limit_type  TEXT NOT NULL,
    limit_value BIGINT NOT NULL,
    description TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
ALTER TABLE llm_rate_limit_configs ADD COLUMN IF NOT EXISTS unit TEXT NOT NULL DEFAULT 'requests';
ALTER TABLE llm_rate_limit_configs ADD COLUMN IF NOT EXISTS provider TEXT;
ALTER TABLE llm_rate_limit_configs ADD COLUMN IF NOT EXISTS model TEXT;
ALTER TABLE llm_rate_limit_configs ADD COLUMN IF NOT EXISTS description TEXT;
-- The seed's defaults, from Groq's free tier.
INSERT INTO llm_rate_limit_configs (limit_type, limit_value, unit, description)
SELECT v.limit_type, v.limit_value, 'requests', 'Default'
FROM (VALUES ('minute', 30), ('day', 14400)) AS v(limit_type, limit_value)
WHERE NOT EXISTS (SELECT 1 FROM llm_rate_limit_configs);

CREATE TABLE IF NOT EXISTS llm_rate_limits (
    id          BIGSERIAL PRIMARY KEY,
    user_id     TEXT NOT NULL,
    limit_type  TEXT NOT NULL,
    limit_value BIGINT NOT NULL,
    reset_at    TIMESTAMPTZ,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
ALTER TABLE llm_rate_limits ADD COLUMN IF NOT EXISTS unit TEXT NOT NULL DEFAULT 'requests';
ALTER TABLE llm_rate_limits ADD COLUMN IF NOT EXISTS provider TEXT;
ALTER TABLE llm_rate_limits ADD COLUMN IF NOT EXISTS model TEXT;
ALTER TABLE llm_rate_limits ADD COLUMN IF NOT EXISTS reset_at TIMESTAMPTZ;
-- +goose StatementBegin
DO $$
BEGIN
    ALTER TABLE llm_rate_limits ALTER COLUMN user_id TYPE TEXT;
EXCEPTION WHEN others THEN
    RAISE NOTICE 'llm_rate_limits.user_id keeps its type: %', SQLERRM;
END
$$;
-- +goose StatementEnd
CREATE INDEX IF NOT EXISTS idx_llm_rate_limits_user_id ON llm_rate_limits (user_id);

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
       sum(reasoning_tokens)::bigint             AS reasoning_tokens
FROM llm_usage_logs
GROUP BY 1, 2, 3, 4;
-- REFRESH ... CONCURRENTLY needs a unique index.
CREATE UNIQUE INDEX idx_llm_usage_daily_summary_key ON llm_usage_daily_summary (day, user_id, provider, model);

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION refresh_llm_usage_summary() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    REFRESH MATERIALIZED VIEW CONCURRENTLY llm_usage_daily_summary;
END
$$;
-- +goose StatementEnd

-- Limit rules changed in SQL reach running sidecars through NOTIFY.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION llmusage_notify_limits() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('llmusage_limits', TG_TABLE_NAME);
    RETURN NULL;
END
$$;
-- +goose StatementEnd
DROP TRIGGER IF EXISTS llm_rate_limit_configs_notify ON llm_rate_limit_configs;
CREATE TRIGGER llm_rate_limit_configs_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON llm_rate_limit_configs
    FOR EACH STATEMENT EXECUTE FUNCTION llmusage_notify_limits();
DROP TRIGGER IF EXISTS llm_rate_limits_notify ON llm_rate_limits;
CREATE TRIGGER llm_rate_limits_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON llm_rate_limits
    FOR EACH STATEMENT EXECUTE FUNCTION llmusage_notify_limits();

-- +goose Down
SELECT 1;
