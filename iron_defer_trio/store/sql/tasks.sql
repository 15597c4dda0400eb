-- name: enqueue
-- Insert tasks from parallel arrays in one statement, in input order. A task whose idempotency
-- key its queue already holds is not inserted: the holder comes back with created = false,
-- or, when the holder is different work (kind, payload or region), the whole statement fails
-- with SQLSTATE IDK09. Wakes the queues of new due tasks on commit; audits new tasks when $10.
-- params: $1 ids uuid[], $2 queues text[], $3 kinds text[], $4 payloads (JSON text)[], $5 priorities int2[], $6 max_attempts int4[], $7 scheduled_at timestamptz[] (NULL: now), $8 traceparents text[], $9 idempotency keys text[], $10 audit bool, $11 attempt timeouts float8[], $12 regions text[]
-- ON CONFLICT DO UPDATE (a no-op write of the key) rather than DO NOTHING: it returns the
-- holder even when the holder committed after this statement's snapshot, so concurrent
-- duplicates resolve in one statement without a retry. "match" pairs each written row with
-- its input: by key when there is one, else by id (queue names cannot hold U+001F).
WITH input AS (
    SELECT i.*, i.payload::jsonb AS document,
           CASE WHEN i.idempotency_key IS NULL THEN i.id::text
                ELSE i.queue || U&'\001F' || i.idempotency_key END AS match
    FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int2[], $6::int4[],
                $7::timestamptz[], $8::text[], $9::text[], $11::float8[], $12::text[])
        WITH ORDINALITY
        AS i(id, queue, kind, payload, priority, max_attempts, scheduled_at, traceparent,
             idempotency_key, attempt_timeout, region, n)
),
written AS (
    INSERT INTO iron_defer.tasks
        (id, queue, kind, payload, priority, max_attempts, scheduled_at, traceparent,
         idempotency_key, attempt_timeout, region)
    SELECT id, queue, kind, document, priority, max_attempts, coalesce(scheduled_at, now()),
           traceparent, idempotency_key, attempt_timeout, region
    FROM input
    -- Keys are taken in one global order, so batches racing on the same keys wait for each
    -- other instead of deadlocking.
    ORDER BY queue, idempotency_key
    ON CONFLICT (queue, idempotency_key) WHERE idempotency_key IS NOT NULL
        DO UPDATE SET idempotency_key = EXCLUDED.idempotency_key
    RETURNING *
),
result AS MATERIALIZED (
    SELECT w.*, w.id = i.id AS created, i.n,
           CASE WHEN w.id <> i.id AND (w.kind <> i.kind OR w.payload <> i.document
                                       OR w.region IS DISTINCT FROM i.region)
               THEN iron_defer.idempotency_conflict(w.id, w.queue, w.idempotency_key)
           END AS conflict
    FROM written AS w
    JOIN input AS i ON i.match = CASE WHEN w.idempotency_key IS NULL THEN w.id::text
                                      ELSE w.queue || U&'\001F' || w.idempotency_key END
),
audited AS (
    INSERT INTO iron_defer.task_audit (task_id, event, from_status, to_status, attempt, trace_id)
    SELECT id, 'enqueue', NULL, status, attempts, split_part(traceparent, '-', 2)
    FROM result
    WHERE created AND $10::boolean
),
woken AS (
    -- One notification per queue; PostgreSQL also merges duplicates within a transaction.
    SELECT pg_notify('iron_defer', q.queue)
    FROM (SELECT DISTINCT queue FROM result WHERE created AND scheduled_at <= now()) AS q
)
SELECT result.*, (SELECT count(*) FROM woken) AS woken_queues
FROM result
ORDER BY result.n;

-- name: enqueue_uniform
-- The enqueue statement for a batch without idempotency keys whose tasks share every other
-- field (one task class, one call: the usual bulk enqueue): ids and payloads as arrays, the
-- rest once. About a fifth cheaper than the general form (no key matching, no per-row
-- options). Every row is new. Rows come back in input order: the ids are strictly
-- increasing in input order (UUIDv7 from one process). Wakes the queue on commit if due;
-- audits when $9.
-- params: $1 ids uuid[], $2 queue, $3 kind, $4 payloads (JSON text)[], $5 priority, $6 max_attempts, $7 scheduled_at (NULL: now), $8 traceparent, $9 audit bool, $10 attempt timeout seconds, $11 region
WITH written AS (
    INSERT INTO iron_defer.tasks
        (id, queue, kind, payload, priority, max_attempts, scheduled_at, traceparent,
         attempt_timeout, region)
    SELECT i.id, $2::text, $3::text, i.payload::jsonb, $5::int2, $6::int4,
           coalesce($7::timestamptz, now()), $8::text, $10::float8, $11::text
    FROM unnest($1::uuid[], $4::text[]) AS i(id, payload)
    RETURNING *
),
audited AS (
    INSERT INTO iron_defer.task_audit (task_id, event, from_status, to_status, attempt, trace_id)
    SELECT id, 'enqueue', NULL, status, attempts, split_part(traceparent, '-', 2)
    FROM written
    WHERE $9::boolean
),
woken AS (
    SELECT pg_notify('iron_defer', q.queue)
    FROM (SELECT DISTINCT queue FROM written WHERE scheduled_at <= now()) AS q
)
SELECT written.*, true AS created, (SELECT count(*) FROM woken) AS woken_queues
FROM written
ORDER BY written.id;

-- name: enqueue_one
-- The enqueue statement for one task (the common case, cheaper than the array form).
-- params: $1 id, $2 queue, $3 kind, $4 payload (JSON text), $5 priority, $6 max_attempts, $7 scheduled_at (NULL: now), $8 traceparent, $9 idempotency key, $10 audit bool, $11 attempt timeout seconds, $12 region
WITH written AS (
    INSERT INTO iron_defer.tasks
        (id, queue, kind, payload, priority, max_attempts, scheduled_at, traceparent,
         idempotency_key, attempt_timeout, region)
    VALUES ($1, $2, $3, $4::text::jsonb, $5, $6, coalesce($7::timestamptz, now()), $8, $9,
            $11::float8, $12::text)
    ON CONFLICT (queue, idempotency_key) WHERE idempotency_key IS NOT NULL
        DO UPDATE SET idempotency_key = EXCLUDED.idempotency_key
    RETURNING *
),
result AS MATERIALIZED (
    SELECT w.*, w.id = $1 AS created,
           CASE WHEN w.id <> $1 AND (w.kind <> $3 OR w.payload <> $4::text::jsonb
                                     OR w.region IS DISTINCT FROM $12::text)
               THEN iron_defer.idempotency_conflict(w.id, w.queue, w.idempotency_key)
           END AS conflict
    FROM written AS w
),
audited AS (
    INSERT INTO iron_defer.task_audit (task_id, event, from_status, to_status, attempt, trace_id)
    SELECT id, 'enqueue', NULL, status, attempts, split_part(traceparent, '-', 2)
    FROM result
    WHERE created AND $10::boolean
)
SELECT result.*,
       CASE WHEN result.created AND result.scheduled_at <= now()
           THEN pg_notify('iron_defer', result.queue)
       END AS woken
FROM result;

-- name: get
-- One task by id.
-- params: $1 id
SELECT * FROM iron_defer.tasks WHERE id = $1;

-- name: list
-- Tasks newest first, each filter optional (NULL), keyset-paginated on id. An id prefix is
-- given as the range of ids it covers ($6..$7), read through the primary key.
-- params: $1 queue, $2 status, $3 kind, $4 before id, $5 limit, $6 lowest id (NULL: any), $7 highest id
SELECT *
FROM iron_defer.tasks
WHERE ($1::text IS NULL OR queue = $1)
  AND ($2::text IS NULL OR status = $2)
  AND ($3::text IS NULL OR kind = $3)
  AND ($4::uuid IS NULL OR id < $4)
  AND ($6::uuid IS NULL OR id BETWEEN $6 AND $7::uuid)
ORDER BY id DESC
LIMIT $5;

-- name: cancel
-- Cancel a task: a pending or suspended one is cancelled now; for a running one the request is
-- recorded (the first time only) and its id announced on iron_defer_cancel at commit, so the
-- engine running it cancels the handler. No row when the task is absent or already finished.
-- Audited when $2 (cancel, or cancel_request for a running task's first request).
-- params: $1 id, $2 audit bool
WITH previous AS (
    SELECT id, status, cancel_requested_at
    FROM iron_defer.tasks
    WHERE id = $1 AND status IN ('pending', 'suspended', 'running')
    FOR UPDATE
),
changed AS (
    UPDATE iron_defer.tasks AS t
    SET status = CASE WHEN p.status = 'running' THEN 'running' ELSE 'cancelled' END,
        finished_at = CASE WHEN p.status = 'running' THEN NULL ELSE now() END,
        suspended_at = NULL,
        cancel_requested_at = CASE
            WHEN p.status = 'running' THEN coalesce(p.cancel_requested_at, now())
        END,
        updated_at = now()
    FROM previous AS p
    WHERE t.id = p.id
    RETURNING t.*, p.status AS previous_status,
              p.status = 'running' AND p.cancel_requested_at IS NULL AS first_request
),
audited AS (
    INSERT INTO iron_defer.task_audit (task_id, event, from_status, to_status, attempt, trace_id)
    SELECT id, CASE WHEN status = 'running' THEN 'cancel_request' ELSE 'cancel' END,
           previous_status, status, attempts, split_part(traceparent, '-', 2)
    FROM changed
    WHERE $2::boolean AND (status = 'cancelled' OR first_request)
),
announced AS (
    -- Every request is announced, a repeated one too: it covers a lost notification.
    SELECT pg_notify('iron_defer_cancel', id::text) FROM changed WHERE status = 'running'
)
SELECT *, (SELECT count(*) FROM announced) AS announced FROM changed;

-- name: claim
-- Lease up to $4 due pending tasks of one queue (kinds in $3) to worker $2 for $5 seconds:
-- unpinned tasks, and those pinned to region $8 when the worker has one. None while the queue
-- is paused. Audited when $7.
-- params: $1 queue, $2 worker id, $3 kinds text[], $4 limit, $5 lease seconds, $6 now (NULL: database clock), $7 audit bool, $8 worker region (NULL: none)
-- Unpinned and pinned tasks are two scans of the claim index, each an equality prefix read in
-- claim order (an OR of the two would make the planner sort every pending task of the queue);
-- the best $4 of both are claimed, and the rest of the locked rows are free again at commit.
-- The picked ids go through an array so the update is primary-key lookups whatever the
-- planner thinks of the table's size (a join here was planned as a scan of the whole table).
WITH open_queue AS (
    SELECT NOT EXISTS (SELECT 1 FROM iron_defer.queue_pauses WHERE queue = $1) AS open
),
unpinned AS (
    SELECT id, priority, scheduled_at
    FROM iron_defer.tasks
    WHERE queue = $1
      AND coalesce(region, '') = ''
      AND status = 'pending'
      AND scheduled_at <= coalesce($6::timestamptz, now())
      AND kind = ANY($3::text[])
      AND (SELECT open FROM open_queue)
    ORDER BY priority DESC, scheduled_at, id
    LIMIT $4
    FOR UPDATE SKIP LOCKED
),
pinned AS (
    SELECT id, priority, scheduled_at
    FROM iron_defer.tasks
    WHERE queue = $1
      AND coalesce(region, '') = $8::text
      AND status = 'pending'
      AND scheduled_at <= coalesce($6::timestamptz, now())
      AND kind = ANY($3::text[])
      AND (SELECT open FROM open_queue)
    ORDER BY priority DESC, scheduled_at, id
    LIMIT $4
    FOR UPDATE SKIP LOCKED
),
claimed AS (
    UPDATE iron_defer.tasks AS t
    SET status = 'running',
        attempts = t.attempts + 1,
        claimed_by = $2,
        claimed_until = coalesce($6::timestamptz, now()) + make_interval(secs => $5::float8),
        started_at = coalesce($6::timestamptz, now()),
        updated_at = coalesce($6::timestamptz, now())
    WHERE t.id = ANY(ARRAY(
        SELECT id
        FROM (SELECT * FROM unpinned UNION ALL SELECT * FROM pinned) AS candidate
        ORDER BY priority DESC, scheduled_at, id
        LIMIT $4
    ))
    RETURNING t.*
),
audited AS (
    INSERT INTO iron_defer.task_audit
        (task_id, event, from_status, to_status, at, attempt, worker_id, trace_id)
    SELECT id, 'claim', 'pending', status, updated_at, attempts, $2,
           split_part(traceparent, '-', 2)
    FROM claimed
    WHERE $7::boolean
)
SELECT * FROM claimed;

-- name: save_checkpoint
-- Store a running attempt's progress, fenced like its outcome (this worker, same attempt);
-- no row when the attempt lost its lease.
-- params: $1 worker id, $2 task id, $3 attempt, $4 checkpoint (JSON text)
UPDATE iron_defer.tasks
SET checkpoint = $4::text::jsonb, updated_at = now()
WHERE id = $2 AND claimed_by = $1 AND attempts = $3
RETURNING id;

-- name: signal
-- Resume a suspended task: pending now with the signal's payload, its queue woken on commit.
-- No row when the task is not suspended. Audited when $3.
-- params: $1 id, $2 payload (JSON text), $3 audit bool
WITH resumed AS (
    UPDATE iron_defer.tasks
    SET status = 'pending',
        signal_payload = $2::text::jsonb,
        suspended_at = NULL,
        scheduled_at = now(),
        updated_at = now()
    WHERE id = $1 AND status = 'suspended'
    RETURNING *
),
audited AS (
    INSERT INTO iron_defer.task_audit (task_id, event, from_status, to_status, attempt, trace_id)
    SELECT id, 'signal', 'suspended', status, attempts, split_part(traceparent, '-', 2)
    FROM resumed
    WHERE $3::boolean
)
SELECT resumed.*, pg_notify('iron_defer', resumed.queue) AS woken FROM resumed;

-- name: fail_suspended
-- Fail up to $3 tasks suspended longer than $2 seconds (no signal came). Audited when $4.
-- params: $1 now (NULL: database clock), $2 suspend timeout seconds, $3 batch limit, $4 audit bool, $5 worker id
WITH expired AS (
    SELECT id
    FROM iron_defer.tasks
    WHERE status = 'suspended'
      AND suspended_at < coalesce($1::timestamptz, now()) - make_interval(secs => $2::float8)
    ORDER BY suspended_at
    LIMIT $3
    FOR UPDATE SKIP LOCKED
),
failed AS (
    UPDATE iron_defer.tasks AS t
    SET status = 'failed',
        last_error = format('no signal within the suspend timeout (%s s) after it suspended '
                            'at %s', $2::float8, t.suspended_at),
        suspended_at = NULL,
        finished_at = coalesce($1::timestamptz, now()),
        updated_at = coalesce($1::timestamptz, now())
    FROM expired AS e
    WHERE t.id = e.id
    RETURNING t.id, t.queue, t.kind, t.attempts, t.last_error, t.traceparent, t.updated_at
),
audited AS (
    INSERT INTO iron_defer.task_audit
        (task_id, event, from_status, to_status, at, attempt, worker_id, trace_id, metadata)
    SELECT id, 'fail', 'suspended', 'failed', updated_at, attempts, $5::uuid,
           split_part(traceparent, '-', 2), jsonb_build_object('error', last_error)
    FROM failed
    WHERE $4::boolean
)
SELECT id, queue, kind, attempts, last_error FROM failed;

-- name: heartbeat
-- Extend the leases of the listed tasks still running under this worker; report the
-- attempt each is at, so a stale local attempt can tell it lost its lease, and whether its
-- cancellation was requested (the backstop for a missed iron_defer_cancel notification).
-- params: $1 worker id, $2 task ids uuid[], $3 lease seconds, $4 now (NULL: database clock)
-- "claimed_by = $1" is the running check (CHECK tasks_lease_iff_running): spelling out
-- status = 'running' would let a cached generic plan scan the partial running index for
-- each id instead of looking ids up in the primary key (see finish).
UPDATE iron_defer.tasks
SET claimed_until = coalesce($4::timestamptz, now()) + make_interval(secs => $3::float8)
WHERE id = ANY($2::uuid[]) AND claimed_by = $1
RETURNING id, attempts, cancel_requested_at IS NOT NULL AS cancel_requested;

-- name: finish
-- Apply attempt outcomes, each fenced on (running under this worker, same attempt); wake queues
-- that got a task back that is due now.
-- A suspended attempt (status 'suspended') is handed back like a release: it does not count.
-- A task whose cancellation was requested ends cancelled whatever the attempt's end, unless it
-- completed: it is never retried, released or suspended.
-- Audited when $9 (event complete, retry, fail, release, suspend or cancel, with the error as
-- metadata).
-- params: $1 worker id, $2 ids uuid[], $3 attempts int4[], $4 new statuses text[], $5 errors text[], $6 retry delays float8[], $7 released bool[], $8 now (NULL: database clock), $9 audit bool
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
    SELECT o.id, o.attempt,
           CASE WHEN locked.cancel_requested AND o.status <> 'completed' THEN 'cancelled'
                ELSE o.status END AS status,
           o.error, o.delay,
           o.released AND NOT locked.cancel_requested AS released
    FROM outcome AS o
    CROSS JOIN LATERAL (
        SELECT cur.cancel_requested_at IS NOT NULL AS cancel_requested
        FROM iron_defer.tasks AS cur
        WHERE cur.id = o.id AND cur.claimed_by = $1 AND cur.attempts = o.attempt
        FOR UPDATE
    ) AS locked
),
updated AS (
    UPDATE iron_defer.tasks AS t
    SET status = o.status,
        attempts = CASE
            WHEN o.released OR o.status = 'suspended' THEN t.attempts - 1
            ELSE t.attempts
        END,
        last_error = coalesce(o.error, t.last_error),
        scheduled_at = CASE
            WHEN o.status = 'pending'
                THEN coalesce($8::timestamptz, now()) + make_interval(secs => o.delay)
            ELSE t.scheduled_at
        END,
        claimed_by = NULL,
        claimed_until = NULL,
        -- Progress is kept for the next attempt, and dropped once there is none.
        checkpoint = CASE WHEN o.status = 'completed' THEN NULL ELSE t.checkpoint END,
        finished_at = CASE
            WHEN o.status IN ('pending', 'suspended') THEN NULL
            ELSE coalesce($8::timestamptz, now())
        END,
        suspended_at = CASE
            WHEN o.status = 'suspended' THEN coalesce($8::timestamptz, now())
        END,
        -- A new suspension waits for a new signal.
        signal_payload = CASE WHEN o.status = 'suspended' THEN NULL ELSE t.signal_payload END,
        updated_at = coalesce($8::timestamptz, now())
    FROM fenced AS o
    WHERE t.id = o.id
    RETURNING t.id, t.queue, t.status, t.scheduled_at, t.attempts, t.traceparent, t.updated_at,
              o.error, o.released
),
audited AS (
    INSERT INTO iron_defer.task_audit
        (task_id, event, from_status, to_status, at, attempt, worker_id, trace_id, metadata)
    SELECT id,
           CASE WHEN released THEN 'release'
                WHEN status = 'completed' THEN 'complete'
                WHEN status = 'pending' THEN 'retry'
                WHEN status = 'suspended' THEN 'suspend'
                WHEN status = 'cancelled' THEN 'cancel'
                ELSE 'fail' END,
           'running', status, updated_at,
           -- a release or suspension hands the attempt back: record the one that ran
           CASE WHEN released OR status = 'suspended' THEN attempts + 1 ELSE attempts END,
           $1, split_part(traceparent, '-', 2),
           CASE WHEN released THEN jsonb_build_object('reason', 'shutdown')
                WHEN error IS NOT NULL THEN jsonb_build_object('error', error) END
    FROM updated
    WHERE $9::boolean
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
-- Hand back every task still running under a worker: pending now, interrupted attempt not
-- counted; one whose cancellation was requested is cancelled instead. Audited when $2.
-- params: $1 worker id, $2 audit bool
WITH released AS (
    UPDATE iron_defer.tasks
    SET status = CASE WHEN cancel_requested_at IS NULL THEN 'pending' ELSE 'cancelled' END,
        attempts = CASE WHEN cancel_requested_at IS NULL THEN attempts - 1 ELSE attempts END,
        claimed_by = NULL,
        claimed_until = NULL,
        scheduled_at = CASE WHEN cancel_requested_at IS NULL THEN now() ELSE scheduled_at END,
        finished_at = CASE WHEN cancel_requested_at IS NULL THEN NULL ELSE now() END,
        updated_at = now()
    WHERE status = 'running' AND claimed_by = $1
    RETURNING id, queue, status, attempts, traceparent
),
audited AS (
    INSERT INTO iron_defer.task_audit
        (task_id, event, from_status, to_status, attempt, worker_id, trace_id, metadata)
    SELECT id, CASE WHEN status = 'pending' THEN 'release' ELSE 'cancel' END, 'running', status,
           CASE WHEN status = 'pending' THEN attempts + 1 ELSE attempts END,
           $1, split_part(traceparent, '-', 2), jsonb_build_object('reason', 'shutdown')
    FROM released
    WHERE $2::boolean
),
woken AS (
    SELECT pg_notify('iron_defer', q.queue)
    FROM (SELECT DISTINCT queue FROM released WHERE status = 'pending') AS q
)
SELECT id, status, (SELECT count(*) FROM woken) AS woken_queues FROM released;

-- name: recover_expired
-- Move running tasks whose lease expired to pending (attempts left) or failed (none left), or
-- to cancelled when their cancellation was requested. Audited when $4, as done by worker $3
-- (the sweeper's engine).
-- params: $1 now (NULL: database clock), $2 batch limit, $3 worker id, $4 audit bool
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
    SET status = CASE
            WHEN t.cancel_requested_at IS NOT NULL THEN 'cancelled'
            WHEN t.attempts >= t.max_attempts THEN 'failed'
            ELSE 'pending'
        END,
        last_error = format(
            'lease expired during attempt %s of %s: worker %s stopped renewing it',
            t.attempts, t.max_attempts, e.claimed_by),
        scheduled_at = CASE
            WHEN t.attempts >= t.max_attempts OR t.cancel_requested_at IS NOT NULL
                THEN t.scheduled_at
            ELSE coalesce($1::timestamptz, now())
        END,
        claimed_by = NULL,
        claimed_until = NULL,
        finished_at = CASE
            WHEN t.attempts >= t.max_attempts OR t.cancel_requested_at IS NOT NULL
                THEN coalesce($1::timestamptz, now())
        END,
        updated_at = coalesce($1::timestamptz, now())
    FROM expired AS e
    WHERE t.id = e.id
    RETURNING t.id, t.queue, t.kind, t.status, t.attempts, t.max_attempts,
              e.claimed_by AS previous_worker, t.last_error, t.traceparent, t.updated_at
),
audited AS (
    INSERT INTO iron_defer.task_audit
        (task_id, event, from_status, to_status, at, attempt, worker_id, trace_id, metadata)
    SELECT id, CASE WHEN status = 'cancelled' THEN 'cancel' ELSE 'recover' END,
           'running', status, updated_at, attempts, $3::uuid,
           split_part(traceparent, '-', 2),
           jsonb_build_object('error', last_error, 'previous_worker', previous_worker)
    FROM recovered
    WHERE $4::boolean
),
woken AS (
    SELECT pg_notify('iron_defer', q.queue)
    FROM (SELECT DISTINCT queue FROM recovered WHERE status = 'pending') AS q
)
SELECT id, queue, kind, status, attempts, max_attempts, previous_worker,
       (SELECT count(*) FROM woken) AS woken_queues
FROM recovered;

-- name: queue_statistics
-- Counts by status per queue (and per region when $1), active workers, the age of the oldest
-- due pending task, and when the queue was paused. A paused queue is listed even when it
-- holds no task. Only queue $2 when it is not NULL.
-- params: $1 by region bool, $2 queue (NULL: every queue)
WITH counts AS (
    SELECT queue,
           CASE WHEN $1::boolean THEN region END AS region,
           count(*) FILTER (WHERE status = 'pending') AS pending,
           count(*) FILTER (WHERE status = 'pending' AND scheduled_at > now()) AS scheduled,
           count(*) FILTER (WHERE status = 'running') AS running,
           count(*) FILTER (WHERE status = 'suspended') AS suspended,
           count(*) FILTER (WHERE status = 'completed') AS completed,
           count(*) FILTER (WHERE status = 'failed') AS failed,
           count(*) FILTER (WHERE status = 'cancelled') AS cancelled,
           count(DISTINCT claimed_by) FILTER (WHERE status = 'running') AS active_workers,
           extract(epoch FROM now() - min(scheduled_at)
                   FILTER (WHERE status = 'pending' AND scheduled_at <= now()))::float8
               AS oldest_pending_age
    FROM iron_defer.tasks
    WHERE $2::text IS NULL OR queue = $2
    GROUP BY 1, 2
)
SELECT coalesce(c.queue, p.queue) AS queue,
       c.region,
       coalesce(c.pending, 0) AS pending,
       coalesce(c.scheduled, 0) AS scheduled,
       coalesce(c.running, 0) AS running,
       coalesce(c.suspended, 0) AS suspended,
       coalesce(c.completed, 0) AS completed,
       coalesce(c.failed, 0) AS failed,
       coalesce(c.cancelled, 0) AS cancelled,
       coalesce(c.active_workers, 0) AS active_workers,
       c.oldest_pending_age,
       p.paused_at
FROM counts AS c
FULL JOIN (
    SELECT * FROM iron_defer.queue_pauses WHERE $2::text IS NULL OR queue = $2
) AS p ON p.queue = c.queue
ORDER BY 1, 2 NULLS FIRST;

-- name: active_counts
-- Pending and running tasks per queue (the gauges); only the rows of the two partial indexes.
-- params: none
SELECT queue, status, count(*) AS n
FROM iron_defer.tasks
WHERE status IN ('pending', 'running')
GROUP BY queue, status;

-- name: count_due
-- Pending tasks of these queues and kinds that are due now and that a worker of region $3 may
-- claim (unpinned, or pinned to $3), in queues that are not paused.
-- params: $1 queues text[], $2 kinds text[], $3 worker region (NULL: none)
SELECT count(*)
FROM iron_defer.tasks
WHERE queue = ANY($1::text[])
  AND kind = ANY($2::text[])
  AND status = 'pending'
  AND scheduled_at <= now()
  AND coalesce(region, '') IN ('', coalesce($3::text, ''))
  AND queue NOT IN (SELECT queue FROM iron_defer.queue_pauses);

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

-- name: free_idempotency_keys
-- Release the idempotency keys of up to $3 tasks that finished more than $2 seconds ago, so
-- the keys can be used again (the tasks stay).
-- params: $1 now (NULL: database clock), $2 retention seconds, $3 batch limit
WITH due AS (
    SELECT id
    FROM iron_defer.tasks
    WHERE idempotency_key IS NOT NULL
      AND finished_at IS NOT NULL
      AND finished_at < coalesce($1::timestamptz, now()) - make_interval(secs => $2::float8)
    ORDER BY finished_at
    LIMIT $3
    FOR UPDATE SKIP LOCKED
)
UPDATE iron_defer.tasks AS t
SET idempotency_key = NULL
FROM due
WHERE t.id = due.id
RETURNING t.id;

-- name: audit_log
-- One task's audit trail in order, keyset-paginated on the audit id.
-- params: $1 task id, $2 after audit id (NULL: from the start), $3 limit
SELECT id, task_id, event, from_status, to_status, at, attempt, worker_id, trace_id, metadata
FROM iron_defer.task_audit
WHERE task_id = $1 AND ($2::bigint IS NULL OR id > $2)
ORDER BY id
LIMIT $3;

-- name: persistence
-- Whether the tasks table is logged ('p') or UNLOGGED ('u').
-- params: none
SELECT relpersistence::text AS relpersistence
FROM pg_class
WHERE oid = 'iron_defer.tasks'::regclass;

-- name: set_unlogged
-- Make the tasks table UNLOGGED (rewrites it under an exclusive lock).
-- params: none
ALTER TABLE iron_defer.tasks SET UNLOGGED;

-- name: set_logged
-- Make the tasks table logged again (rewrites it into the WAL under an exclusive lock).
-- params: none
ALTER TABLE iron_defer.tasks SET LOGGED;

-- name: ping
-- Round trip on a connection: health of the LISTEN session; settling a pooled connection after a cancel.
-- params: none
SELECT 1;
