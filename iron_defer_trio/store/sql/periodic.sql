-- name: register_periodic
-- Register (insert or update) the schedules an engine declares, keeping each one's fence
-- (last_fire_at) and creation time; returns every registered row.
-- params: $1 names text[], $2 crons text[], $3 timezones text[], $4 queues text[], $5 kinds text[], $6 missed text[], $7 next fire times timestamptz[]
INSERT INTO iron_defer.periodic_schedules
    (name, cron, timezone, queue, kind, missed, next_fire_at)
SELECT *
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
            $7::timestamptz[])
-- One global order, so engines starting together wait for each other instead of deadlocking.
ORDER BY 1
ON CONFLICT (name) DO UPDATE
    SET cron = EXCLUDED.cron,
        timezone = EXCLUDED.timezone,
        queue = EXCLUDED.queue,
        kind = EXCLUDED.kind,
        missed = EXCLUDED.missed,
        next_fire_at = EXCLUDED.next_fire_at,
        updated_at = now()
RETURNING *;

-- name: periodic_schedules
-- Schedules by name, every one when $1 is NULL.
-- params: $1 names text[] (NULL: all)
SELECT *
FROM iron_defer.periodic_schedules
WHERE $1::text[] IS NULL OR name = ANY ($1::text[])
ORDER BY name;

-- name: fire_periodic
-- Handle one fire time of a schedule: advance its fence to $2 unless some engine already
-- handled $2 or a later fire time, and, only when the fence moved and $11, insert the task
-- (scheduled at the fire time) in the same statement. Concurrent engines serialise on the
-- schedule's row; the losers see the advanced fence and insert nothing. Audited when $10.
-- params: $1 name, $2 fire time, $3 next fire time, $4 task id, $5 queue, $6 kind, $7 payload (JSON text), $8 priority, $9 max_attempts, $10 audit bool, $11 enqueue bool (false: skip a missed run), $12 attempt timeout seconds, $13 region
WITH fenced AS (
    UPDATE iron_defer.periodic_schedules
    SET last_fire_at = $2, next_fire_at = $3, updated_at = now()
    WHERE name = $1 AND (last_fire_at IS NULL OR last_fire_at < $2)
    RETURNING name
),
written AS (
    INSERT INTO iron_defer.tasks
        (id, queue, kind, payload, priority, max_attempts, scheduled_at, attempt_timeout,
         region)
    SELECT $4, $5, $6, $7::text::jsonb, $8, $9, $2, $12::float8, $13::text
    FROM fenced
    WHERE $11::boolean
    RETURNING id, queue, status, attempts, scheduled_at
),
audited AS (
    INSERT INTO iron_defer.task_audit (task_id, event, from_status, to_status, attempt)
    SELECT id, 'enqueue', NULL, status, attempts
    FROM written
    WHERE $10::boolean
)
SELECT (SELECT count(*) FROM fenced) > 0 AS fenced,
       written.id AS task_id,
       CASE WHEN written.scheduled_at <= now() THEN pg_notify('iron_defer', written.queue)
       END AS woken
FROM (VALUES (1)) AS one
LEFT JOIN written ON true;
