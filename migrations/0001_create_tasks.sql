-- 0001: the tasks table and the indexes that match its queries.
--
-- Invariants live here as CHECK constraints, so no code path (ours, a user's SQL, a future
-- bug) can store a task the engine could not read back or would run forever.

CREATE TABLE iron_defer.tasks (
    id            uuid        PRIMARY KEY,          -- UUIDv7 from the client: time-ordered
    queue         text        NOT NULL,
    kind          text        NOT NULL,
    payload       jsonb       NOT NULL,
    status        text        NOT NULL DEFAULT 'pending',
    priority      smallint    NOT NULL DEFAULT 0,   -- higher runs first
    attempts      integer     NOT NULL DEFAULT 0,   -- attempts started, the running one included
    max_attempts  integer     NOT NULL,
    last_error    text,
    scheduled_at  timestamptz NOT NULL DEFAULT now(),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    claimed_by    uuid,                              -- worker holding the lease
    claimed_until timestamptz,                       -- lease expiry
    started_at    timestamptz,                       -- start of the latest attempt
    finished_at   timestamptz,                       -- set once the status is final

    CONSTRAINT tasks_status_known
        CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled')),
    CONSTRAINT tasks_queue_name
        CHECK (queue ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$'),
    CONSTRAINT tasks_kind_length
        CHECK (octet_length(kind) BETWEEN 1 AND 255),
    CONSTRAINT tasks_max_attempts_range
        CHECK (max_attempts BETWEEN 1 AND 1000),
    -- The original let attempts run past max_attempts (a row nobody could read back).
    CONSTRAINT tasks_attempts_within_budget
        CHECK (attempts BETWEEN 0 AND max_attempts),
    CONSTRAINT tasks_pending_has_attempt_left
        CHECK (status <> 'pending' OR attempts < max_attempts),
    CONSTRAINT tasks_lease_iff_running
        CHECK ((status = 'running') = (claimed_by IS NOT NULL)
               AND (claimed_by IS NULL) = (claimed_until IS NULL)),
    CONSTRAINT tasks_finished_iff_final
        CHECK ((status IN ('completed', 'failed', 'cancelled')) = (finished_at IS NOT NULL)),
    CONSTRAINT tasks_last_error_bounded
        CHECK (octet_length(last_error) <= 4096)
);

-- The claim query, exactly: equality on queue, then the claim order, pending rows only, so
-- finished history never sits in the index every claim walks.
CREATE INDEX tasks_claim_idx
    ON iron_defer.tasks (queue, priority DESC, scheduled_at, id)
    WHERE status = 'pending';

-- Running rows: the sweeper's expired-lease scan and the release of one worker's tasks. It
-- indexes claimed_by, not claimed_until, so lease renewals stay HOT updates.
CREATE INDEX tasks_running_idx
    ON iron_defer.tasks (claimed_by)
    WHERE status = 'running';

-- Listing by queue and status, newest first, with keyset pagination on id.
CREATE INDEX tasks_queue_status_idx
    ON iron_defer.tasks (queue, status, id);
