-- Marks the default rows that 00001 seeded so that they yield to a limits
-- file (see the Postgres migration of the same name): a row stops being
-- seeded as soon as anyone changes its limit or scope.

-- +goose Up
ALTER TABLE llm_rate_limit_configs ADD COLUMN seeded INTEGER NOT NULL DEFAULT 0;

UPDATE llm_rate_limit_configs SET seeded = 1
WHERE description = 'Default' AND unit = 'requests' AND provider IS NULL AND model IS NULL
  AND ((limit_type = 'minute' AND limit_value = 30) OR (limit_type = 'day' AND limit_value = 14400));

-- +goose StatementBegin
CREATE TRIGGER IF NOT EXISTS llm_rate_limit_configs_unseed AFTER UPDATE OF limit_type, limit_value, unit, provider, model ON llm_rate_limit_configs
WHEN OLD.limit_type IS NOT NEW.limit_type OR OLD.limit_value IS NOT NEW.limit_value
  OR OLD.unit IS NOT NEW.unit OR OLD.provider IS NOT NEW.provider OR OLD.model IS NOT NEW.model
BEGIN
    UPDATE llm_rate_limit_configs SET seeded = 0 WHERE id = NEW.id;
END;
-- +goose StatementEnd

-- +goose Down
SELECT 1;
