-- Marks the default rows that 00002 seeded (30 requests a minute, 14,400
-- a day, description 'Default') so that they yield to a limits file: a
-- default nobody set must not override what an operator wrote. A row
-- stops being seeded as soon as anyone changes its limit or scope (the
-- seed's UPDATE ... SET limit_value = 100), and rows inserted later, or
-- adopted from a Groq-era database (00001 comments those tables), never
-- are.

-- +goose Up
ALTER TABLE llm_rate_limit_configs ADD COLUMN IF NOT EXISTS seeded BOOLEAN NOT NULL DEFAULT false;

UPDATE llm_rate_limit_configs SET seeded = true
WHERE description = 'Default' AND unit = 'requests' AND provider IS NULL AND model IS NULL
  AND ((limit_type = 'minute' AND limit_value = 30) OR (limit_type = 'day' AND limit_value = 14400))
  AND coalesce(obj_description('llm_rate_limit_configs'::regclass, 'pg_class'), '') NOT LIKE 'llmusage: adopted from %';

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION llmusage_unseed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.seeded := false;
    RETURN NEW;
END
$$;
-- +goose StatementEnd
DROP TRIGGER IF EXISTS llm_rate_limit_configs_unseed ON llm_rate_limit_configs;
-- An UPDATE that writes the same values (an ORM saving the row again)
-- changes nothing, so it leaves the row seeded.
CREATE TRIGGER llm_rate_limit_configs_unseed BEFORE UPDATE OF limit_type, limit_value, unit, provider, model ON llm_rate_limit_configs
    FOR EACH ROW
    WHEN (OLD.limit_type IS DISTINCT FROM NEW.limit_type OR OLD.limit_value IS DISTINCT FROM NEW.limit_value
          OR OLD.unit IS DISTINCT FROM NEW.unit OR OLD.provider IS DISTINCT FROM NEW.provider OR OLD.model IS DISTINCT FROM NEW.model)
    EXECUTE FUNCTION llmusage_unseed();

-- +goose Down
SELECT 1;
