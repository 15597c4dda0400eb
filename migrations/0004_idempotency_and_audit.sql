-- 0004: idempotency keys and the append-only audit log.

-- A producer-chosen key, unique per queue for as long as the key is kept: while the task is
-- active and for the retention after it finished (the sweeper then sets it to NULL, which
-- frees the key without deleting the task).
ALTER TABLE iron_defer.tasks
    ADD COLUMN idempotency_key text,
    ADD CONSTRAINT tasks_idempotency_key_length
        CHECK (char_length(idempotency_key) BETWEEN 1 AND 255);

-- Enforces the uniqueness under any concurrency (enqueue relies on ON CONFLICT against it).
CREATE UNIQUE INDEX tasks_idempotency_idx
    ON iron_defer.tasks (queue, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- The sweeper's scan for keys past their retention: finished tasks still holding a key.
CREATE INDEX tasks_idempotency_expiry_idx
    ON iron_defer.tasks (finished_at)
    WHERE idempotency_key IS NOT NULL AND finished_at IS NOT NULL;

-- Raised from inside an enqueue statement when a key is reused for different work, so the
-- whole statement (every task of the batch) is undone. SQLSTATE IDK09 is ours.
CREATE FUNCTION iron_defer.idempotency_conflict(task_id uuid, queue text, key text)
RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING
        ERRCODE = 'IDK09',
        MESSAGE = format('idempotency key %L of queue %L belongs to task %s, '
                         'submitted with another kind or payload', key, queue, task_id),
        DETAIL = json_build_object('task_id', task_id, 'queue', queue, 'key', key)::text;
END
$$;

-- One row per state change of a task, written by the same statement as the change (when
-- database.audit_log is on). No foreign key: the trail outlives the tasks retention deletes.
CREATE TABLE iron_defer.task_audit (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id     uuid        NOT NULL,
    event       text        NOT NULL,
    from_status text,
    to_status   text        NOT NULL,
    at          timestamptz NOT NULL DEFAULT now(),
    attempt     integer     NOT NULL,
    worker_id   uuid,
    trace_id    text,
    metadata    jsonb,

    CONSTRAINT task_audit_event_known CHECK (event IN (
        'enqueue', 'claim', 'complete', 'retry', 'fail', 'cancel', 'recover', 'release'))
);

CREATE INDEX task_audit_task_idx ON iron_defer.task_audit (task_id, id);

CREATE FUNCTION iron_defer.task_audit_append_only()
RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'iron_defer.task_audit is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER task_audit_no_update_or_delete
    BEFORE UPDATE OR DELETE ON iron_defer.task_audit
    FOR EACH ROW EXECUTE FUNCTION iron_defer.task_audit_append_only();

CREATE TRIGGER task_audit_no_truncate
    BEFORE TRUNCATE ON iron_defer.task_audit
    FOR EACH STATEMENT EXECUTE FUNCTION iron_defer.task_audit_append_only();
