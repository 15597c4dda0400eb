-- name: enqueue
-- Insert tasks from parallel arrays in one statement; wake their queues' workers on commit.
-- params: $1 ids uuid[], $2 queues text[], $3 kinds text[], $4 payloads (JSON text)[], $5 priorities int2[], $6 max_attempts int4[], $7 scheduled_at timestamptz[] (NULL: now), $8 traceparents text[]
WITH inserted AS (
    INSERT INTO iron_defer.tasks
        (id, queue, kind, payload, priority, max_attempts, scheduled_at, traceparent)
    SELECT i.id, i.queue, i.kind, i.payload::jsonb, i.priority, i.max_attempts,
           coalesce(i.scheduled_at, now()), i.traceparent
    FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int2[], $6::int4[],
                $7::timestamptz[], $8::text[])
        AS i(id, queue, kind, payload, priority, max_attempts, scheduled_at, traceparent)
    RETURNING *
),
woken AS (
    -- One notification per queue; PostgreSQL also merges duplicates within a transaction.
    SELECT pg_notify('iron_defer', q.queue)
    FROM (SELECT DISTINCT queue FROM inserted WHERE scheduled_at <= now()) AS q
)
SELECT inserted.*, (SELECT count(*) FROM woken) AS woken_queues
FROM inserted
ORDER BY inserted.id;

-- name: enqueue_one
-- Insert one task (the common case, cheaper than the array form); wake its queue's workers
-- on commit when it is due.
-- params: $1 id, $2 queue, $3 kind, $4 payload (JSON text), $5 priority, $6 max_attempts, $7 scheduled_at (NULL: now), $8 traceparent
WITH inserted AS (
    INSERT INTO iron_defer.tasks
        (id, queue, kind, payload, priority, max_attempts, scheduled_at, traceparent)
    VALUES ($1, $2, $3, $4::text::jsonb, $5, $6, coalesce($7::timestamptz, now()), $8)
    RETURNING *
)
SELECT inserted.*,
       CASE WHEN inserted.scheduled_at <= now()
           THEN pg_notify('iron_defer', inserted.queue)
       END AS woken
FROM inserted;

-- name: get
-- One task by id.
-- params: $1 id
SELECT * FROM iron_defer.tasks WHERE id = $1;

-- name: list
-- Tasks newest first, each filter optional (NULL), keyset-paginated on id.
-- params: $1 queue, $2 status, $3 kind, $4 before id, $5 limit
SELECT *
FROM iron_defer.tasks
WHERE ($1::text IS NULL OR queue = $1)
  AND ($2::text IS NULL OR status = $2)
  AND ($3::text IS NULL OR kind = $3)
  AND ($4::uuid IS NULL OR id < $4)
ORDER BY id DESC
LIMIT $5;

-- name: cancel_pending
-- Cancel a task that has not started; no row when it is not pending.
-- params: $1 id
UPDATE iron_defer.tasks
SET status = 'cancelled', finished_at = now(), updated_at = now()
WHERE id = $1 AND status = 'pending'
RETURNING *;

-- name: claim
-- Lease up to $4 due pending tasks of one queue (kinds in $3) to worker $2 for $5 seconds.
-- params: $1 queue, $2 worker id, $3 kinds text[], $4 limit, $5 lease seconds, $6 now (NULL: database clock)
-- The picked ids go through an array so the update is primary-key lookups whatever the
-- planner thinks of the table's size (a join here was planned as a scan of the whole table).
UPDATE iron_defer.tasks AS t
SET status = 'running',
    attempts = t.attempts + 1,
    claimed_by = $2,
    claimed_until = coalesce($6::timestamptz, now()) + make_interval(secs => $5::float8),
    started_at = coalesce($6::timestamptz, now()),
    updated_at = coalesce($6::timestamptz, now())
WHERE t.id = ANY(ARRAY(
    SELECT id
    FROM iron_defer.tasks
    WHERE queue = $1
      AND status = 'pending'
      AND scheduled_at <= coalesce($6::timestamptz, now())
      AND kind = ANY($3::text[])
    ORDER BY priority DESC, scheduled_at, id
    LIMIT $4
    FOR UPDATE SKIP LOCKED
))
RETURNING t.*;

-- name: heartbeat
-- Extend the leases of the listed tasks still running under this worker; report the
-- attempt each is at, so a stale local attempt can tell it lost its lease.
-- params: $1 worker id, $2 task ids uuid[], $3 lease seconds, $4 now (NULL: database clock)
-- "claimed_by = $1" is the running check (CHECK tasks_lease_iff_running): spelling out
-- status = 'running' would let a cached generic plan scan the partial running index for
-- each id instead of looking ids up in the primary key (see finish).
UPDATE iron_defer.tasks
SET claimed_until = coalesce($4::timestamptz, now()) + make_interval(secs => $3::float8)
WHERE id = ANY($2::uuid[]) AND claimed_by = $1
RETURNING id, attempts;

-- name: finish
-- Apply attempt outcomes, each fenced on (running under this worker, same attempt); wake queues
-- that got a task back that is due now.
-- params: $1 worker id, $2 ids uuid[], $3 attempts int4[], $4 new statuses text[], $5 errors text[], $6 retry delays float8[], $7 released bool[], $8 now (NULL: database clock)
-- The fence locks each outcome's row through a lateral primary-key lookup, in id order (so two
-- statements on the same rows cannot deadlock), and only then updates the locked rows by id.
-- A plain join let the planner, trusting statistics taken when no task was running (or a
-- generic plan's guess of 10 outcomes), rescan the outcome list once per candidate row:
-- quadratic, ~1 s per batch of 500 during a fast drain. claimed_by = $1 is the running check
-- (CHECK tasks_lease_iff_running).
WITH outcome AS (
    SELECT *
    FROM unnest($2::uuid[], $3::int4[], $4::text[], $5::text[], $6::float8[], $7::bool[])
        AS o(id, attempt, status, error, delay, released)
    ORDER BY id
),
fenced AS MATERIALIZED (
    SELECT o.*
    FROM outcome AS o
    CROSS JOIN LATERAL (
        SELECT 1
        FROM iron_defer.tasks AS cur
        WHERE cur.id = o.id AND cur.claimed_by = $1 AND cur.attempts = o.attempt
        FOR UPDATE
    ) AS locked
),
updated AS (
    UPDATE iron_defer.tasks AS t
    SET status = o.status,
        attempts = CASE WHEN o.released THEN t.attempts - 1 ELSE t.attempts END,
        last_error = coalesce(o.error, t.last_error),
        scheduled_at = CASE
            WHEN o.status = 'pending'
                THEN coalesce($8::timestamptz, now()) + make_interval(secs => o.delay)
            ELSE t.scheduled_at
        END,
        claimed_by = NULL,
        claimed_until = NULL,
        finished_at = CASE
            WHEN o.status = 'pending' THEN NULL
            ELSE coalesce($8::timestamptz, now())
        END,
        updated_at = coalesce($8::timestamptz, now())
    FROM fenced AS o
    WHERE t.id = o.id
    RETURNING t.id, t.queue, t.status, t.scheduled_at
),
woken AS (
    SELECT pg_notify('iron_defer', q.queue)
    FROM (
        SELECT DISTINCT queue FROM updated
        WHERE status = 'pending' AND scheduled_at <= coalesce($8::timestamptz, now())
    ) AS q
)
SELECT id, status, scheduled_at, (SELECT count(*) FROM woken) AS woken_queues
FROM updated;

-- name: release_worker
-- Hand back every task still running under a worker: pending now, interrupted attempt not counted.
-- params: $1 worker id
WITH released AS (
    UPDATE iron_defer.tasks
    SET status = 'pending',
        attempts = attempts - 1,
        claimed_by = NULL,
        claimed_until = NULL,
        scheduled_at = now(),
        updated_at = now()
    WHERE status = 'running' AND claimed_by = $1
    RETURNING id, queue
),
woken AS (
    SELECT pg_notify('iron_defer', q.queue) FROM (SELECT DISTINCT queue FROM released) AS q
)
SELECT id, (SELECT count(*) FROM woken) AS woken_queues FROM released;

-- name: recover_expired
-- Move running tasks whose lease expired to pending (attempts left) or failed (none left).
-- params: $1 now (NULL: database clock), $2 batch limit
WITH expired AS (
    SELECT id, claimed_by
    FROM iron_defer.tasks
    WHERE status = 'running' AND claimed_until < coalesce($1::timestamptz, now())
    ORDER BY claimed_until
    LIMIT $2
    FOR UPDATE SKIP LOCKED
),
recovered AS (
    UPDATE iron_defer.tasks AS t
    SET status = CASE WHEN t.attempts >= t.max_attempts THEN 'failed' ELSE 'pending' END,
        last_error = format(
            'lease expired during attempt %s of %s: worker %s stopped renewing it',
            t.attempts, t.max_attempts, e.claimed_by),
        scheduled_at = CASE
            WHEN t.attempts >= t.max_attempts THEN t.scheduled_at
            ELSE coalesce($1::timestamptz, now())
        END,
        claimed_by = NULL,
        claimed_until = NULL,
        finished_at = CASE
            WHEN t.attempts >= t.max_attempts THEN coalesce($1::timestamptz, now())
        END,
        updated_at = coalesce($1::timestamptz, now())
    FROM expired AS e
    WHERE t.id = e.id
    RETURNING t.id, t.queue, t.kind, t.status, t.attempts, t.max_attempts,
              e.claimed_by AS previous_worker
),
woken AS (
    SELECT pg_notify('iron_defer', q.queue)
    FROM (SELECT DISTINCT queue FROM recovered WHERE status = 'pending') AS q
)
SELECT recovered.*, (SELECT count(*) FROM woken) AS woken_queues FROM recovered;

-- name: queue_statistics
-- Counts by status per queue, active workers, and the age of the oldest due pending task.
-- params: none
SELECT queue,
       count(*) FILTER (WHERE status = 'pending') AS pending,
       count(*) FILTER (WHERE status = 'pending' AND scheduled_at > now()) AS scheduled,
       count(*) FILTER (WHERE status = 'running') AS running,
       count(*) FILTER (WHERE status = 'completed') AS completed,
       count(*) FILTER (WHERE status = 'failed') AS failed,
       count(*) FILTER (WHERE status = 'cancelled') AS cancelled,
       count(DISTINCT claimed_by) FILTER (WHERE status = 'running') AS active_workers,
       extract(epoch FROM now() - min(scheduled_at)
               FILTER (WHERE status = 'pending' AND scheduled_at <= now()))::float8
           AS oldest_pending_age
FROM iron_defer.tasks
GROUP BY queue
ORDER BY queue;

-- name: active_counts
-- Pending and running tasks per queue (the gauges); only the rows of the two partial indexes.
-- params: none
SELECT queue, status, count(*) AS n
FROM iron_defer.tasks
WHERE status IN ('pending', 'running')
GROUP BY queue, status;

-- name: count_due
-- Pending tasks of these queues and kinds that are due now.
-- params: $1 queues text[], $2 kinds text[]
SELECT count(*)
FROM iron_defer.tasks
WHERE queue = ANY($1::text[])
  AND kind = ANY($2::text[])
  AND status = 'pending'
  AND scheduled_at <= now();

-- name: make_due
-- Make every future-scheduled pending task of these queues due now, and wake the queues.
-- params: $1 queues text[]
WITH moved AS (
    UPDATE iron_defer.tasks
    SET scheduled_at = now(), updated_at = now()
    WHERE queue = ANY($1::text[]) AND status = 'pending' AND scheduled_at > now()
    RETURNING queue
),
woken AS (
    SELECT pg_notify('iron_defer', q.queue) FROM (SELECT DISTINCT queue FROM moved) AS q
)
SELECT count(*) AS moved, (SELECT count(*) FROM woken) AS woken_queues FROM moved;

-- name: ping
-- Round trip on a connection: health of the LISTEN session; settling a pooled connection after a cancel.
-- params: none
SELECT 1;
