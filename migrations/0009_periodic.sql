-- 0009: periodic (cron) schedules. Engines upsert the schedules they declare at start; each
-- fire time is claimed by advancing last_fire_at (a fence) in the same statement that inserts
-- its task, so exactly one engine enqueues each fire time however many run the schedule.

CREATE TABLE iron_defer.periodic_schedules (
    name         text PRIMARY KEY CONSTRAINT periodic_schedules_name_length
                     CHECK (length(name) BETWEEN 1 AND 255),
    cron         text NOT NULL,
    timezone     text NOT NULL,
    queue        text NOT NULL,
    kind         text NOT NULL,
    missed       text NOT NULL CONSTRAINT periodic_schedules_missed_known
                     CHECK (missed IN ('run_once', 'skip')),
    -- The latest fire time handled (its task enqueued, or skipped as missed); NULL before the
    -- first. Only ever moves forward: it is the fence.
    last_fire_at timestamptz,
    -- Informational (listings): the next fire time as the last engine to touch the row saw it.
    next_fire_at timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
