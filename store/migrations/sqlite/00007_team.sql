-- Teams (issue #22): each record's optional team_id, the daily totals
-- keyed by team too, the indexes that sum a pool's spend (every user's,
-- or one team's), and the team_id and per columns of the rule tables; see
-- the Postgres migration of the same name. In the daily totals a call
-- without a team has team_id '' (the key's NULLs would all differ); the
-- raw rows keep NULL.

-- +goose Up
ALTER TABLE llm_usage_logs ADD COLUMN team_id TEXT;

-- Spent groups by team now: team_id joins the covering per-user index.
DROP INDEX IF EXISTS idx_llm_usage_user_created;
CREATE INDEX idx_llm_usage_user_created ON llm_usage_logs (user_id, created_at DESC, id DESC, provider, model, cost_nano_usd, team_id);
-- A pool's spend reads the part of its period past the whole days from a
-- created_at range, from this index alone.
CREATE INDEX IF NOT EXISTS idx_llm_usage_created_cover ON llm_usage_logs (created_at, team_id, provider, model, cost_nano_usd);
-- One team's calls, for its logs pages and stats.
CREATE INDEX IF NOT EXISTS idx_llm_usage_team_created ON llm_usage_logs (team_id, created_at DESC, id DESC, provider, model, cost_nano_usd)
    WHERE team_id IS NOT NULL;

-- The totals' key gains team_id: a WITHOUT ROWID table's primary key is
-- its layout, so the table is copied into a new one.
CREATE TABLE llmusage_daily_totals_team (
    day                TEXT NOT NULL,
    user_id            TEXT NOT NULL,
    provider           TEXT NOT NULL,
    model              TEXT NOT NULL,
    calls              INTEGER NOT NULL,
    errors             INTEGER NOT NULL,
    tokens_used        INTEGER NOT NULL,
    prompt_tokens      INTEGER NOT NULL,
    completion_tokens  INTEGER NOT NULL,
    cached_tokens      INTEGER NOT NULL,
    reasoning_tokens   INTEGER NOT NULL,
    cost_nano_usd      INTEGER,
    unpriced_calls     INTEGER NOT NULL,
    cache_write_tokens INTEGER NOT NULL DEFAULT 0,
    team_id            TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (day, user_id, provider, model, team_id)
) WITHOUT ROWID;
INSERT INTO llmusage_daily_totals_team (day, user_id, provider, model, calls, errors, tokens_used, prompt_tokens,
    completion_tokens, cached_tokens, reasoning_tokens, cost_nano_usd, unpriced_calls, cache_write_tokens, team_id)
SELECT day, user_id, provider, model, calls, errors, tokens_used, prompt_tokens,
       completion_tokens, cached_tokens, reasoning_tokens, cost_nano_usd, unpriced_calls, cache_write_tokens, ''
FROM llmusage_daily_totals;
DROP VIEW IF EXISTS llm_usage_daily_summary;
DROP TABLE llmusage_daily_totals;
ALTER TABLE llmusage_daily_totals_team RENAME TO llmusage_daily_totals;
CREATE INDEX IF NOT EXISTS idx_llmusage_daily_totals_user ON llmusage_daily_totals (user_id, day);
CREATE INDEX IF NOT EXISTS idx_llmusage_daily_totals_team ON llmusage_daily_totals (team_id, day);

CREATE VIEW llm_usage_daily_summary AS
SELECT day, user_id, provider, model, calls, errors, tokens_used, prompt_tokens, completion_tokens,
       cached_tokens, reasoning_tokens, cost_nano_usd,
       CASE WHEN cost_nano_usd IS NOT NULL
            THEN rtrim(rtrim(printf('%d.%09d', cost_nano_usd / 1000000000, cost_nano_usd % 1000000000), '0'), '.') END AS cost_usd,
       unpriced_calls, cache_write_tokens, team_id
FROM llmusage_daily_totals;

-- Rule rows scoped to a team, and shared per user (NULL), team or all.
ALTER TABLE llm_rate_limit_configs ADD COLUMN team_id TEXT;
ALTER TABLE llm_rate_limit_configs ADD COLUMN per TEXT;
ALTER TABLE llm_rate_limits ADD COLUMN team_id TEXT;
ALTER TABLE llm_rate_limits ADD COLUMN per TEXT;

-- A seeded default given a team or a sharing is an operator's row.
DROP TRIGGER IF EXISTS llm_rate_limit_configs_unseed;
-- +goose StatementBegin
CREATE TRIGGER llm_rate_limit_configs_unseed AFTER UPDATE OF limit_type, limit_value, unit, provider, model, limit_usd, team_id, per ON llm_rate_limit_configs
WHEN OLD.limit_type IS NOT NEW.limit_type OR OLD.limit_value IS NOT NEW.limit_value
  OR OLD.unit IS NOT NEW.unit OR OLD.provider IS NOT NEW.provider OR OLD.model IS NOT NEW.model
  OR OLD.limit_usd IS NOT NEW.limit_usd OR OLD.team_id IS NOT NEW.team_id OR OLD.per IS NOT NEW.per
BEGIN
    UPDATE llm_rate_limit_configs SET seeded = 0 WHERE id = NEW.id;
END;
-- +goose StatementEnd

-- +goose Down
SELECT 1;
