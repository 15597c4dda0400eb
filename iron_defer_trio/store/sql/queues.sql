-- name: pause_queue
-- Pause a queue on every engine; idempotent (a repeated pause keeps the first time). Always
-- one row: the queue and since when it is paused.
-- params: $1 queue
-- DO UPDATE (a no-op write) rather than DO NOTHING returns the row even when a concurrent
-- pause committed after this statement's snapshot.
INSERT INTO iron_defer.queue_pauses AS p (queue)
VALUES ($1)
ON CONFLICT (queue) DO UPDATE SET paused_at = p.paused_at
RETURNING queue, paused_at;

-- name: resume_queue
-- Resume a paused queue and wake its workers on commit; no row when it was not paused.
-- params: $1 queue
WITH resumed AS (
    DELETE FROM iron_defer.queue_pauses
    WHERE queue = $1
    RETURNING queue
)
SELECT queue, pg_notify('iron_defer', queue) AS woken FROM resumed;
