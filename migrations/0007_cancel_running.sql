-- 0007: cancelling running tasks. A cancel request on a running task is recorded here and
-- announced on the iron_defer_cancel channel; the engine running the task cancels its
-- handler and writes the attempt's end as cancelled. The request also holds when the
-- announcement is missed (the heartbeat reports it), when the attempt fails or is handed back
-- (it ends cancelled, never retried) and when its engine dies (the sweeper cancels it).

ALTER TABLE iron_defer.tasks
    -- When cancellation of the running attempt was first requested (NULL: never).
    ADD COLUMN cancel_requested_at timestamptz,
    -- Only a running task waits for its cancellation; finished ones keep the time as a record.
    ADD CONSTRAINT tasks_cancel_request_status
        CHECK (cancel_requested_at IS NULL OR status IN ('running', 'completed', 'failed', 'cancelled'));

ALTER TABLE iron_defer.task_audit
    DROP CONSTRAINT task_audit_event_known,
    ADD CONSTRAINT task_audit_event_known CHECK (event IN (
        'enqueue', 'claim', 'complete', 'retry', 'fail', 'cancel', 'recover', 'release',
        'suspend', 'signal', 'cancel_request'));
