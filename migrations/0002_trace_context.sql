-- 0002: the W3C trace context (traceparent) of the code that enqueued each task, so every
-- attempt runs as a span of that trace.
--
-- NOT VALID: existing rows are all NULL, and skipping the full-table validation keeps this
-- migration instant on a large table; the constraint still holds for every new row.
ALTER TABLE iron_defer.tasks ADD COLUMN traceparent text;
ALTER TABLE iron_defer.tasks
    ADD CONSTRAINT tasks_traceparent_format
    CHECK (traceparent ~ '^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$') NOT VALID;
