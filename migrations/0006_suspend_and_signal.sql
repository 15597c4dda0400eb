-- 0006: tasks suspended by their handler until a signal (human-in-the-loop work).

ALTER TABLE iron_defer.tasks
    -- When the task suspended (NULL unless it is suspended).
    ADD COLUMN suspended_at timestamptz,
    -- What the latest signal carried, for the attempts after it.
    ADD COLUMN signal_payload jsonb;

ALTER TABLE iron_defer.tasks
    DROP CONSTRAINT tasks_status_known,
    ADD CONSTRAINT tasks_status_known CHECK (
        status IN ('pending', 'running', 'completed', 'failed', 'cancelled', 'suspended')),
    ADD CONSTRAINT tasks_suspended_iff_suspended_at
        CHECK ((status = 'suspended') = (suspended_at IS NOT NULL));

-- The sweeper's scan for tasks suspended longer than worker.suspend_timeout.
CREATE INDEX tasks_suspended_idx
    ON iron_defer.tasks (suspended_at)
    WHERE status = 'suspended';

ALTER TABLE iron_defer.task_audit
    DROP CONSTRAINT task_audit_event_known,
    ADD CONSTRAINT task_audit_event_known CHECK (event IN (
        'enqueue', 'claim', 'complete', 'retry', 'fail', 'cancel', 'recover', 'release',
        'suspend', 'signal'));
