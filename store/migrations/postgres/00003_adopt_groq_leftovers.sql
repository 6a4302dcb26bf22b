-- After adopting a Groq-era database (00001) no object of the usage and
-- rate-limit tables keeps a groq name: constraints (a legacy UNIQUE
-- (limit_type) left groq_rate_limit_configs_limit_type_key), their
-- indexes, other indexes, sequences owned by the tables' columns, and
-- triggers. Only objects that belong to the three llm_* tables are
-- renamed: an application's own groq_* tables are not ours to touch.
-- "groq" becomes "llm" in each name; a name already taken is left as it is.

-- +goose Up
-- +goose StatementBegin
DO $$
DECLARE
    o record;
BEGIN
    FOR o IN
        SELECT c.conrelid::regclass AS tbl, c.conname::text AS name
        FROM pg_constraint c
        WHERE c.conrelid IN (SELECT to_regclass(t) FROM unnest(ARRAY['llm_usage_logs', 'llm_rate_limit_configs', 'llm_rate_limits']) t)
          AND c.conname LIKE '%groq%'
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = o.tbl AND conname = replace(o.name, 'groq', 'llm'))
           AND to_regclass(replace(o.name, 'groq', 'llm')) IS NULL THEN
            -- Renaming a unique or primary key constraint renames its index too.
            EXECUTE format('ALTER TABLE %s RENAME CONSTRAINT %I TO %I', o.tbl, o.name, replace(o.name, 'groq', 'llm'));
        END IF;
    END LOOP;

    FOR o IN
        SELECT i.indexrelid::regclass::text AS name, ic.relname::text AS relname
        FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
        WHERE i.indrelid IN (SELECT to_regclass(t) FROM unnest(ARRAY['llm_usage_logs', 'llm_rate_limit_configs', 'llm_rate_limits', 'llm_usage_daily_summary']) t)
          AND ic.relname LIKE '%groq%'
    LOOP
        IF to_regclass(replace(o.relname, 'groq', 'llm')) IS NULL THEN
            EXECUTE format('ALTER INDEX %s RENAME TO %I', o.name, replace(o.relname, 'groq', 'llm'));
        END IF;
    END LOOP;

    FOR o IN
        SELECT s.oid::regclass::text AS name, s.relname::text AS relname
        FROM pg_class s JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = s.oid AND d.deptype IN ('a', 'i')
        WHERE s.relkind = 'S'
          AND d.refobjid IN (SELECT to_regclass(t) FROM unnest(ARRAY['llm_usage_logs', 'llm_rate_limit_configs', 'llm_rate_limits']) t)
          AND s.relname LIKE '%groq%'
    LOOP
        IF to_regclass(replace(o.relname, 'groq', 'llm')) IS NULL THEN
            EXECUTE format('ALTER SEQUENCE %s RENAME TO %I', o.name, replace(o.relname, 'groq', 'llm'));
        END IF;
    END LOOP;

    FOR o IN
        SELECT t.tgrelid::regclass AS tbl, t.tgname::text AS name
        FROM pg_trigger t
        WHERE NOT t.tgisinternal
          AND t.tgrelid IN (SELECT to_regclass(x) FROM unnest(ARRAY['llm_usage_logs', 'llm_rate_limit_configs', 'llm_rate_limits']) x)
          AND t.tgname LIKE '%groq%'
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = o.tbl AND tgname = replace(o.name, 'groq', 'llm')) THEN
            EXECUTE format('ALTER TRIGGER %I ON %s RENAME TO %I', o.name, o.tbl, replace(o.name, 'groq', 'llm'));
        END IF;
    END LOOP;
END
$$;
-- +goose StatementEnd

-- +goose Down
SELECT 1;
