-- idx_llm_usage_user_created (user_id, created_at, id) answers every query
-- idx_llm_usage_user_id did; one index fewer to update per insert.

-- +goose Up
DROP INDEX IF EXISTS idx_llm_usage_user_id;

-- +goose Down
CREATE INDEX IF NOT EXISTS idx_llm_usage_user_id ON llm_usage_logs (user_id);
