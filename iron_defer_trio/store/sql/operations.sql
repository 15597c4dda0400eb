-- Operators' statements: re-running failed and cancelled tasks (one, or many by filter with a
-- confirmed count) and deleting finished tasks past their retention.

-- name: retry
-- Make a failed or cancelled task pending again, due now, with a new attempt budget
-- (attempts 0; max_attempts unchanged). last_error and the checkpoint stay (the next attempt
-- resumes from it); the cancel request and finished_at are cleared. Wakes its queue on
-- commit. No row when the task is absent or in another status. Audited when $2.
-- params: $1 id, $2 audit bool
WITH previous AS (
    SELECT id, status, attempts
    FROM iron_defer.tasks
    WHERE id = $1 AND status IN ('failed', 'cancelled')
    FOR UPDATE
),
retried AS (
    UPDATE iron_defer.tasks AS t
    SET status = 'pending',
        attempts = 0,
        scheduled_at = now(),
        finished_at = NULL,
        cancel_requested_at = NULL,
        updated_at = now()
    FROM previous AS p
    WHERE t.id = p.id
    RETURNING t.*, p.status AS previous_status, p.attempts AS previous_attempts
),
audited AS (
    INSERT INTO iron_defer.task_audit
        (task_id, event, from_status, to_status, attempt, trace_id, metadata)
    SELECT id, 'retry_manual', previous_status, status, attempts,
           split_part(traceparent, '-', 2),
           jsonb_build_object('previous_attempts', previous_attempts)
    FROM retried
    WHERE $2::boolean
)
SELECT retried.*, pg_notify('iron_defer', retried.queue) AS woken FROM retried;

-- name: count_retryable
-- How many tasks of a queue in one status (and of one kind when $3 is not NULL) a bulk retry
-- would take, counting no further than $4 rows (the caller asks for its cap + 1).
-- params: $1 queue, $2 status, $3 kind (NULL: any), $4 most rows to count
SELECT count(*) AS matched
FROM (
    SELECT 1
    FROM iron_defer.tasks
    WHERE queue = $1 AND status = $2 AND ($3::text IS NULL OR kind = $3)
    LIMIT $4
) AS matching;

-- name: retry_many
-- Retry (as the retry statement does) the oldest-finished $5 tasks of a queue in one status
-- (and of one kind when $3 is not NULL), but only when exactly $4 of them match: otherwise
-- nothing changes. The matching rows are locked first, so the count that is compared is the
-- set that is changed. Wakes the queue on commit. Audited when $6.
-- params: $1 queue, $2 status, $3 kind (NULL: any), $4 confirmed count, $5 cap, $6 audit bool
-- The update looks the locked ids up through an array (primary-key lookups), not a join that
-- a generic plan may turn into a scan of the whole table.
WITH matching AS MATERIALIZED (
    SELECT id, attempts
    FROM iron_defer.tasks
    -- finished_at IS NOT NULL holds for every failed or cancelled task: it lets the retention
    -- index (status, finished_at) serve the filter and the order.
    WHERE queue = $1 AND status = $2 AND ($3::text IS NULL OR kind = $3)
      AND finished_at IS NOT NULL
    ORDER BY finished_at
    LIMIT $5
    FOR UPDATE
),
confirmed AS (
    SELECT count(*) AS matched FROM matching
),
retried AS (
    UPDATE iron_defer.tasks
    SET status = 'pending',
        attempts = 0,
        scheduled_at = now(),
        finished_at = NULL,
        cancel_requested_at = NULL,
        updated_at = now()
    WHERE id = ANY(ARRAY(SELECT id FROM matching)) AND (SELECT matched FROM confirmed) = $4
    RETURNING id, queue, status, attempts, traceparent
),
audited AS (
    INSERT INTO iron_defer.task_audit
        (task_id, event, from_status, to_status, attempt, trace_id, metadata)
    SELECT r.id, 'retry_manual', $2, r.status, r.attempts, split_part(r.traceparent, '-', 2),
           jsonb_build_object('previous_attempts', m.attempts, 'bulk', true)
    FROM retried AS r
    JOIN matching AS m ON m.id = r.id
    WHERE $6::boolean
),
woken AS (
    SELECT pg_notify('iron_defer', q.queue) FROM (SELECT DISTINCT queue FROM retried) AS q
)
SELECT (SELECT matched FROM confirmed) AS matched,
       (SELECT count(*) FROM retried) AS retried,
       (SELECT count(*) FROM woken) AS woken_queues;

-- name: delete_finished
-- Delete up to $4 tasks of final status $2 that finished more than $3 seconds before $1,
-- oldest first, skipping rows another statement holds (a retry, another engine's sweep).
-- Their audit rows stay (no foreign key); their idempotency keys go with them.
-- params: $1 now (NULL: database clock), $2 status, $3 retention seconds, $4 batch limit
-- The picked ids go through an array (as in claim), so the delete is primary-key lookups
-- whatever the planner believes about the table: a join was planned as a hash join over a
-- sequential scan of the whole table under a generic plan.
WITH deleted AS (
    DELETE FROM iron_defer.tasks
    WHERE id = ANY(ARRAY(
        SELECT id
        FROM iron_defer.tasks
        WHERE status = $2
          AND finished_at < coalesce($1::timestamptz, now()) - make_interval(secs => $3::float8)
        ORDER BY finished_at
        LIMIT $4
        FOR UPDATE SKIP LOCKED
    ))
    RETURNING id
)
SELECT count(*) AS deleted FROM deleted;
