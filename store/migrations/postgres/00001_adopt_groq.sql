-- Adopts the Groq-era objects of the system llmusage replaces (the seed's
-- "Option 1"): groq_* tables, view, function and indexes are renamed to
-- their llm_* names, keeping every row. Runs in one transaction: if both a
-- groq_* and its llm_* table hold rows, it raises and changes nothing.

-- +goose Up
-- +goose StatementBegin
DO $$
DECLARE
    pair text[];
    old_rows boolean;
    new_rows boolean;
    idx record;
BEGIN
    -- First pass: refuse before touching anything.
    FOREACH pair SLICE 1 IN ARRAY ARRAY[
        ['groq_usage_logs', 'llm_usage_logs'],
        ['groq_rate_limit_configs', 'llm_rate_limit_configs'],
        ['groq_rate_limits', 'llm_rate_limits']]
    LOOP
        IF to_regclass(pair[1]) IS NOT NULL AND to_regclass(pair[2]) IS NOT NULL THEN
            EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I)', pair[1]) INTO old_rows;
            EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I)', pair[2]) INTO new_rows;
            IF old_rows AND new_rows THEN
                RAISE EXCEPTION 'cannot adopt the legacy table %: % holds rows too; merge them into one table (or drop one) and run migrate again', pair[1], pair[2]
                    USING ERRCODE = 'unique_violation';
            END IF;
        END IF;
    END LOOP;

    -- The derived objects go first, so that an empty llm_* table can be
    -- dropped in favour of the legacy one.
    IF to_regclass('groq_usage_daily_summary') IS NOT NULL THEN
        DROP MATERIALIZED VIEW IF EXISTS llm_usage_daily_summary;
        ALTER MATERIALIZED VIEW groq_usage_daily_summary RENAME TO llm_usage_daily_summary;
    END IF;
    IF to_regprocedure('refresh_groq_usage_summary()') IS NOT NULL THEN
        DROP FUNCTION IF EXISTS refresh_llm_usage_summary();
        ALTER FUNCTION refresh_groq_usage_summary() RENAME TO refresh_llm_usage_summary;
    END IF;

    FOREACH pair SLICE 1 IN ARRAY ARRAY[
        ['groq_usage_logs', 'llm_usage_logs'],
        ['groq_rate_limit_configs', 'llm_rate_limit_configs'],
        ['groq_rate_limits', 'llm_rate_limits']]
    LOOP
        IF to_regclass(pair[1]) IS NULL THEN
            CONTINUE;
        END IF;
        IF to_regclass(pair[2]) IS NOT NULL THEN
            EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I)', pair[1]) INTO old_rows;
            IF NOT old_rows THEN
                -- An empty legacy table beside the new one: nothing to keep.
                EXECUTE format('DROP TABLE %I CASCADE', pair[1]);
                CONTINUE;
            END IF;
            EXECUTE format('DROP TABLE %I CASCADE', pair[2]);
        END IF;
        EXECUTE format('ALTER TABLE %I RENAME TO %I', pair[1], pair[2]);
        -- Rows of an adopted table were set by an operator, whatever
        -- they hold: 00004 must not take them for llmusage's seeded defaults.
        EXECUTE format('COMMENT ON TABLE %I IS %L', pair[2], 'llmusage: adopted from ' || pair[1]);
        IF EXISTS (SELECT 1 FROM pg_constraint WHERE conname = pair[1] || '_pkey') THEN
            EXECUTE format('ALTER TABLE %I RENAME CONSTRAINT %I TO %I', pair[2], pair[1] || '_pkey', pair[2] || '_pkey');
        END IF;
        IF to_regclass(pair[1] || '_id_seq') IS NOT NULL AND to_regclass(pair[2] || '_id_seq') IS NULL THEN
            EXECUTE format('ALTER SEQUENCE %I RENAME TO %I', pair[1] || '_id_seq', pair[2] || '_id_seq');
        END IF;
    END LOOP;

    FOR idx IN SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() AND indexname LIKE 'idx\_groq\_%' LOOP
        IF to_regclass(replace(idx.indexname, 'idx_groq_', 'idx_llm_')) IS NULL THEN
            EXECUTE format('ALTER INDEX %I RENAME TO %I', idx.indexname, replace(idx.indexname, 'idx_groq_', 'idx_llm_'));
        END IF;
    END LOOP;
END
$$;
-- +goose StatementEnd

-- +goose Down
SELECT 1;
