-- 0005: durable progress (checkpoint) and per-task attempt timeouts.

-- The handler's latest progress, as JSON (the engine bounds it to 1 MiB). Kept across
-- attempts, so a later attempt resumes from it; cleared when the task completes.
ALTER TABLE iron_defer.tasks
    ADD COLUMN checkpoint jsonb,
    -- Seconds an attempt may run before it counts as failed (NULL: no limit).
    ADD COLUMN attempt_timeout float8,
    ADD CONSTRAINT tasks_attempt_timeout_range
        CHECK (attempt_timeout > 0 AND attempt_timeout <= 2592000);
