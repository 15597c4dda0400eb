-- 0010: re-running failed and cancelled tasks, and deleting finished tasks after their
-- retention (the sweeper, in bounded batches).

-- The retention scan: finished tasks of one status by age. finished_at is set exactly when
-- the status is final (CHECK tasks_finished_iff_final), so active tasks never enter this
-- index, and "finished_at < $cutoff" implies the predicate even under a generic plan.
CREATE INDEX tasks_retention_idx
    ON iron_defer.tasks (status, finished_at)
    WHERE finished_at IS NOT NULL;

-- A queue table is rewritten all the time (every task is inserted, updated a few times and
-- deleted), so the defaults (vacuum once 20 % of the table is dead, analyze at 10 %) let
-- dead rows and stale statistics pile up for far too long on a large table. Vacuum and
-- analyze after a fixed number of changes instead; docs/guides/retention.md explains them.
ALTER TABLE iron_defer.tasks SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.01,
    autovacuum_vacuum_insert_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_analyze_threshold = 1000
);

ALTER TABLE iron_defer.task_audit
    DROP CONSTRAINT task_audit_event_known,
    ADD CONSTRAINT task_audit_event_known CHECK (event IN (
        'enqueue', 'claim', 'complete', 'retry', 'fail', 'cancel', 'recover', 'release',
        'suspend', 'signal', 'cancel_request', 'retry_manual'));
